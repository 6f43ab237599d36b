"""How far GPU decode (nvJPEG + the device letterbox, xtrt.runtime.feed_gpu) is from the host path
(PIL decode + xtrt.data.preprocess.letterbox) on a folder of photos, in grey levels (0..255).

    python benchmarks/feed_pixels.py .gpudata/photos [--size 640]

Needs CUDA and torchvision; prints the reason and exits 1 without them.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images")
    p.add_argument("--size", type=int, default=640)
    a = p.parse_args()
    from xtrt.config import PreprocessConfig
    from xtrt.data.images import IMAGE_SUFFIXES, decode_image, list_files
    from xtrt.data.preprocess import letterbox
    from xtrt.runtime.feed_gpu import GpuDecodeFeed, device_preprocess, gpu_decode_unavailable

    why = gpu_decode_unavailable("cuda")
    if why:
        print(f"error: no GPU decode here: {why} (fix: run on the GPU machine)", file=sys.stderr)
        return 1
    files = list_files(a.images, IMAGE_SUFFIXES)
    size = (a.size, a.size)
    pre = device_preprocess(PreprocessConfig(preset="letterbox", size=list(size)), size)
    means, maxes, p99s = [], [], []
    with GpuDecodeFeed(files, pre, "images", (3, *size), 1, 4) as feed:
        for f in files:
            got = feed.next().cpu().numpy()[0]
            want, _ = letterbox(decode_image(f), size)
            d = np.abs(got - want) * 255
            means.append(d.mean())
            maxes.append(d.max())
            p99s.append(np.percentile(d, 99))
        print(f"{len(files)} photos ({feed.jpeg_images} nvJPEG, {feed.host_images} host-decoded, "
              f"{len(feed.refused)} refused by nvJPEG): |GPU - host| in grey levels: mean "
              f"{np.mean(means):.3f}, per-photo p99 up to {max(p99s):.1f}, max {max(maxes):.1f}")
        for r in feed.refused[:3]:
            print(f"  refused: {r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
