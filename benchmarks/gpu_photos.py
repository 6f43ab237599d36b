"""Fill a folder to N images for the whole-run benchmark: the photos of SRC, then mirrored,
flipped and rotated copies of them (new JPEG files, named for the transform).

    python benchmarks/gpu_photos.py SRC DST N

Used by benchmarks/gpu.sh when the photo folder holds fewer images than the run needs
(32 calibration + 115 held out); the copies are real photos, transformed, not new scenes.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path


def fill(src: Path, dst: Path, need: int) -> tuple[int, int]:
    """Copy SRC's photos into DST and add transformed copies until DST holds ``need``;
    returns (originals, copies made)."""
    from PIL import Image, ImageOps

    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no photos in {src}")
    for p in files:
        shutil.copy(p, dst / p.name)
    ops = [("mirror", ImageOps.mirror), ("flip", ImageOps.flip),
           ("rot90", lambda im: im.rotate(90, expand=True))]
    k = 0
    while len(files) + k < need and k < len(files) * len(ops):
        name, op = ops[k // len(files)]
        p = files[k % len(files)]
        op(Image.open(p).convert("RGB")).save(dst / f"{name}_{p.stem}.jpg", quality=92)
        k += 1
    return len(files), k


if __name__ == "__main__":
    n, k = fill(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
    print(f"{n} photos + {k} mirrored/flipped/rotated copies in {sys.argv[2]}")
