"""Plain-text table rendering."""
from __future__ import annotations

import math

from xtrt.report.table import render_table


def test_render_table_alignment_and_missing():
    rows = [{"name": "logits", "sqnr": 31.234, "n": 10},
            {"name": "boxes", "sqnr": math.inf},
            {"name": "scores", "sqnr": None, "n": 7}]
    text = render_table(rows, [("name", "Output", None), ("sqnr", "SQNR dB", ".1f"), ("n", "N", "d")],
                        title="Outputs")
    assert text.splitlines() == [
        "Outputs",
        "Output  SQNR dB   N",
        "------  -------  --",
        "logits     31.2  10",
        "boxes       inf   -",
        "scores        -   7",
    ]


def test_render_table_empty_callable_and_long():
    text = render_table([], [("a", "A", None)])
    assert text.splitlines() == ["A", "-", "(no rows)"]
    long = "x" * 30 + "y" * 40
    text = render_table([{"a": long, "b": 0.5}], [("a", "A", None), ("b", "B", lambda v: f"{v:.0%}")],
                        max_width=20)
    assert "xxxxxxxxx...yyyyyyyy" in text and text.endswith("50%")
