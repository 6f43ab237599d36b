"""Shared data, models and scoring for ``techniques.py`` and ``compare.py`` (benchmark helpers).

One split for every tool and technique: a seeded 32 photos (scikit-image + opencv-doc) calibrate;
the other photos plus every k-th frame of opencv-doc's vtest.avi are held out, and
``xtrt.quant.job.split_selection_test`` splits those into a *selection* part (what ``method: auto``
may look at) and a *test* part (the only images the figures come from).

Every model is scored by xtrt's evaluator (:class:`xtrt.quant.evaluate.Evaluator`:
``SplitRunner`` on ONNX Runtime CPU at make_session's default optimisation, 'basic' for Q/DQ
models) against the FP32 model's outputs on the same test images: top-1 agreement /
mAP50-95 against FP32's own detections, and the worst output SQNR.
"""
from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fidelity import N_CALIB, _folder, _frames, _photos  # noqa: E402

#: vtest.avi frame step and selection share per model
SPLIT = {"effnet": (4, 0.3), "yolo": (8, 0.3)}
#: the detector's FP32 reference confidence (the e2e tail's score_threshold and the evaluator's)
YOLO_CONF = 0.05


@dataclass
class Bench:
    """One model with its data split and FP32 references (computed once)."""

    key: str
    label: str
    model: Path
    shape: list
    preprocess: dict
    cal: list
    sel: list
    test: list
    conf: float = 0.25

    def config(self, overrides=(), out: Path | None = None):
        """An xtrt Config for this model (calibration on ``cal``), with ``overrides``."""
        from xtrt.config import apply_overrides, config_from_dict

        data = {"model": str(self.model), "input": {"shape": self.shape},
                "preprocess": self.preprocess, "output_dir": str(out or "/tmp/xtrt-bench-unused"),
                "calibration": {"data": "unused", "steps": len(self.cal) // self.shape[0],
                                "batch_size": self.shape[0]},
                "evaluation": {"conf_threshold": self.conf, "batch_size": 4},
                "analysis": {"graphwise": False}}
        return config_from_dict(apply_overrides(data, list(overrides)), base_dir=Path("/tmp"))


def yolo_model(work: Path, conf: float = YOLO_CONF) -> Path:
    """nudenet's YOLOv8n 640 with an EfficientNMS_TRT tail at score_threshold ``conf``."""
    from xtrt.examples.yolo_e2e import build_yolo_e2e, locate_nudenet_model

    path = work / f"yolov8n_e2e_s{conf:g}.onnx"
    if not path.exists():   # = python -m xtrt.examples.yolo_e2e --out PATH --score CONF
        build_yolo_e2e(locate_nudenet_model(), path, score=conf)
    return path


def load_bench(key: str, work: Path, local: dict | None = None) -> Bench:
    """The data split and model of ``key`` ('effnet' or 'yolo').

    ``local`` (a machine without the downloads, e.g. the GPU one): ``{"photos": DIR, "models":
    {"effnet": PATH, "yolo": PATH}}``; DIR's ``vtest*`` files are the video frames (every one is
    used), the rest the photos; the YOLO model gets the bench's score threshold written into its
    EfficientNMS_TRT node (a copy under ``work``).
    """
    from xtrt.quant.job import split_selection_test

    work.mkdir(parents=True, exist_ok=True)
    if local:
        files = sorted(Path(local["photos"]).iterdir())
        photos = [f for f in files if not f.name.startswith("vtest")]
        frames = [f for f in files if f.name.startswith("vtest")]
    else:
        photos = _photos(work)
    pick = sorted(random.Random(0).sample(range(len(photos)), N_CALIB))
    cal = [photos[i] for i in pick]
    step, share = SPLIT[key]
    if not local:
        frames = _frames(work, step)[0]
    held = [f for i, f in enumerate(photos) if i not in set(pick)] + frames
    sel, test = split_selection_test(held, share)
    if key == "effnet":
        from xtrt.examples.effnet import PREPROCESS

        model = Path(local["models"]["effnet"]) if local else work / "effnet_lite0_ts13.onnx"
        if not model.exists():
            from xtrt.examples.effnet import export_effnet_lite0

            export_effnet_lite0(model, dynamo=False, opset=13)
        return Bench(key, "EfficientNet-Lite0", model, [4, 3, 224, 224], dict(PREPROCESS),
                     cal, sel, test)
    model = _with_score(Path(local["models"]["yolo"]), work) if local else yolo_model(work)
    return Bench(key, "YOLOv8n 640", model, [4, 3, 640, 640],
                 {"preset": "letterbox", "size": [640, 640]}, cal, sel, test, conf=YOLO_CONF)


def _with_score(src: Path, work: Path, conf: float = YOLO_CONF) -> Path:
    """A copy of the e2e detector ``src`` with EfficientNMS_TRT's score_threshold = ``conf``."""
    import onnx

    m = onnx.load(str(src))
    for n in m.graph.node:
        if n.op_type == "EfficientNMS_TRT":
            for at in n.attribute:
                if at.name == "score_threshold":
                    at.f = conf
    out = work / f"{src.stem}_s{conf:g}.onnx"
    onnx.save(m, str(out))
    return out


def prepare(bench: Bench, cfg):
    """xtrt's prepared model + placement for ``cfg`` (fresh: equalization edits it in place)."""
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.placement import plan_placement

    prepared = prepare_model(load_model(cfg.path(cfg.model)), cfg.input.shape, cfg.input.name)
    q = cfg.quantization
    placement = plan_placement(prepared.model, exclude_nodes=q.exclude_nodes,
                               exclude_op_types=q.exclude_op_types,
                               keep_decode_fp32=q.keep_decode_fp32,
                               plugin_tail=prepared.tail_nodes)
    return prepared, placement


def batches(bench: Bench, cfg, prepared, files, batch_size: int):
    from xtrt.data.preprocess import build_preprocess
    from xtrt.data.source import BatchSource

    pre = build_preprocess(cfg.preprocess, tuple(prepared.input_shape[2:4]))
    return BatchSource([Path(f) for f in files], prepared.input_name,
                       tuple(prepared.input_shape[1:]), pre, batch_size, progress=None)


def evaluator(bench: Bench, files, kind: str, device: str = "cpu"):
    """xtrt's Evaluator with FP32 references on ``files`` (the source model, as run_quant does)."""
    from xtrt.data.store import BatchStore
    from xtrt.model.load import dims_of, load_model
    from xtrt.analysis.task import infer_task
    from xtrt.quant.evaluate import Evaluator
    from xtrt.quant.verify import prepare_eval
    from xtrt.runtime.split import SplitRunner

    cfg = bench.config()
    prepared, _ = prepare(bench, cfg)
    task, layout = infer_task([dims_of(o) for o in prepared.model.graph.output],
                              cfg.evaluation.task, prepared.input_shape[2:4])
    t0 = time.perf_counter()
    ed = prepare_eval(SplitRunner(load_model(bench.model), device=device),
                      batches(bench, cfg, prepared, files, 4), task, layout,
                      conf=bench.conf, iou=cfg.evaluation.iou_threshold,
                      store=BatchStore(spill_dir=Path("/tmp/xtrt-bench-store")))
    ev = Evaluator(ed, device, cfg.evaluation.rtol, cfg.evaluation.atol, f"{ed.count} {kind} images")
    ev.reference_seconds = round(time.perf_counter() - t0, 1)
    return ev


def score(ev, model) -> dict:
    """Fidelity of ``model`` (ModelProto or path) against ``ev``'s FP32 references."""
    from xtrt.quant.verify import metric_value

    t0 = time.perf_counter()
    e = ev.evaluate_model(model)
    t = e.task
    out = {"sqnr_db": metric_value(e, "sqnr"), "eval_s": round(time.perf_counter() - t0, 1)}
    if "top1_agreement" in t:
        out.update(top1=t["top1_agreement"], agree=t.get("agree"), total=t.get("total"))
    else:
        out.update(map50_95=t.get("map50_95"), reference_boxes=t.get("reference_boxes"),
                   detections=t.get("detections"))
    return out


def fidelity_text(f: dict) -> str:
    """'agree/total (pct), dB' or 'mAP (boxes), dB'."""
    sq = f.get("sqnr_db")
    sq = "-" if sq is None else f"{sq:.1f} dB"
    if "top1" in f:
        return f"{f['agree']}/{f['total']} ({f['top1']:.1%}), {sq}"
    m = f.get("map50_95")
    return (f"{m:.3f} ({f.get('reference_boxes')} ref boxes, {f.get('detections')} det), {sq}"
            if m is not None else f"- ({f.get('reference_boxes')} ref boxes), {sq}")


def qdq_stats(model) -> dict:
    """Q/DQ node count, compute nodes left in float (Conv/Gemm/MatMul without a DQ input)."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node)
    compute = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")]
    flt = [n.name for n in compute
           if not ((p := prod.get(n.input[0])) is not None and p.op_type == "DequantizeLinear")]
    return {"qdq_nodes": qdq, "compute": len(compute), "float_layers": len(flt)}
