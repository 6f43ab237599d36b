"""Markdown rendering of a quant report dict (layout in :mod:`xtrt.report`).

Known sections get a tailored layout in a fixed order; any other key is rendered generically
(scalars as a list, a list of dicts as a table), so a new field shows up without a code change.
Missing keys are skipped; a key whose value has an unexpected shape is rendered generically
rather than raising.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["render_report_md", "md_table"]

_SECTIONS = [
    ("summary", "Summary"),
    ("outputs", "Output fidelity (FP32 vs INT8)"),
    ("task", "Task metric (FP32 vs INT8)"),
    ("worst_layers", "Worst layers"),
    ("fallback", "Fallback trials"),
    ("placement", "Placement"),
    ("plots", "Plots"),
]
_SKIP = {"schema_version", "title"}

_FORMATS = {
    "sqnr_db": ".1f", "snr_db": ".1f", "cosine": ".5f", "isclose": ".1%", "noise_ratio": ".4f",
    "max_abs": ".4g", "mean_abs": ".4g", "mae": ".4g", "disagree_pct": ".1f", "delta": "+.4f",
    "fp32": ".4f", "int8": ".4f", "metric": ".4f", "target": ".4f", "map50_95": ".4f", "map50": ".4f",
}
_HEADERS = {
    "sqnr_db": "SQNR dB", "snr_db": "SNR dB", "isclose": "isclose", "max_abs": "max abs",
    "mean_abs": "mean abs", "nonfinite": "non-finite", "op_type": "op", "noise_ratio": "noise ratio",
    "disagree_pct": "disagree %", "n_fp32_layers": "FP32 layers", "fp32": "FP32", "int8": "INT8",
    "mae": "MAE", "ref_abs_max": "FP32 abs max",
}


def _fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        fmt = _FORMATS.get(key)
        return format(v, fmt) if fmt else f"{v:.4g}"
    if isinstance(value, (list, tuple)) and all(not isinstance(x, (Mapping, list, tuple)) for x in value):
        return ", ".join(_fmt(x) for x in value)
    return str(value)  # strings, including "inf"/"-inf" as write_json_atomic writes them


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None,
             headers: Mapping[str, str] | None = None) -> str:
    """A markdown table of ``rows``; columns ``keys`` (default: every key, in first-seen order)."""
    if keys is None:
        keys = []
        for r in rows:
            keys.extend(k for k in r if k not in keys)
    names = {**_HEADERS, **(headers or {})}
    numeric = [any(isinstance(r.get(k), (int, float, np.integer, np.floating))
                   and not isinstance(r.get(k), bool) for r in rows) for k in keys]
    lines = ["| " + " | ".join(_cell(names.get(k, k)) for k in keys) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(_fmt(r.get(k), k)) for k in keys) + " |")
    return "\n".join(lines)


def _kv(d: Mapping[str, Any]) -> str:
    return "\n".join(f"- **{k}**: {_fmt(v, k)}" for k, v in d.items() if not isinstance(v, (Mapping, list)))


def _generic(value: Any, level: int = 3) -> str:
    """Render anything: scalars, dicts (nested ones as sub-headings), lists (of dicts: a table)."""
    if isinstance(value, Mapping):
        parts = [_kv(value)] if any(not isinstance(v, (Mapping, list)) for v in value.values()) else []
        for k, v in value.items():
            if isinstance(v, (Mapping, list)):
                parts.append(f"{'#' * min(level, 6)} {k}\n\n{_generic(v, level + 1)}")
        return "\n\n".join(p for p in parts if p)
    if isinstance(value, list):
        if not value:
            return "(none)"
        if all(isinstance(v, Mapping) for v in value):
            return md_table(value)
        return "\n".join(f"- {_fmt(v)}" for v in value)
    return _fmt(value)


def _ordered_keys(rows: Sequence[Mapping[str, Any]], first: Sequence[str]) -> list[str]:
    present = [k for k in first if any(k in r for r in rows)]
    for r in rows:
        present.extend(k for k in r if k not in present and not isinstance(r[k], (Mapping, list)))
    return present


def _outputs(outputs: Any) -> str:
    if not isinstance(outputs, Mapping) or not all(isinstance(v, Mapping) for v in outputs.values()):
        return _generic(outputs)
    rows = [{"output": name, **{k: v for k, v in s.items() if k != "rank"}} for name, s in outputs.items()]
    keys = [k for k in ("output", "sqnr_db", "cosine", "isclose", "max_abs", "mean_abs", "ref_abs_max",
                        "nonfinite", "shape") if any(k in r for r in rows)]
    parts = [md_table(rows, keys)]
    for name, s in outputs.items():
        rank = s.get("rank")
        if isinstance(rank, list) and rank:
            parts.append(f"Rank agreement of `{name}` (FP32 rank r: MAE at FP32's index, rows whose "
                         f"INT8 index at rank r differs):\n\n{md_table(rank, ['rank', 'mae', 'disagree_pct'])}")
    return "\n\n".join(parts)


def _task(task: Any) -> str:
    rows = None
    extra: Mapping[str, Any] = {}
    if isinstance(task, list) and all(isinstance(r, Mapping) for r in task):
        rows = task
    elif isinstance(task, Mapping) and isinstance(task.get("metrics"), list):
        rows = task["metrics"]
        extra = {k: v for k, v in task.items() if k != "metrics"}
    if rows is None:
        return _generic(task)
    parts = [_kv(extra)] if extra else []
    parts.append(md_table(rows, _ordered_keys(rows, ["name", "fp32", "int8", "delta", "note"])))
    return "\n\n".join(p for p in parts if p)


def _layers(layers: Any) -> str:
    if not isinstance(layers, list) or not all(isinstance(r, Mapping) for r in layers):
        return _generic(layers)
    if not layers:
        return "(none)"
    return md_table(layers, _ordered_keys(layers, ["name", "op_type", "snr_db", "noise_ratio", "cosine"]))


def _fallback(fb: Any) -> str:
    if isinstance(fb, list):
        fb = {"trials": fb}
    if not isinstance(fb, Mapping) or not isinstance(fb.get("trials", []), list):
        return _generic(fb)
    head = {k: v for k, v in fb.items() if k != "trials"}
    parts = [_kv(head)] if head else []
    trials = fb.get("trials") or []
    if trials and all(isinstance(t, Mapping) for t in trials):
        parts.append(md_table(trials, _ordered_keys(trials, ["trial", "n_fp32_layers", "metric", "passed",
                                                              "kept", "chosen", "added", "layers"])))
    elif trials:
        parts.append(_generic(trials))
    return "\n\n".join(p for p in parts if p) or "(no trials)"


def _plots(plots: Any) -> str:
    if not isinstance(plots, Mapping):
        return _generic(plots)
    return "\n\n".join(f"![{k}]({v})" for k, v in plots.items())


_RENDER = {"summary": _generic, "outputs": _outputs, "task": _task, "worst_layers": _layers,
           "fallback": _fallback, "placement": _generic, "plots": _plots}


def render_report_md(report: Mapping[str, Any]) -> str:
    """Markdown text of a quant report (sections in a fixed order, unknown keys at the end)."""
    title = report.get("title") or "xtrt quantization report"
    parts = [f"# {title}"]
    known = dict(_SECTIONS)
    top_scalars = {k: v for k, v in report.items()
                   if k not in known and k not in _SKIP and not isinstance(v, (Mapping, list))}
    for key, heading in _SECTIONS:
        if key == "summary":
            summary = {**top_scalars, **(report.get("summary") or {})} if isinstance(
                report.get("summary", {}), Mapping) else report["summary"]
            if summary:
                parts.append(f"## {heading}\n\n{_generic(summary)}")
            continue
        if key in report and report[key] is not None:
            parts.append(f"## {heading}\n\n{_RENDER[key](report[key])}")
    for key, value in report.items():
        if key not in known and key not in _SKIP and isinstance(value, (Mapping, list)):
            parts.append(f"## {key}\n\n{_generic(value)}")
    if "schema_version" in report:
        parts.append(f"<sub>report schema {report['schema_version']}</sub>")
    return "\n\n".join(parts) + "\n"
