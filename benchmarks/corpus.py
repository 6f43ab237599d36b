"""The corpus acceptance table: every model of benchmarks/corpus.yaml through ``xtrt.quant`` with
default settings (no user code, no exclusions), then the checks of xtrt.examples.corpus_check.

    bash tools/install_corpus.sh
    python benchmarks/corpus.py --work /tmp/xtrt-corpus [--only ppocr_cls ...] [--out benchmarks/corpus.md]

Prints a markdown table (one row per model) and, under it, one line per failure with the exact
message; ``--json`` also writes the raw results.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xtrt.examples.corpus import is_installed, load_manifest, materialize, write_config  # noqa: E402
from xtrt.examples.corpus_check import CorpusResult, run_and_check  # noqa: E402

COLUMNS = ("model", "family", "exporter", "opset", "licence", "quantize", "batch 1 / 4",
           "dynamic batch kept", "lint errors", "TRT-RTX build (Int8 convs)",
           "fidelity vs FP32 (held-out images)")


def _yes(v: bool | None, na: str = "n/a") -> str:
    return na if v is None else ("yes" if v else "**NO**")


def row(entry, res: CorpusResult | None) -> list[str]:
    """One table row (``res`` None: the package is not installed)."""
    head = [entry.name, entry.family, entry.exporter, str(entry.opset), entry.licence]
    if res is None:
        return head + ["not installed"] + [""] * 5
    if not res.quant_ok:
        return head + ["**NO**"] + ["-"] * 5
    b4 = _yes(res.batch4_ok, "n/a (static)")
    trt = "n/a" if res.trt_ok is None else (
        f"yes ({res.int8_convs}/{res.convs})" if res.trt_ok else "**NO**")
    held = f" on {res.held_out}" if res.held_out is not None else ""
    return head + [f"yes ({res.quant_seconds:.0f} s)", f"{_yes(res.batch1_ok)} / {b4}",
                   _yes(res.dynamic_kept, f"n/a (source {res.source_batch})"),
                   "-" if res.lint_errors is None else str(res.lint_errors), trt,
                   f"{res.fidelity}{held}"]


def failures(res: CorpusResult) -> list[str]:
    """One line per failed check, with the message that says why."""
    out = []
    if not res.quant_ok:
        out.append(f"{res.name}: xtrt.quant failed: {res.quant_error or 'non-zero exit'}")
        return out
    if res.io_names_ok is False:
        out.append(f"{res.name}: input/output names or order differ from the source")
    if res.batch1_ok is False or res.batch4_ok is False:
        out.append(f"{res.name}: ONNX Runtime: {res.batch_error.splitlines()[0][:300]}")
    if res.dynamic_kept is False:
        out.append(f"{res.name}: source batch {res.source_batch} was fixed in quantized.onnx")
    if res.lint_errors:
        out.append(f"{res.name}: {res.lint_errors} lint error(s), first: {res.lint_first}")
    if res.trt_ok is False:
        out.append(f"{res.name}: TensorRT-RTX: {res.trt_error.splitlines()[0][:300]}")
    return out


def render(rows: Sequence[list[str]], notes: Sequence[str]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if notes:
        lines += ["", "Failures:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/xtrt-corpus")
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--out", help="also write the table to this markdown file")
    p.add_argument("--json", help="write the raw results to this JSON file")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows, notes, raw = [], [], []
    for entry in load_manifest():
        if a.only and entry.name not in a.only:
            continue
        if not is_installed(entry):
            rows.append(row(entry, None))
            continue
        model = materialize(entry, a.work)
        res = run_and_check(entry.name, model, write_config(entry, model, a.work))
        rows.append(row(entry, res))
        notes += failures(res)
        raw.append(res.to_dict())
        print(f"{entry.name}: done", file=sys.stderr, flush=True)
    text = render(rows, notes)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    if a.json:
        Path(a.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
