"""Plain-text aligned tables for terminals (no dependencies).

Example::

    print(render_table(rows, [("name", "Output", None), ("sqnr_db", "SQNR dB", ".1f")], title="Outputs"))

    Outputs
    Output   SQNR dB
    -------  -------
    logits      31.2
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["Column", "format_cell", "render_table"]

#: (key in the row dict, column header, format): the format is a format spec such as ".2f" or
#: "d", a callable value -> str, or None for ``str()`` (floats get 4 significant digits).
Column = tuple[str, str, "str | Callable[[Any], str] | None"]

MISSING = "-"


def format_cell(value: Any, fmt: str | Callable[[Any], str] | None = None) -> str:
    """One cell as text: None -> "-", inf -> "inf", nan -> "nan", else ``fmt`` applied."""
    if value is None:
        return MISSING
    if callable(fmt):
        return str(fmt(value))
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if fmt:
        try:
            return format(value, fmt)
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_cell(v) for v in value)
    return str(value)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) or type(v).__module__ == "numpy"


def render_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], title: str | None = None,
                 max_width: int = 60) -> str:
    """Render ``rows`` as an aligned text table.

    Numeric columns (every present value a number) are right-aligned, others left-aligned; a
    missing key or None shows "-"; cells longer than ``max_width`` are cut in the middle with
    "...". Returns the table without a trailing newline; "(no rows)" under the header when empty.
    """
    headers = [h for _, h, _ in columns]
    cells = [[_clip(format_cell(r.get(k), f), max_width) for k, _, f in columns] for r in rows]
    numeric = [all(_is_number(r.get(k)) for r in rows if r.get(k) is not None) and
               any(r.get(k) is not None for r in rows) for k, _, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out.append(line(headers))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(c) for c in cells)
    if not rows:
        out.append("(no rows)")
    return "\n".join(out)


def _clip(text: str, width: int) -> str:
    if len(text) <= width or width < 5:
        return text
    keep = width - 3
    return text[: (keep + 1) // 2] + "..." + text[len(text) - keep // 2:]
