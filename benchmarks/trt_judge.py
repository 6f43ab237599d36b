"""Lint hazards and the TensorRT-RTX engine's figures for Q/DQ models, one table row per model.

    python benchmarks/trt_judge.py out_eff/quantized.onnx out_eff16/quantized.onnx ...

Figures are "TensorRT-RTX 1.7 AOT build, SM89" (structure and acceptance, not TensorRT 10, no
latency).  Plugin-terminated models are built by their body.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def judge(path: str) -> dict:
    """Lint hazard counts and engine figures for one model."""
    from xtrt.lint.__main__ import _declared_float
    from xtrt.lint.qdq import hazard_counts, lint_qdq
    from xtrt.lint.trt_rtx import engine_judge
    from xtrt.model.load import load_model

    model = load_model(path)
    floats = _declared_float(Path(path), None)
    findings = lint_qdq(model, float_nodes=floats)
    eng = engine_judge(model)
    return {"model": path, "hazards": hazard_counts(findings), "engine": eng}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--json", help="write all figures here")
    args = p.parse_args()
    rows = [judge(m) for m in args.models]
    print("| model | lint hazards | accepted | layers | Int8 convs / all | Float layers outside "
          "Int8 convs | Half layers |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        e, h = r["engine"], r["hazards"]
        hz = f"{sum(h.values())}" + (f" ({', '.join(f'{k} {v}' for k, v in h.items())})" if h else "")
        isl = ", ".join("+".join(x["onnx_nodes"][:2]) or x["layer"] for x in e["fp32_islands"])
        print(f"| {r['model']} | {hz} | {'yes' if e['accepted'] else 'NO'}"
              f"{' (body)' if e['body_only'] else ''} | {e['layers']} | "
              f"{e['int8_convolutions']}/{e['convolutions']} | {len(e['fp32_islands'])}"
              f"{': ' + isl if isl else ''} | {e['half_layers']} |")
    print(f"({rows[0]['engine']['label']})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
