"""What a quantization run hands to the report writer, and what it returns to its caller."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["QuantResult", "RunRecord"]


@dataclass
class QuantResult:
    """What a run produced: final file paths, the report document, and timings."""

    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class RunRecord:
    """Every value the report renders; computed by the stages, rendered by xtrt.quant.outputs."""

    job: object                  # xtrt.quant.job.QuantJob
    prepared: object             # xtrt.model.prepare.PreparedModel
    calibrated: object           # xtrt.quant.calibrate.Calibrated
    placement: object            # the final placement (after fallback)
    qmodel: object               # the model written as quantized.onnx
    evaluation: object           # its evaluation (xtrt.quant.verify.Evaluation)
    simulation: object           # PPQ's simulation's evaluation
    judged_on: str               # what the report's figures were computed on
    chosen_on: str               # what the choices (method, fallback) were made on
    task: str
    analysis: object             # xtrt.quant.analyse.Analysis
    fallback: object | None      # xtrt.analysis.fallback.FallbackResult
    search: dict | None
    timings: dict
    scatter: tuple | None = None   # (ref, test, title) for the worst layer
    engine: dict | None = None     # TensorRT-RTX engine judge of the written model
    precision: dict | None = None  # export.float_precision: kept FP32 nodes, both fidelities
