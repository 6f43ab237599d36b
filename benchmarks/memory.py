"""Peak host memory of a whole ``xtrt.quant`` run against the number of calibration images.

    python benchmarks/memory.py [--model data/yolov8n_e2e.onnx] [--photos DIR] [--counts 32,2000]
                                [--imgsz 640] [--batch 8] [--method minmax] [--heldout 16]

Each count runs ``python -m xtrt.quant`` in a fresh process on that many calibration images (the
photos cycled through symlinks when the folder has fewer), the same held-out images for every
count, and reads the child's peak RSS (``ru_maxrss``).  Calibration, evaluation and analysis
stream their batches, so the peak should not grow with the count: the acceptance bar is a ratio
of at most 1.25 between the largest and the smallest count.  Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(config: Path, env: dict) -> tuple[float, float, int]:
    """(peak RSS MB, wall s, exit code) of one xtrt.quant process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "xtrt.quant", "--config", str(config), "-q"],
                            cwd=ROOT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024.0, time.perf_counter() - t0, os.waitstatus_to_exitcode(status)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="data/yolov8n_e2e.onnx")
    p.add_argument("--photos", default="data/images")
    p.add_argument("--counts", default="32,2000")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--method", default="minmax")
    p.add_argument("--heldout", type=int, default=16)
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import yaml

    from xtrt.data.images import list_files

    photos = list_files(a.photos)
    if len(photos) <= a.heldout:
        raise SystemExit(f"need more than {a.heldout} photos in {a.photos}")
    held, pool = photos[:a.heldout], photos[a.heldout:]
    counts = [int(c) for c in a.counts.split(",") if c]
    rows = []
    with tempfile.TemporaryDirectory(prefix="xtrt-mem-") as tmp:
        tmp = Path(tmp)
        hdir = tmp / "heldout"
        hdir.mkdir()
        for i, f in enumerate(held):
            (hdir / f"{i:05d}{f.suffix}").symlink_to(f.resolve())
        for n in counts:
            cdir = tmp / f"calib{n}"
            cdir.mkdir()
            for i in range(n):
                f = pool[i % len(pool)]
                (cdir / f"{i:05d}{f.suffix}").symlink_to(f.resolve())
            cfg = {"model": str((ROOT / a.model).resolve()), "output_dir": str(tmp / f"out{n}"),
                   "input": {"shape": [a.batch, 3, a.imgsz, a.imgsz]},
                   "preprocess": {"preset": "letterbox", "size": [a.imgsz, a.imgsz]},
                   "calibration": {"data": str(cdir), "steps": -(-n // a.batch),
                                   "batch_size": a.batch, "method": a.method},
                   "evaluation": {"data": str(hdir), "count": a.heldout}}
            path = tmp / f"cfg{n}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            rss, wall, rc = _run(path, env)
            if rc != 0:
                raise SystemExit(f"xtrt.quant failed on {n} images (exit {rc})")
            rows.append((n, rss, wall))
            print(f"{n} images: peak RSS {rss:.0f} MB, {wall:.1f} s", file=sys.stderr)
    base = rows[0][1]
    print(f"{Path(a.model).name} at {a.imgsz}, batch {a.batch}, method {a.method}, "
          f"{a.heldout} held-out images, {len(pool)} distinct calibration photos (cycled)\n")
    print("| calibration images | peak RSS MB | ratio to first | wall s | ms per image |")
    print("|---:|---:|---:|---:|---:|")
    for n, rss, wall in rows:
        print(f"| {n} | {rss:.0f} | {rss / base:.2f} | {wall:.1f} | {1000 * wall / n:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
