"""Work a whole ``xtrt.quant`` run does on ONNX Runtime, counted (load-independent, unlike its
seconds): sessions built, forwards run, images fed, bytes of outputs copied back, per stage.

    python benchmarks/whole_run_counts.py IMAGES OUTDIR [--device cpu] [--steps 2] [--batch 4]
        [--count 16] [--imgsz 320] [--json FILE]

Same run as benchmarks/gpu_whole_run.py, in this process (onnxruntime.InferenceSession wrapped).
Run seconds are split into each session's first run (``first_run_s``: on CUDA it pays the EP's
lazy set-up) and the later ones (``run_s``).
Forwards through an IO binding are counted; their images and output bytes are not (the outputs a
binding returns are scalars or stay on the device).
"""
from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path


_STAGES = {"prepare_model": "prepare", "calibrate": "calibrate", "build_evaluator": "verify",
           "choose_method": "method_search", "analyse": "analysis", "_scatter": "analysis",
           "run_target_fallback": "fallback", "_precision": "float_precision",
           "_engine": "engine", "write_outputs": "outputs", "_run": "verify"}


def _stage() -> str:
    """The xtrt.quant stage on the stack (the innermost pipeline step named in _STAGES)."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_name
        if name in _STAGES and "xtrt" in f.f_code.co_filename:
            if name != "calibrate" or f.f_code.co_filename.endswith("quant/calibrate.py"):
                return _STAGES[name]
        f = f.f_back
    return "other"


def main(argv=None) -> int:
    """Run the whole run with counters; print and optionally write them."""
    import onnxruntime as ort

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_whole_run import _args, settings

    sys.path.insert(0, str(Path.cwd()))       # the checkout's xtrt, as python -m would import it

    a = _args(sys.argv[1:] if argv is None else argv)
    counts = collections.defaultdict(lambda: collections.Counter())
    real_init, real_run = ort.InferenceSession.__init__, ort.InferenceSession.run

    def init(self, *args, **kw):
        t = time.perf_counter()
        real_init(self, *args, **kw)
        c = counts[_stage()]
        c["sessions"] += 1
        c["session_s"] += time.perf_counter() - t

    seen: set[int] = set()        # sessions that have run once (the first run pays set-up)

    def timed(self, c, t):
        first = id(self) not in seen
        seen.add(id(self))
        c["first_run_s" if first else "run_s"] += time.perf_counter() - t
        c["first_runs" if first else "later_runs"] += 1

    def run(self, output_names, input_feed, *args, **kw):
        t = time.perf_counter()
        outs = real_run(self, output_names, input_feed, *args, **kw)
        c = counts[_stage()]
        timed(self, c, t)
        c["forwards"] += 1
        first = next(iter(input_feed.values()), None)
        c["images"] += int(getattr(first, "shape", [0])[0]) if getattr(first, "ndim", 0) else 0
        c["out_MB"] += sum(getattr(o, "nbytes", 0) for o in outs) / 2 ** 20
        return outs

    real_bound = ort.InferenceSession.run_with_iobinding

    def run_bound(self, binding, *args, **kw):      # bound inputs/outputs: no host copies counted
        t = time.perf_counter()
        real_bound(self, binding, *args, **kw)
        c = counts[_stage()]
        timed(self, c, t)
        c["forwards"] += 1

    ort.InferenceSession.__init__, ort.InferenceSession.run = init, run
    ort.InferenceSession.run_with_iobinding = run_bound
    from xtrt.cli import run_main
    from xtrt.quant.__main__ import main as quant_main

    sets = settings(a)
    args = ["--config", a.config, "--device", a.device, "-q", "--output-dir", a.out]
    for kv in sets:
        args += ["--set", kv]
    rc = run_main(quant_main, args)
    total = collections.Counter()
    for st, c in sorted(counts.items()):
        total.update(c)
        print(f"{st:16s} " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in sorted(c.items())))
    print(f"{'total':16s} " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in sorted(total.items())))
    if a.json:
        Path(a.json).write_text(json.dumps({k: dict(v) for k, v in counts.items()}, indent=1))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
