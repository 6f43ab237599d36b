"""INT8 fidelity of xtrt.quant on real models and real photos (CPU).

    python benchmarks/fidelity.py [--models effnet,yolo] [--set calibration.method=mse] [--work DIR]

EfficientNet-Lite0 (TorchScript export, opset 13, 224x224) and YOLOv8n (nudenet, 640x640, letterbox):
32 calibration photos (a fixed, seeded pick from scikit-image + opencv-doc photos), every other
photo held out; for YOLOv8n the held-out set also gets every 8th frame of opencv-doc's vtest.avi
(pedestrians; decoded with opencv-python-headless when it is installed) for more reference boxes.

Prints a markdown table: calib+export seconds (PPQ calibration + Q/DQ export, from the report's
timings) and the whole run, held-out images, fidelity (top-1 agreement with FP32 for the
classifier; mAP50-95 against the FP32 model's own detections, with the reference box count, for
the detector: "mAP vs FP32", not COCO mAP) and the INT8-vs-FP32 SQNR of the model output on ONNX
Runtime CPU.  ``--json FILE`` also writes the rows.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

N_CALIB = 32
FRAME_STEP = 8


def _photos(work: Path) -> list[Path]:
    from xtrt.examples.photos import collect_photos

    return sorted(collect_photos(work / "photos_all", opencv_doc=True, download=True))


def _complete_png(path: Path) -> bool:
    """``path`` exists and ends with PNG's IEND chunk (a write that was cut off does not)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-12, os.SEEK_END)
            return fh.read(12) == b"\x00\x00\x00\x00IEND\xaeB`\x82"
    except OSError:
        return False


def _frames(work: Path, step: int) -> tuple[list[Path], str]:
    from xtrt.examples.photos import opencv_doc_dir

    d = opencv_doc_dir(download=True)
    video = d / "vtest.avi" if d else None
    if video is None or not video.is_file():
        return [], "vtest.avi not found (opencv-doc not installed)"
    if importlib.util.find_spec("cv2") is None:
        return [], "cv2 missing: pip install opencv-python-headless to add vtest.avi frames"
    import cv2

    out_dir = work / "vtest_frames"
    out_dir.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    files, i = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % step == 0:
            path = out_dir / f"vtest_{i:04d}.png"
            if not _complete_png(path):
                # written under a temporary name and renamed: a run stopped mid-write left a
                # truncated PNG once, which the loader skipped (309 of 310 images scored)
                tmp = path.with_name(f".{path.stem}.{os.getpid()}.png")
                if not cv2.imwrite(str(tmp), frame):
                    raise OSError(f"cannot write {tmp}")
                os.replace(tmp, path)
            files.append(path)
        i += 1
    cap.release()
    return files, f"{len(files)} frames of vtest.avi ({i} decoded, every {step}th)"


def _folder(path: Path, files: Sequence[Path]) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    for f in files:
        (path / f.name).symlink_to(f.resolve())
    return path


def _run(name: str, model: Path, shape: list[int], pre: dict, cal_dir: Path, ev_dir: Path,
         n_eval: int, out: Path, overrides: Sequence[str]) -> dict:
    from xtrt.config import apply_overrides, config_from_dict
    from xtrt.quant.pipeline import run_quant

    data = {"model": str(model), "output_dir": str(out), "input": {"shape": shape},
            "preprocess": pre,
            "calibration": {"data": str(cal_dir), "steps": N_CALIB // shape[0],
                            "batch_size": shape[0]},
            "evaluation": {"data": str(ev_dir), "count": n_eval, "batch_size": 4}}
    cfg = config_from_dict(apply_overrides(data, overrides), base_dir=out.parent)
    t0 = time.perf_counter()
    res = run_quant(cfg, progress=False)
    total = time.perf_counter() - t0
    r = res.report
    t = r["timings_s"]
    task = r["task"]
    sqnr = [o["sqnr_db"] for o in r["outputs"].values()]
    chosen = r["calibration"].get("method", cfg.calibration.method)
    method = f"auto -> {chosen}" if cfg.calibration.method == "auto" else chosen
    row = {"model": name, "method": method,
           "calib_export_s": round(t.get("calibrate", 0) + t.get("export", 0), 1),
           "total_s": round(total, 1), "held_out": r["summary"]["held_out_images"],
           "sqnr_db": round(min(sqnr), 1), "timings_s": t}
    if task.get("kind") == "classification":
        row["fidelity"] = (f"top-1 agreement {task['agree']}/{task['total']} "
                           f"({task['top1_agreement']:.1%})")
        row["top1_agreement"] = task["top1_agreement"]
    else:
        m = task.get("map50_95")
        row["fidelity"] = (f"mAP50-95 vs FP32 {m:.3f} ({task.get('reference_boxes')} reference "
                           f"boxes, {task.get('detections')} INT8 detections)" if m is not None
                           else f"no mAP ({task.get('reference_boxes')} reference boxes)")
        row["map50_95"] = m
        row["reference_boxes"] = task.get("reference_boxes")
    return row


def render(rows: Sequence[dict]) -> str:
    head = ("| model | calibration | calib+export s (total run s) | held-out images | "
            "fidelity vs FP32 (held out) | INT8 SQNR dB |\n|---|---|---|---|---|---|")
    lines = [f"| {r['model']} | PPQ 0.6.6 via xtrt, {r['method']} | {r['calib_export_s']:.1f} "
             f"({r['total_s']:.1f}) | {r['held_out']} | {r['fidelity']} | {r['sqnr_db']:.1f} |"
             for r in rows]
    return "\n".join([head, *lines])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="effnet,yolo", help="comma list of effnet, yolo")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every model, e.g. calibration.method=mse")
    p.add_argument("--work", default="/tmp/xtrt-bench-fidelity", help="scratch folder")
    p.add_argument("--yolo-size", type=int, default=640)
    p.add_argument("--no-frames", action="store_true", help="do not add vtest.avi frames")
    p.add_argument("--effnet-frames", action="store_true",
                   help="also hold out the vtest.avi frames for EfficientNet (a steadier top-1 "
                        "agreement over ~115 images instead of ~15)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    photos = _photos(work)
    if len(photos) <= N_CALIB:
        print(f"only {len(photos)} photos: need more than {N_CALIB} (install opencv-doc)",
              file=sys.stderr)
        return 1
    pick = sorted(random.Random(0).sample(range(len(photos)), N_CALIB))
    cal = [photos[i] for i in pick]
    chosen = set(pick)
    held = [f for i, f in enumerate(photos) if i not in chosen]
    cal_dir = _folder(work / "calib", cal)
    print(f"{len(photos)} photos: {len(cal)} calibration, {len(held)} held out", file=sys.stderr)
    rows = []
    for name in [m.strip() for m in a.models.split(",") if m.strip()]:
        if name == "effnet":
            from xtrt.examples.effnet import PREPROCESS, export_effnet_lite0

            model = work / "effnet_lite0_ts13.onnx"
            if not model.exists():
                export_effnet_lite0(model, dynamo=False, opset=13)
            frames = _frames(work, FRAME_STEP)[0] if a.effnet_frames else []
            ev_dir = _folder(work / "heldout_effnet", held + frames)
            rows.append(_run("EfficientNet-Lite0 (TorchScript, opset 13)", model,
                             [4, 3, 224, 224], dict(PREPROCESS), cal_dir, ev_dir,
                             len(held) + len(frames),
                             work / "out_effnet", a.overrides))
        elif name == "yolo":
            from xtrt.examples.yolo_e2e import locate_nudenet_model

            frames, note = ([], "frames off") if a.no_frames else _frames(work, FRAME_STEP)
            print(f"YOLOv8n held-out: {len(held)} photos + {note}", file=sys.stderr)
            ev_dir = _folder(work / "heldout_yolo", held + frames)
            s = a.yolo_size
            rows.append(_run(f"YOLOv8n {s} (nudenet)", locate_nudenet_model(), [4, 3, s, s],
                             {"preset": "letterbox", "size": [s, s]}, cal_dir, ev_dir,
                             len(held) + len(frames), work / "out_yolo", a.overrides))
        else:
            print(f"unknown model {name!r} (use effnet, yolo)", file=sys.stderr)
            return 2
        print(f"done {rows[-1]['model']}: {rows[-1]['fidelity']}", file=sys.stderr)
    print(render(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
