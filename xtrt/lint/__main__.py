"""``python -m xtrt.lint MODEL.onnx [--trt-rtx]``: structural Q/DQ checks (and a TensorRT-RTX build).

Exit codes: 0 no errors, 1 lint errors (or a user error), 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from xtrt.cli import add_common_args, configure_logging, run_main
from xtrt.errors import ConfigError

log = logging.getLogger("xtrt.lint")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xtrt.lint",
        description="Check a Q/DQ ONNX model for what TensorRT needs (quantized Conv/Gemm/MatMul "
                    "inputs and weights, no int32 bias DequantizeLinear, symmetric int8, "
                    "per-channel axis, valid scales); optionally build it with TensorRT-RTX.")
    p.add_argument("model", help="quantized ONNX model")
    p.add_argument("--quant-cfg", metavar="JSON",
                   help="xtrt quant_cfg.json whose float_ops/decode_tail are float on purpose "
                        "(default: quant_cfg.json beside the model, if present)")
    p.add_argument("--strict", action="store_true",
                   help="a Conv/Gemm/MatMul left wholly in float is an error, not a warning")
    p.add_argument("--trt-rtx", action="store_true",
                   help="also parse and build with the TensorRT-RTX builder (SM89, no GPU needed)")
    p.add_argument("--body-only", action="store_true",
                   help="with --trt-rtx: build only the graph before plugin nodes (the default "
                        "when the model has plugin nodes TensorRT-RTX lacks, e.g. EfficientNMS_TRT)")
    p.add_argument("--strongly-typed", action="store_true",
                   help="report FP32 regions outside Q/DQ (default: when the model has FP16 "
                        "tensors)")
    p.add_argument("--show-info", action="store_true", help="print info-level findings too")
    add_common_args(p)
    return p


def _declared_float(model_path: Path, cfg_path: str | None) -> list[str]:
    path = Path(cfg_path) if cfg_path else model_path.parent / "quant_cfg.json"
    if not path.is_file():
        if cfg_path:
            raise ConfigError(f"--quant-cfg {cfg_path!r} does not exist", "check the path")
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {str(path)!r} as JSON: {exc}",
                          "pass the quant_cfg.json written by xtrt.quant with --quant-cfg, or "
                          "move the broken file away") from exc
    float_ops = data.get("float_ops") if isinstance(data, dict) else None
    tail = data.get("decode_tail") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(float_ops or {}, (dict, list)) or \
            not isinstance(tail or [], list):
        raise ConfigError(f"{str(path)!r} is not an xtrt quant_cfg.json (expected an object with "
                          "float_ops {node: reason} and decode_tail [nodes])",
                          "pass the quant_cfg.json written by xtrt.quant with --quant-cfg, or "
                          "move the other file away")
    precision = data.get("float_precision")
    kept = precision.get("kept_fp32") if isinstance(precision, dict) else None
    if precision is not None and not isinstance(kept or {}, (dict, list)):
        raise ConfigError(f"{str(path)!r} has a float_precision.kept_fp32 that is not a list of "
                          "nodes", "pass the quant_cfg.json written by xtrt.quant with "
                          "--quant-cfg, or move the other file away")
    names = list(float_ops or {}) + list(tail or []) + list(kept or {})
    return [n if isinstance(n, str) else str(n) for n in names]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    t0 = time.perf_counter()
    from xtrt.lint.qdq import hazard_counts, kept_float, lint_qdq, summarize
    from xtrt.model.load import load_model

    path = Path(args.model)
    model = load_model(path)
    floats = _declared_float(path, args.quant_cfg)
    findings = lint_qdq(model, float_nodes=floats, strict=args.strict,
                        strongly_typed=True if args.strongly_typed else None)
    kept = kept_float(findings)
    for f in findings:
        if f.severity != "info" or args.show_info or f in kept:
            print(f)
    counts = summarize(findings)
    hazards = hazard_counts(findings)
    print(f"hazards: {sum(hazards.values())}" + (" (" + ", ".join(f"{k} {v}" for k, v in
                                                                   hazards.items()) + ")"
                                                  if hazards else "")
          + f"; kept float by the exporter: {len(kept)}")
    failed = counts["error"] > 0
    extra = ""
    if args.trt_rtx:
        from xtrt.lint.trt_rtx import build_with_trt_rtx

        rep = build_with_trt_rtx(model, build_body_only=True if args.body_only else None)
        if rep.body_only and rep.plugin_nodes and not args.body_only:
            print(f"built the body before the plugin nodes ({', '.join(rep.plugin_nodes)}) "
                  "automatically: TensorRT-RTX ships no such plugin")
        print(rep.summary())
        for err in (rep.parse_errors + rep.build_errors)[1:]:
            print(f"  {err}")
        for layer in rep.fp32_islands:
            print(f"  Float layer {layer.name} ({layer.layer_type}): "
                  f"{', '.join(layer.onnx_nodes) or 'no ONNX node'}")
        failed = failed or not rep.ok
        extra = f"; {rep.label}: {'built' if rep.ok else 'FAILED'}"
    cmd = "python -m xtrt.lint " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{'FAILED' if failed else 'PASSED'} xtrt.lint in {time.perf_counter() - t0:.1f}s: "
          f"{counts['error']} errors, {counts['warning']} warnings, {counts['info']} info"
          f"{extra} | {cmd}")
    return 1 if failed else 0


def entry() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entry()
