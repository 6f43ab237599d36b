"""The whole ``xtrt.quant --device cuda`` run of benchmarks/gpu.sh, in a child process: its wall
seconds, its peak RSS and the stage split of its report.json.

    python benchmarks/gpu_whole_run.py IMAGES OUTDIR [PROFILE.pstats]

YOLOv8n e2e at 640, calibration batch 8 x 4 steps (32 images), 115 held-out images, method auto,
layer-wise analysis and a map50_95 >= 0.9 fallback target (the run of issue 13).
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def main(images: str, out: str, profile: str | None = None) -> int:
    """Run it; with ``profile`` (a .pstats path) under cProfile, printing the top functions."""
    sets = ["input.shape=[8,3,640,640]", "preprocess.size=[640,640]",
            f"calibration.data={images}", "calibration.steps=4", "calibration.batch_size=8",
            "calibration.method=auto", f"evaluation.data={images}", "evaluation.count=115",
            "evaluation.batch_size=8", "analysis.layerwise=true",
            "analysis.target.metric=map50_95", "analysis.target.min_value=0.9"]
    prof = ["-m", "cProfile", "-o", profile] if profile else []
    cmd = [sys.executable, *prof, "-m", "xtrt.quant", "--config", "data/yolov8n_e2e.yaml",
           "--device", "cuda", "-q", "--output-dir", out]
    for s in sets:
        cmd += ["--set", s]
    t = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
    print(f"whole run: rc {rc}, {wall:.1f} s wall, peak RSS {rss:.2f} GiB")
    rep = Path(out) / "report.json"
    if not rep.exists():
        return rc or 1
    r = json.loads(rep.read_text())
    t_s = r["timings_s"]
    print(f"stages sum {sum(t_s.values()):.1f} s: " + ", ".join(
        f"{k} {v:.1f}" for k, v in sorted(t_s.items(), key=lambda kv: -kv[1])))
    print("summary", r["summary"])
    print("calibration", {k: r["calibration"].get(k) for k in ("method", "requested", "seconds")})
    print("method_search", r["calibration"].get("method_search"))
    if profile:
        import pstats

        print("(under cProfile: its overhead inflates the Python-heavy parts)")
        pstats.Stats(profile).sort_stats("cumulative").print_stats(45)
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], *(sys.argv[3:4])))
