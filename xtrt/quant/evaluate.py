"""Evaluation stage: the held-out images with their FP32 outputs, computed once, and the
evaluation of any exported model (or PPQ's simulation) against them.  A model is scored once per
evaluator: the same bytes scored again (verify, fallback test curve, precision stage, final
figure) return the first evaluation, and its ONNX Runtime runner is shared
(:mod:`xtrt.quant.reuse`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from xtrt.quant.reuse import RUNNERS, Memo, clear_run, session_options
from xtrt.quant.verify import EvalData, Evaluation, evaluate

__all__ = ["Evaluator", "build_evaluator"]

log = logging.getLogger(__name__)


@dataclass
class Evaluator:
    """Scores models on the held-out data; ``judged_on`` says what that data is."""

    data: EvalData
    device: str
    rtol: float
    atol: float
    judged_on: str
    scored: Memo = field(default_factory=Memo, repr=False)   # model bytes -> Evaluation
    batches: int | None = None          # score on the first N batches only (None: all)

    def runner(self, model):
        """The ONNX Runtime runner models are scored with (shared for the same bytes)."""
        # basic: ORT's extended level fuses Q/DQ into its own int8 kernels (QLinearConv), whose
        # u8s8 AVX2 path saturates (EfficientNet-Lite0 on a non-VNNI CPU: 3.8 dB instead of the
        # 24.3 dB of the Q/DQ semantics that TensorRT executes)
        return RUNNERS.runner(model, self.device, optimization="basic",
                              **session_options(self.device))

    def evaluate_model(self, model) -> Evaluation:
        """``model`` scored on this evaluator's images (once per model bytes)."""
        return self.scored.get(model, lambda: evaluate(self.runner(model).run, self.data,
                                                       rtol=self.rtol, atol=self.atol,
                                                       batches=self.batches))

    def first(self, images: int) -> "Evaluator":
        """This evaluator on its first batches covering at least ``images`` images (the same
        FP32 references; ``self`` when it holds no more than that)."""
        n, count = 0, 0
        for b, _ in self.data.store.items():
            if count >= images:
                break
            n, count = n + 1, count + b.size
        if count >= self.data.count:
            return self
        return Evaluator(self.data, self.device, self.rtol, self.atol,
                         f"the first {count} of the {self.judged_on}", batches=n)

    def evaluate_fn(self, run_fn) -> Evaluation:
        return evaluate(run_fn, self.data, rtol=self.rtol, atol=self.atol, batches=self.batches)

    def close(self) -> None:
        self.scored.clear()
        clear_run()
        self.data.close()


def build_evaluator(job, prepared, source, *, kind: str | None = None) -> Evaluator:
    """Run the source model once over ``source`` (held-out batches) and keep its outputs."""
    from xtrt.analysis.task import infer_task
    from xtrt.data.store import BatchStore
    from xtrt.model.load import dims_of, load_model
    from xtrt.quant.verify import prepare_eval

    cfg = job.cfg
    task, layout = infer_task([dims_of(o) for o in prepared.model.graph.output],
                              cfg.evaluation.task, prepared.input_shape[2:4])
    reference = prepared.reference if prepared.reference is not None else \
        load_model(job.model_path)   # the source with batch fixes only (xtrt.model.prepare)
    ref_runner = RUNNERS.runner(reference, cfg.device, **session_options(cfg.device))  # selection + test
    store = BatchStore(spill_dir=job.stage / ".cache")
    ed = prepare_eval(ref_runner, source, task, layout,
                      annotations=str(cfg.path(cfg.evaluation.annotations))
                      if cfg.evaluation.annotations else None,
                      conf=cfg.evaluation.conf_threshold, iou=cfg.evaluation.iou_threshold,
                      store=store)
    if cfg.evaluation.labels and task == "classification":
        from xtrt.analysis.classify import load_labels
        ed.labels = load_labels(str(cfg.path(cfg.evaluation.labels)), store.paths)
    kind = kind or ("calibration" if job.judged_on_calibration else "held-out")
    return Evaluator(ed, cfg.device, cfg.evaluation.rtol, cfg.evaluation.atol,
                     f"{ed.count} {kind} images")
