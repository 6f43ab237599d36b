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
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xtrt.examples.corpus import is_installed, load_manifest, materialize, write_config  # noqa: E402
from xtrt.examples.corpus_check import CorpusResult, run_and_check  # noqa: E402

COLUMNS = ("model", "family", "exporter", "opset", "licence", "quantize", "batch 1 / 4",
           "dynamic batch kept", "lint errors / warnings (kept float by the exporter)",
           "TRT-RTX Int8 convs / quantizable", "Float layers outside Int8 convs: FP16 export "
           "(FP32 export)", "FP16 vs FP32 export, worst SQNR", "fidelity vs FP32 (held-out images)")
PREAMBLE = ("default settings, no exclusions, 8 calibration images, held-out images disjoint from "
            "them). TensorRT-RTX columns: the engine judge of each report (TensorRT-RTX 1.7 AOT "
            "build, SM89: structure and acceptance, not TensorRT 10, no latency). Quantizable "
            "convolutions: all engine convolutions but those the exporter recorded as kept float "
            "(xtrt.trt.kept_float, which xtrt.lint reports in its own count). Float layers: "
            "engine layers running Float in and out outside the Int8 convolutions; each must "
            "carry a reason from the report. FP16 vs FP32 export: worst output SQNR against "
            "the FP32 source on the same held-out images (ONNX Runtime CPU, Q/DQ fusions off), "
            "at most 0.5 dB below the FP32 export's; resolution: how far the FP32 export's figure moves when its input "
            "is scaled by 1 + 1e-5 (INT8 rounding flips alone), the smallest difference these "
            "images resolve.")
MAX_FP16_DELTA_DB = 0.5     # #12: the FP16 export within 0.5 dB of the FP32 export


def _yes(v: bool | None, na: str = "n/a") -> str:
    return na if v is None else ("yes" if v else "**NO**")


def _trt_cell(res: CorpusResult) -> str:
    if res.trt_ok is None:
        return "n/a"
    if not res.trt_ok:
        return "**NO** (not built)"
    quantizable = res.convs - (res.convs_kept_float or 0)
    ok = res.int8_convs >= quantizable
    kept = f", {res.convs_kept_float} kept float by the exporter" if res.convs_kept_float else ""
    return f"{'' if ok else '**'}{res.int8_convs}/{quantizable}{'' if ok else '**'} " \
           f"({res.convs} convs{kept})"


def _islands_cell(res: CorpusResult) -> str:
    if res.float_islands is None:
        return "n/a"
    bad = sum(1 for x in res.float_islands if not x.get("reason"))
    fp16 = f"{len(res.float_islands)}" + (f" (**{bad} without a reason**)" if bad else "")
    fp32 = "-" if res.fp32_float_islands is None else str(len(res.fp32_float_islands))
    return f"{fp16} ({fp32})"


def fp16_verdict(res: CorpusResult) -> str | None:
    """'ok' when the FP16 export is at most 0.5 dB below the FP32 export (#12: fidelity within
    0.5 dB; a figure above it is no loss, and is reported as it is); 'unresolved' lower, but
    within the figure's resolution on these images (the FP32 export moves as much under a 1e-5
    input scaling); 'drift' beyond both."""
    if res.fp16_delta_db is None:
        return None
    d = -res.fp16_delta_db
    if d <= MAX_FP16_DELTA_DB:
        return "ok"
    return "unresolved" if res.sqnr_resolution_db is not None and \
        d <= res.sqnr_resolution_db else "drift"


def _fp16_cell(res: CorpusResult) -> str:
    verdict = fp16_verdict(res)
    if verdict is None:
        return "n/a"
    mark = "" if verdict == "ok" else "**"
    res_db = "" if res.sqnr_resolution_db is None else \
        f"; resolution {res.sqnr_resolution_db:.2f} dB"
    better = ", FP16 higher" if res.fp16_delta_db > MAX_FP16_DELTA_DB else ""
    return (f"{res.fp16_sqnr_db:.2f} vs {res.fp32_sqnr_db:.2f} dB "
            f"({mark}{res.fp16_delta_db:+.2f} dB{mark}{better}{res_db})")


def row(entry, res: CorpusResult | None) -> list[str]:
    """One table row (``res`` None: the package is not installed)."""
    head = [entry.name, entry.family, entry.exporter, str(entry.opset), entry.licence]
    n = len(COLUMNS) - len(head) - 1
    if res is None:
        return head + ["not installed"] + [""] * n
    if not res.quant_ok:
        return head + ["**NO**"] + ["-"] * n
    b4 = _yes(res.batch4_ok, "n/a (static)")
    held = f" on {res.held_out}" if res.held_out is not None else ""
    lint = "-" if res.lint_errors is None else \
        f"{res.lint_errors} / {res.lint_warnings} ({len(res.lint_kept_float)})"
    return head + [f"yes ({res.quant_seconds:.0f} s)", f"{_yes(res.batch1_ok)} / {b4}",
                   _yes(res.dynamic_kept, f"n/a (source {res.source_batch})"), lint,
                   _trt_cell(res), _islands_cell(res), _fp16_cell(res), f"{res.fidelity}{held}"]


def _grouped(reason: str | None) -> str | None:
    """'a: why; b: why' (explain_islands' per-node reasons) as 'why (a, b)'."""
    if not reason:
        return reason
    by: dict[str, list[str]] = {}
    for part in reason.split("; "):
        node, _, why = part.partition(": ")
        by.setdefault(why or node, []).append(node if why else "")
    return "; ".join(f"{why} ({', '.join(n for n in nodes if n)})" for why, nodes in by.items())


def details(res: CorpusResult) -> list[str]:
    """What each model keeps float and why: the exporter's record (lint), the FP16 export's FP32
    nodes, and every Float engine layer of both exports with the reason the report gives."""
    out = [f"- kept float by the exporter: {m}" for m in res.lint_kept_float]
    out += [f"- FP32 in the FP16 export: {n}: {why}" for n, why in res.kept_fp32.items()]
    for label, islands in (("FP16 export", res.float_islands),
                           ("FP32 export", res.fp32_float_islands)):
        for x in islands or []:
            nodes = ", ".join(x.get("onnx_nodes") or [])
            out.append(f"- Float engine layer, {label}: {x.get('type')} [{nodes}]: "
                       f"{_grouped(x.get('reason')) or 'no reason recorded'}")
    return [f"**{res.name}**", ""] + out + [""] if out else []


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
    if res.lint_errors or res.lint_warnings:
        out.append(f"{res.name}: {res.lint_errors} lint error(s), {res.lint_warnings} "
                   f"warning(s), first: {res.lint_first}")
    if res.trt_ok is False:
        out.append(f"{res.name}: TensorRT-RTX: {res.trt_error.splitlines()[0][:300]}")
    if res.trt_ok and res.int8_convs < res.convs - (res.convs_kept_float or 0):
        out.append(f"{res.name}: TensorRT-RTX: {res.int8_convs} Int8 convolutions of "
                   f"{res.convs - (res.convs_kept_float or 0)} quantizable")
    for x in res.float_islands or []:
        if not x.get("reason"):
            out.append(f"{res.name}: Float engine layer without a reason in the FP16 export: "
                       f"{x.get('type')} [{', '.join(x.get('onnx_nodes') or [])}]")
    verdict = fp16_verdict(res)
    if verdict in ("drift", "unresolved"):
        out.append(f"{res.name}: FP16 export {res.fp16_delta_db:+.2f} dB from the FP32 export "
                   f"(more than {MAX_FP16_DELTA_DB} dB" + (
                       f"; within the {res.sqnr_resolution_db:.2f} dB the FP32 export itself "
                       f"moves when its input is scaled by 1 + 1e-5: not resolved by these "
                       f"images)" if verdict == "unresolved" else ")"))
    return out


def render(rows: Sequence[list[str]], notes: Sequence[str], more: Sequence[str] = ()) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "Failures:", ""] + ([f"- {n}" for n in notes] or ["none"])
    if more:
        lines += ["", "What each model keeps float, and why (TensorRT-RTX 1.7 AOT build, SM89 "
                  "for the engine layers):", ""] + list(more)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/xtrt-corpus")
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--out", help="also write the table to this markdown file")
    p.add_argument("--json", help="write the raw results to this JSON file")
    p.add_argument("--render", metavar="JSON",
                   help="only render the table from a --json file of an earlier run")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows, notes, raw, more = [], [], [], []
    done = {r["name"]: CorpusResult(**r) for r in json.loads(Path(a.render).read_text())} \
        if a.render else None
    for entry in load_manifest():
        if a.only and entry.name not in a.only:
            continue
        if done is not None or not is_installed(entry):
            if done is None or entry.name not in done:
                rows.append(row(entry, None))
                continue
        if done is not None:
            res = done[entry.name]
        else:
            model = materialize(entry, a.work)
            res = run_and_check(entry.name, model, write_config(entry, model, a.work))
        rows.append(row(entry, res))
        notes += failures(res)
        more += details(res) if res.quant_ok else []
        raw.append(res.to_dict())
        if done is None:
            print(f"{entry.name}: done", file=sys.stderr, flush=True)
    text = render(rows, notes, more)
    print(text)
    if a.out:
        cmd = "python benchmarks/corpus.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(a.out).write_text(f"# Corpus acceptance table\n\n`bash tools/install_corpus.sh && "
                               f"{cmd}` ({time.strftime('%Y-%m-%d')}; {PREAMBLE}\n\n{text}")
    if a.json:
        Path(a.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
