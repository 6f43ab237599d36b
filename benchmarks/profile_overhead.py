"""Profiling overhead of ``xtrt.profile``: median pipeline latency with and without the profiler.

    python benchmarks/profile_overhead.py [--model M.onnx] [--images DIR] [--batch 8] [--rounds 3]

Without --model it builds the YOLOv8n + EfficientNMS_TRT end-to-end model from nudenet
(``pip install --no-deps nudenet==3.4.2``) and uses scikit-image's photos.  Plain and profiled runs
alternate ``--rounds`` times (so drift on a shared machine hits both alike); the medians of the
per-round medians are compared.  Prints a markdown table; the acceptance bar is +15 % at batch 8.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def _default_inputs(tmp: Path) -> tuple[Path, Path]:
    import shutil

    import skimage.data

    from xtrt.examples.yolo_e2e import build_yolo_e2e, locate_nudenet_model

    model = build_yolo_e2e(locate_nudenet_model(), tmp / "yolov8n_e2e.onnx", size=320)
    photos = tmp / "photos"
    photos.mkdir()
    src = Path(skimage.data.__file__).parent
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                 "camera.png", "coins.png"):
        if (src / name).is_file():
            shutil.copy(src / name, photos / name)
    return model, photos


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path)
    p.add_argument("--images")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    logging.getLogger("xtrt").setLevel(logging.WARNING)
    from xtrt.profile.api import ProfileOptions, profile_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, images = (args.model, args.images) if args.model else _default_inputs(tmp)
        med = {"plain": [], "profiled": []}
        model_med = {"plain": [], "profiled": []}
        for r in range(args.rounds):
            for kind in ("plain", "profiled"):
                res = profile_model(ProfileOptions(
                    model=Path(model), images=str(images) if images else None, batches=[args.batch],
                    steps=args.steps, out=tmp / f"out_{kind}_{r}", trace=kind == "profiled",
                    write=kind == "profiled"))
                b = res.models[0].batches[0]
                med[kind].append(b.latency_all.median)
                model_med[kind].append(b.latency_model.median)
        plain, prof = statistics.median(med["plain"]), statistics.median(med["profiled"])
        mplain, mprof = statistics.median(model_med["plain"]), statistics.median(model_med["profiled"])
        print(f"model: {Path(model).name}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, "
              f"inputs: {'photos' if images else 'synthetic'}\n")
        print("| latency (median ms per batch) | plain | profiled | overhead |")
        print("|---|---:|---:|---:|")
        print(f"| latency-all | {plain:.1f} | {prof:.1f} | {(prof / plain - 1):+.1%} |")
        print(f"| latency-model | {mplain:.1f} | {mprof:.1f} | {(mprof / mplain - 1):+.1%} |")
        print(f"\nper-round latency-all medians: plain {[round(x, 1) for x in med['plain']]}, "
              f"profiled {[round(x, 1) for x in med['profiled']]}")
        ok = prof <= plain * 1.15
        print(f"\n{'PASS' if ok else 'FAIL'}: profiled within 15 % of plain at batch {args.batch}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
