"""Technique x model table: which accuracy technique buys how much fidelity for how many seconds.

    python benchmarks/techniques.py [--models effnet,yolo] [--variants fast,pt,...] [--json rows.json]

Data (as ``fidelity.py``): 47 photos (scikit-image + opencv-doc), a seeded 32 of them calibrate;
the other 15 plus every 8th frame of opencv-doc's vtest.avi are held out, and
``xtrt.quant.techniques.split_selection_test(held_out, 0.4)`` splits those into a *selection* part
(40 %: what a person or ``method: auto`` may look at to choose) and a *test* part (60 %: reported
only).  Every variant calibrates on the same 32 images; its ``xtrt.quant`` run is verified on the
selection part, and its written ``quantized.onnx`` is then scored on the test part with the same
evaluator (top-1 agreement with FP32 / mAP50-95 against FP32's own detections at conf 0.25, SQNR).

Seconds: the run's calibrate + method search + techniques + export stages (what a user waits for
beyond loading and verifying), on whatever machine runs this (2 shared CPU cores: noisy).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fidelity import FRAME_STEP, N_CALIB, _folder, _frames, _photos  # noqa: E402

BASE = ["analysis.graphwise=false"]
VARIANTS: dict[str, list[str]] = {
    "auto": ["calibration.method=auto", "quantization.effort=fast"],
    "fast": ["quantization.effort=fast"],
    "mse": ["quantization.effort=fast", "calibration.method=mse"],
    "pt": ["quantization.effort=fast", "quantization.per_tensor=true"],
    "bc": ["quantization.effort=fast", "quantization.bias_correction.enabled=true"],
    "pt+bc": ["quantization.effort=fast", "quantization.per_tensor=true",
              "quantization.bias_correction.enabled=true"],
    "cle": ["quantization.effort=fast", "quantization.equalization.enabled=true"],
    "cle+pt+bc": ["quantization.effort=fast", "quantization.equalization.enabled=true",
                  "quantization.per_tensor=true", "quantization.bias_correction.enabled=true"],
    "pt+bc+lsq50": ["quantization.effort=fast", "quantization.per_tensor=true",
                    "quantization.bias_correction.enabled=true", "quantization.lsq.steps=50"],
    "pt+adaround100": ["quantization.effort=fast", "quantization.per_tensor=true",
                       "quantization.adaround.steps=100"],
    "default": ["quantization.effort=default"],
    "best": ["quantization.effort=best"],
}
STAGES = ("calibrate", "method_search", "techniques", "export")


def _model_spec(name: str, work: Path):
    if name == "effnet":
        from xtrt.examples.effnet import PREPROCESS, export_effnet_lite0

        model = work / "effnet_lite0_ts13.onnx"
        if not model.exists():
            export_effnet_lite0(model, dynamo=False, opset=13)
        return "EfficientNet-Lite0", model, [4, 3, 224, 224], dict(PREPROCESS)
    from xtrt.examples.yolo_e2e import locate_nudenet_model

    return ("YOLOv8n 640", locate_nudenet_model(), [4, 3, 640, 640],
            {"preset": "letterbox", "size": [640, 640]})


def _scorer(cfg, test_files):
    """FP32 references on the test images, once per model; returns score(qmodel_path)."""
    from xtrt.data.preprocess import build_preprocess
    from xtrt.data.source import BatchSource
    from xtrt.model.load import dims_of, load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.pipeline import _task_and_layout
    from xtrt.quant.verify import evaluate, metric_value, prepare_eval
    from xtrt.runtime.split import SplitRunner

    source = load_model(cfg.path(cfg.model))
    prep = prepare_model(source, cfg.input.shape, cfg.input.name)
    pre = build_preprocess(cfg.preprocess, tuple(prep.input_shape[2:4]))
    batches = list(BatchSource([Path(f) for f in test_files], prep.input_name,
                               tuple(prep.input_shape[1:]), pre, 4))
    task, layout = _task_and_layout(cfg, [dims_of(o) for o in prep.model.graph.output])
    ed = prepare_eval(SplitRunner(source, device="cpu"), batches, task, layout,
                      conf=cfg.evaluation.conf_threshold, iou=cfg.evaluation.iou_threshold)

    def score(path) -> dict:
        # ORT 1.32 at ORT_ENABLE_ALL miscomputes the EfficientNet-Lite0 Q/DQ model (3 dB where
        # "basic" and "disable" give 16-21 dB on the same images): score the Q/DQ arithmetic
        ev = evaluate(SplitRunner(str(path), device="cpu", optimization="basic").run, ed)
        return _fidelity(ev.task, metric_value(ev, "sqnr"))

    return score


def _fidelity(task: dict, sqnr) -> dict:
    if "top1_agreement" in task:
        return {"top1": task["top1_agreement"], "agree": task.get("agree"),
                "total": task.get("total"), "sqnr_db": sqnr}
    return {"map50_95": task.get("map50_95"), "reference_boxes": task.get("reference_boxes"),
            "sqnr_db": sqnr}


def run_variant(name, model, shape, pre, cal_dir, sel_dir, n_sel, out, overrides, score,
                score_sel) -> dict:
    from xtrt.config import apply_overrides, config_from_dict
    from xtrt.quant.pipeline import run_quant

    data = {"model": str(model), "output_dir": str(out), "input": {"shape": shape},
            "preprocess": pre,
            "calibration": {"data": str(cal_dir), "steps": N_CALIB // shape[0],
                            "batch_size": shape[0]},
            "evaluation": {"data": str(sel_dir), "count": 4, "batch_size": 4}}
    cfg = config_from_dict(apply_overrides(data, [*BASE, *overrides]), base_dir=out.parent)
    t0 = time.perf_counter()
    res = run_quant(cfg, progress=False)
    total = time.perf_counter() - t0
    r = res.report
    t = r["timings_s"]
    qpath = out / "quantized.onnx"
    return {"variant": name, "seconds": round(sum(t.get(k, 0) for k in STAGES), 1),
            "total_s": round(total, 1), "timings_s": t, "selection": score_sel(qpath),
            "test": score(qpath),
            "techniques": r["calibration"].get("techniques"),
            "method": r["calibration"].get("method")}


def render(rows: Sequence[dict]) -> str:
    def fid(f):
        if "top1" in f:
            return f"{f['agree']}/{f['total']} ({f['top1']:.1%}), {f['sqnr_db']:.1f} dB"
        m = f["map50_95"]
        return (f"{m:.3f} ({f['reference_boxes']} boxes), {f['sqnr_db']:.1f} dB" if m is not None
                else f"- ({f['reference_boxes']} boxes)")
    lines = ["| model | technique | seconds (calib+techniques+export) | selection part | "
             "test part (reported) |", "|---|---|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['seconds']:.1f} | "
                     f"{fid(r['selection'])} | {fid(r['test'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from xtrt.quant.techniques import split_selection_test

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="effnet,yolo")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--work", default="/tmp/xtrt-bench-fidelity")
    p.add_argument("--json", help="append rows to this JSON-lines file as they finish")
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    photos = _photos(work)
    pick = sorted(random.Random(0).sample(range(len(photos)), N_CALIB))
    cal = [photos[i] for i in pick]
    held = [f for i, f in enumerate(photos) if i not in set(pick)] + _frames(work, FRAME_STEP)[0]
    sel, test = split_selection_test(held, 0.4, seed=0)
    cal_dir = _folder(work / "calib", cal)
    sel_dir = _folder(work / "selection", sel)
    print(f"{len(cal)} calibration, {len(sel)} selection, {len(test)} test images", file=sys.stderr)
    rows = []
    for m in [x.strip() for x in a.models.split(",") if x.strip()]:
        label, model, shape, pre = _model_spec(m, work)
        from xtrt.config import config_from_dict
        mcfg = config_from_dict({"model": str(model), "input": {"shape": shape},
                                 "preprocess": pre})
        score, score_sel = _scorer(mcfg, test), _scorer(mcfg, sel)
        for v in [x.strip() for x in a.variants.split(",") if x.strip()]:
            row = run_variant(v, model, shape, pre, cal_dir, sel_dir, len(sel),
                              work / f"tech_{m}_{v}", VARIANTS[v], score, score_sel)
            row["model"] = label
            rows.append(row)
            print(render([row]).splitlines()[-1], file=sys.stderr, flush=True)
            if a.json:
                with open(a.json, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
