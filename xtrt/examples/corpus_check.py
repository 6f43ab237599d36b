"""Run one corpus model through ``xtrt.quant`` with default settings and check what it wrote.

The checks are the acceptance criteria of the corpus (tests/slow/test_corpus.py asserts them one by
one, benchmarks/corpus.py prints them as a table):

* quantize: ``python -m xtrt.quant --config <written config>`` exits 0 (the error line otherwise);
* io: ``quantized.onnx`` has the source's input and output names, in the source's order;
* batch 1 / batch 4: it runs on ONNX Runtime (CPU) and batch 4 row 0 equals batch 1;
* dynamic: a symbolic or ``-1`` source batch is still not a fixed number;
* lint: :func:`xtrt.lint.qdq.lint_qdq` errors and warnings of the written model alone (what xtrt
  kept float on purpose is recorded in the model: ``kept_float``, not a hazard);
* TensorRT-RTX (the report's engine judge, "TensorRT-RTX 1.7 AOT build, SM89"): accepted, Int8
  convolutions / all, and the Float layers outside the Int8 convolutions of the written FP16
  export, each with the reason the report gives, and of the FP32 export for contrast;
* FP16: the worst output SQNR of the FP16 export and of the FP32 export on the held-out images;
* fidelity: the report's task metric and worst output SQNR on the held-out images.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["CorpusResult", "run_quant", "check_outputs", "run_and_check"]


@dataclass
class CorpusResult:
    """What one corpus model did; ``None`` where a check could not run (an earlier step failed)."""

    name: str
    quant_ok: bool = False
    quant_error: str = ""
    quant_seconds: float = 0.0
    io_names_ok: bool | None = None
    batch1_ok: bool | None = None
    batch4_ok: bool | None = None
    batch_error: str = ""
    source_batch: str = ""
    dynamic_kept: bool | None = None
    lint_errors: int | None = None
    lint_first: str = ""
    trt_ok: bool | None = None
    trt_error: str = ""
    int8_convs: int | None = None
    convs: int | None = None
    lint_warnings: int | None = None
    lint_kept_float: list[str] = field(default_factory=list)
    convs_kept_float: int | None = None
    float_islands: list[dict] | None = None         # Float layers outside Int8 convs, FP16 export
    fp32_float_islands: list[dict] | None = None    # the same in the FP32 export (contrast)
    kept_fp32: dict[str, str] = field(default_factory=dict)
    fp32_sqnr_db: float | None = None
    fp16_sqnr_db: float | None = None
    fp16_delta_db: float | None = None
    sqnr_resolution_db: float | None = None   # the figure's move under a 1e-5 input scaling
    fidelity: str = ""
    min_sqnr_db: float | None = None
    held_out: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def run_quant(config: Path) -> tuple[int, str, float]:
    """Run ``xtrt.quant`` in-process; returns (exit code, last ``error:`` line, seconds)."""
    from xtrt.cli import run_main
    from xtrt.quant.__main__ import main

    err = io.StringIO()
    t0 = time.perf_counter()
    crash = ""
    with contextlib.redirect_stderr(err):  # run_main maps XtrtError to one "error:" line, rc 1
        try:
            rc = run_main(main, ["--config", str(config), "-q"])
        except Exception as exc:  # anything else is an xtrt bug: record it as the row's failure
            rc, crash = 1, f"crash (traceback): {type(exc).__name__}: {str(exc).splitlines()[0]}"
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")] + \
        ([crash] if crash else [])
    return rc, (lines[-1] if lines else ""), time.perf_counter() - t0


def _dim(d) -> str:
    return str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")


def _io(model) -> tuple[list[str], list[str]]:
    init = {t.name for t in model.graph.initializer}
    return ([i.name for i in model.graph.input if i.name not in init],
            [o.name for o in model.graph.output])


def _feeds(sess, batch: int, rng) -> dict:
    dt = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32}
    feeds = {}
    for inp in sess.get_inputs():
        shape = [batch if i == 0 else (d if isinstance(d, int) and d > 0 else 1)
                 for i, d in enumerate(inp.shape)]
        feeds[inp.name] = rng.uniform(-1, 1, shape).astype(dt.get(inp.type, np.float32))
    return feeds


def _batch_checks(res: CorpusResult, quantized: Path, dynamic: bool) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(quantized), so, providers=["CPUExecutionProvider"])
    feeds4 = _feeds(sess, 4, np.random.default_rng(0))
    try:
        out1 = sess.run(None, {k: v[:1] for k, v in feeds4.items()})
        res.batch1_ok = all(np.all(np.isfinite(o)) for o in out1 if o.dtype.kind == "f")
    except Exception as exc:  # ORT raises its own types
        res.batch1_ok, res.batch_error = False, f"batch 1: {exc}"
        return
    if not dynamic:
        res.notes.append(f"source batch fixed to {res.source_batch}: batch 4 not applicable")
        return
    try:
        out4 = sess.run(None, feeds4)
        res.batch4_ok = all(a4.shape[0] == 4 and np.allclose(a1[0], a4[0], rtol=1e-3, atol=1e-3)
                            for a1, a4 in zip(out1, out4))
        if not res.batch4_ok:
            res.batch_error = "batch 4 row 0 differs from batch 1"
    except Exception as exc:
        res.batch4_ok, res.batch_error = False, f"batch 4: {exc}"


def _lint(res: CorpusResult, model) -> None:
    """Lint the written model alone, as any tool's model is linted: what xtrt kept float on
    purpose it records in the model (xtrt.trt.kept_float), nothing else is declared."""
    from xtrt.lint.qdq import errors, kept_float, lint_qdq

    found = lint_qdq(model)
    errs = errors(found)
    warns = [f for f in found if f.severity == "warning"]
    res.lint_errors, res.lint_warnings = len(errs), len(warns)
    res.lint_first = str((errs + warns)[0]) if errs or warns else ""
    res.lint_kept_float = [f.message for f in kept_float(found)]


def _islands(judged: dict) -> list[dict]:
    return [{"layer": x.get("layer"), "type": x.get("type"), "onnx_nodes": x.get("onnx_nodes"),
             "reason": x.get("reason"), "unexplained": x.get("unexplained")}
            for x in judged.get("fp32_islands") or []]


def _trt(res: CorpusResult, report: dict, kept: dict[str, str]) -> None:
    """The report's engine judge (xtrt.lint.trt_rtx, built by xtrt.quant): the written (FP16)
    export and the FP32 export next to it."""
    judged = report.get("engine")
    if not judged or not judged.get("available", True):
        res.notes.append("tensorrt_rtx_bindings not installed: no TensorRT-RTX build")
        return
    res.trt_ok = bool(judged.get("accepted"))
    if not res.trt_ok:
        res.trt_error = ((judged.get("errors") or []) + ["no engine"])[0]
        return
    res.int8_convs, res.convs = judged.get("int8_convolutions"), judged.get("convolutions")
    res.float_islands = _islands(judged)
    contrast = judged.get("fp32_export")
    res.fp32_float_islands = _islands(contrast) if contrast else None
    from xtrt.lint.trt_rtx import TrtLayer

    layers = judged.get("engine_layers") or []
    res.convs_kept_float = sum(      # convolution layers the exporter recorded as kept float
        1 for x in layers if TrtLayer(x.get("layer", ""), x.get("type", "")).is_convolution
        and x.get("in", [])[:1] != ["Int8"] and any(n in kept for n in x.get("onnx_nodes", [])))


def _precision(res: CorpusResult, report: dict) -> None:
    fid = (report.get("float_precision") or {}).get("fidelity") or {}
    res.fp32_sqnr_db = (fid.get("fp32") or {}).get("sqnr_db")
    res.fp16_sqnr_db = (fid.get("fp16") or {}).get("sqnr_db")
    res.fp16_delta_db = fid.get("delta_sqnr_db")
    res.sqnr_resolution_db = fid.get("resolution_db")
    res.kept_fp32 = dict((report.get("float_precision") or {}).get("kept_fp32") or {})


def _fidelity(res: CorpusResult, out_dir: Path) -> None:
    report = json.loads((out_dir / "report.json").read_text())
    sqnr = [o.get("sqnr_db") for o in (report.get("outputs") or {}).values()]
    sqnr = [s for s in sqnr if s is not None]
    res.min_sqnr_db = float(min(sqnr)) if sqnr else None
    res.held_out = (report.get("summary") or {}).get("held_out_images")
    task = report.get("task") or {}
    if task.get("kind") == "classification":
        res.fidelity = (f"top-1 agreement {task['agree']}/{task['total']} "
                        f"({task['top1_agreement']:.1%})")
    elif task.get("kind") == "detection" and task.get("map50_95") is not None:
        res.fidelity = (f"mAP50-95 vs FP32 {task['map50_95']:.3f} "
                        f"({task.get('reference_boxes')} ref. boxes)")
    elif task.get("kind") == "detection":
        res.fidelity = f"mAP n/a ({task.get('reference_boxes')} ref. boxes)"
    if res.min_sqnr_db is not None:
        sq = f"worst output SQNR {res.min_sqnr_db:.1f} dB"
        res.fidelity = f"{res.fidelity}, {sq}" if res.fidelity else sq


def check_outputs(name: str, source: Path, out_dir: Path, res: CorpusResult | None = None
                  ) -> CorpusResult:
    """Every check after a successful ``xtrt.quant`` run that wrote ``out_dir``."""
    import onnx

    res = res or CorpusResult(name=name, quant_ok=True)
    src = onnx.load(str(source), load_external_data=False)
    quantized = out_dir / "quantized.onnx"
    q = onnx.load(str(quantized))
    res.io_names_ok = _io(src) == _io(q)
    first = src.graph.input[0].type.tensor_type.shape.dim[0]
    res.source_batch = _dim(first)
    dynamic = not first.HasField("dim_value") or first.dim_value <= 0
    q_first = q.graph.input[0].type.tensor_type.shape.dim[0]
    res.dynamic_kept = (not q_first.HasField("dim_value") or q_first.dim_value <= 0) \
        if dynamic else None
    _batch_checks(res, quantized, dynamic)
    from xtrt.trt.kept_float import read_kept_float

    report = json.loads((out_dir / "report.json").read_text())
    _lint(res, q)
    _trt(res, report, read_kept_float(q))
    _precision(res, report)
    _fidelity(res, out_dir)
    return res


def run_and_check(name: str, source: Path, config: Path) -> CorpusResult:
    """Quantize with the written config (default settings) and, if that worked, check the outputs."""
    import yaml

    res = CorpusResult(name=name)
    rc, err, secs = run_quant(config)
    res.quant_ok, res.quant_error, res.quant_seconds = rc == 0, err, secs
    if rc != 0:
        return res
    out_dir = Path(yaml.safe_load(Path(config).read_text())["output_dir"])
    return check_outputs(name, source, out_dir, res)
