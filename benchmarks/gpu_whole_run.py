"""The whole ``xtrt.quant`` run of benchmarks/gpu.sh, in a child process: its wall seconds, its
peak RSS and the stage split of its report.json.

    python benchmarks/gpu_whole_run.py IMAGES OUTDIR [PROFILE.pstats] [--device cpu]
        [--steps 4] [--batch 8] [--count 115] [--imgsz 640] [--set KEY=VALUE ...]

Default: the run of issue 13 on CUDA: YOLOv8n e2e at 640, calibration batch 8 x 4 steps (32
images), 115 held-out images, method auto, layer-wise analysis and a map50_95 >= 0.9 fallback
target.  ``--device cpu`` with fewer images (e.g. ``--steps 2 --batch 4 --count 16``) is the same
run at CPU scale.  ``--json FILE`` writes wall seconds, RSS and timings.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images")
    ap.add_argument("out")
    ap.add_argument("profile", nargs="?", help="a .pstats path: run under cProfile")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--count", type=int, default=115)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--config", default="data/yolov8n_e2e.yaml")
    ap.add_argument("--set", action="append", default=[], dest="extra")
    ap.add_argument("--no-target", action="store_true",
                    help="no accuracy target, so no fallback (the run as issue 13 first measured it)")
    ap.add_argument("--json", help="write the figures here")
    return ap.parse_args(argv)


def settings(a) -> list[str]:
    """The run's ``--set`` overrides (shared with whole_run_counts.py)."""
    b, s = a.batch, a.imgsz
    return [f"input.shape=[{b},3,{s},{s}]", f"preprocess.size=[{s},{s}]",
            f"calibration.data={a.images}", f"calibration.steps={a.steps}",
            f"calibration.batch_size={b}", "calibration.method=auto",
            f"evaluation.data={a.images}", f"evaluation.count={a.count}",
            f"evaluation.batch_size={b}", "analysis.layerwise=true",
            *([] if a.no_target else
              ["analysis.target.metric=map50_95", "analysis.target.min_value=0.9"]), *a.extra]


def main(argv=None) -> int:
    """Run it (under cProfile when a .pstats path is given, printing the top functions)."""
    a = _args(sys.argv[1:] if argv is None else argv)
    sets = settings(a)
    prof = ["-m", "cProfile", "-o", a.profile] if a.profile else []
    cmd = [sys.executable, *prof, "-m", "xtrt.quant", "--config", a.config,
           "--device", a.device, "-q", "--output-dir", a.out]
    for kv in sets:
        cmd += ["--set", kv]
    t = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss, cpu = use.ru_maxrss / 2 ** 20, use.ru_utime + use.ru_stime
    print(f"whole run ({a.device}, {a.steps}x{a.batch} calibration, {a.count} held out, {a.imgsz}px): "
          f"rc {rc}, {wall:.1f} s wall, {cpu:.1f} CPU s, peak RSS {rss:.2f} GiB")
    rep = Path(a.out) / "report.json"
    if not rep.exists():
        return rc or 1
    r = json.loads(rep.read_text())
    t_s = r["timings_s"]
    print(f"stages sum {sum(t_s.values()):.1f} s: " + ", ".join(
        f"{k} {v:.1f}" for k, v in sorted(t_s.items(), key=lambda kv: -kv[1])))
    print("summary", r["summary"])
    print("calibration", {k: r["calibration"].get(k) for k in ("method", "requested", "seconds")})
    print("method_search", r["calibration"].get("method_search"))
    if a.json:
        Path(a.json).write_text(json.dumps({"wall_s": wall, "cpu_s": cpu, "rss_gib": rss, "timings_s": t_s,
                                            "summary": r["summary"], "argv": cmd}, indent=1))
    if a.profile:
        import pstats

        print("(under cProfile: its overhead inflates the Python-heavy parts)")
        pstats.Stats(a.profile).sort_stats("cumulative").print_stats(45)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
