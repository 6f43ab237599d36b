"""``python -m xtrt.profile MODEL.onnx`` (also ``xtrt-profile``): is the CPU or the GPU the limit?

Profiles the whole pipeline (decode, preprocess, host-to-device, inference, device-to-host,
postprocess) under torch.profiler and prints one verdict line, the stage table, top ops and
deployment-style latency/throughput per batch size; writes traces, PNGs and profile.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from xtrt.cli import add_common_args, configure_logging, run_main
from xtrt.errors import XtrtError

__all__ = ["main", "entry", "build_parser", "parse_batches"]


def parse_batches(text: str) -> list[int]:
    """``"1,8,32"`` -> [1, 8, 32] (argparse type: a bad value is a usage error, exit 2)."""
    try:
        vals = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--batch {text!r} is not a comma-separated list of whole numbers (e.g. 1,8,32)") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"--batch {text!r}: batch sizes must be >= 1 (e.g. 1,8,32)")
    return sorted(dict.fromkeys(vals))


def _imgsz(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--imgsz {text!r} is not N or H,W (e.g. 640 or 480,640)") from None
    if len(vals) not in (1, 2) or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"--imgsz {text!r} is not N or H,W (e.g. 640 or 480,640)")
    return vals * 2 if len(vals) == 1 else vals


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xtrt.profile",
        description="Profile a model's whole pipeline and say whether the CPU (decode, "
                    "preprocessing) or the GPU (inference) limits it.",
        epilog="example: python -m xtrt.profile yolov8n_e2e.onnx --images photos/ --batch 1,8 "
               "--out prof/   then: tensorboard --logdir prof/tb")
    p.add_argument("model", help="the ONNX model (plugin-terminated models such as EfficientNMS_TRT work)")
    p.add_argument("--config", type=Path, help="xtrt YAML config: its preprocess/input sections are used")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (with --config)")
    p.add_argument("--images", help="folder or glob of photos (default: synthetic tensors)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: the config's device, else cpu")
    p.add_argument("--backend", choices=["ort", "ppq"], default="ort",
                   help="ort: ONNX Runtime (deployment-like, default); ppq: PPQ executor op by op")
    p.add_argument("--int8", action="store_true", help="ppq: use the INT8-simulating executor")
    p.add_argument("--batch", dest="batches", type=parse_batches, metavar="1,8,32",
                   help="batch sizes to sweep (default: 1,8, or the model's fixed batch)")
    p.add_argument("--steps", type=_positive, default=20, help="measured (traced) steps per batch size")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps before measuring")
    p.add_argument("--compare", type=Path, metavar="QUANTIZED.onnx",
                   help="profile this model too, side by side (e.g. the INT8 Q/DQ model)")
    p.add_argument("--out", type=Path, help="run folder (default: xtrt_out/<model>/profile)")
    p.add_argument("--imgsz", type=_imgsz, metavar="H[,W]", help="input size for dynamic H/W models")
    p.add_argument("--preprocess-plugin", metavar="FILE.py:FUNC",
                   help="preprocessing function image(RGB uint8 HWC) -> CHW float32")
    p.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MY_OPS.py",
                   help="load op handlers for plugin nodes (xtrt.ops.REGISTRY.register); repeatable")
    p.add_argument("--threads", type=_positive, help="ONNX Runtime intra-op threads")
    p.add_argument("--workers", type=_positive, metavar="N",
                   help="decode+preprocess threads for the feed table's rows (N workers; on "
                        "CUDA also pinned/async and GPU decode); default: one per core, at most "
                        "8; 1: only today's single-thread figures")
    p.add_argument("--max-images", type=_positive, default=64, help="photos used at most")
    p.add_argument("--no-trace", dest="trace", action="store_false",
                   help="time without the profiler (no traces, no top ops)")
    add_common_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    from xtrt.profile.api import ProfileOptions, profile_model
    from xtrt.profile.render import render_result

    t0 = time.perf_counter()
    opts = ProfileOptions(model=Path(args.model), images=args.images, config=args.config,
                          overrides=list(args.overrides), device=args.device, backend=args.backend,
                          batches=args.batches, steps=args.steps, warmup=max(0, args.warmup),
                          compare=args.compare, out=args.out, imgsz=args.imgsz,
                          preprocess_plugin=args.preprocess_plugin, plugins=list(args.plugins),
                          int8=args.int8,
                          threads=args.threads, workers=args.workers, max_images=args.max_images, trace=args.trace)
    try:
        result = profile_model(opts)
    except XtrtError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        print(f"FAILED | {time.perf_counter() - t0:.1f} s | python -m xtrt.profile {args.model}",
              file=sys.stderr)
        return 1
    if not args.quiet:
        print(render_result(result))
        print()
    print(f"PASSED | {time.perf_counter() - t0:.1f} s | {result.verdict.label} "
          f"(batch {result.verdict.batch}) | {result.out_dir}")
    return 0


def entry() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entry()
