"""PNG plots of results computed elsewhere (matplotlib, Agg canvas, no pyplot state).

Figures are built with :class:`matplotlib.figure.Figure` on a ``FigureCanvasAgg``: nothing
touches pyplot's global figure list or switches the user's backend, so the functions are safe to
call from a notebook or a thread. Every file is written to a temporary name and renamed, and
every function returns the path it wrote. matplotlib is imported inside the functions.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xtrt.report.files import atomic_path

__all__ = ["plot_layer_snr", "plot_activation_scatter", "plot_fallback_tradeoff", "plot_batch_sweep"]

_DPI = 110


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight")
    return Path(path)


def _no_data(path: str | os.PathLike, title: str) -> Path:
    fig = _figure(6, 2)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=14, color="grey")
    return _save(fig, path)


def _short(name: str, width: int = 48) -> str:
    if len(name) <= width:
        return name
    keep = width - 1
    return name[: keep - keep // 2] + "\u2026" + name[len(name) - keep // 2:]


def _op_colors(op_types: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    kinds = sorted(set(op_types))
    cmap = matplotlib.colormaps["tab10" if len(kinds) <= 10 else "tab20"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(kinds)}


def plot_layer_snr(layers: Sequence[Mapping[str, Any]], path: str | os.PathLike, top: int = 40,
                   metric: str | None = None, title: str | None = None) -> Path:
    """Horizontal bars of the ``top`` worst layers, worst at the top, coloured by op type.

    Args:
        layers: dicts with ``name``, ``op_type`` and the metric: ``snr_db`` (higher is better) or
            ``noise_ratio`` (PPQ's noise/signal, lower is better).
        metric: ``"snr_db"`` or ``"noise_ratio"``; default: ``snr_db`` if any layer has it.
    """
    if metric is None:
        metric = "snr_db" if any("snr_db" in r for r in layers) else "noise_ratio"
    rows = [r for r in layers if r.get(metric) is not None and not math.isnan(float(r[metric]))]
    label = {"snr_db": "SNR vs FP32 (dB), higher is better",
             "noise_ratio": "noise / signal, lower is better"}.get(metric, metric)
    if not rows:
        return _no_data(path, title or f"Layers by {label}")
    worst_first = sorted(rows, key=lambda r: float(r[metric]), reverse=(metric != "snr_db"))[:top]
    values = np.array([float(r[metric]) for r in worst_first])
    finite = values[np.isfinite(values)]
    cap = float(finite.max()) if finite.size else 1.0
    shown = np.where(np.isfinite(values), values, cap)
    ops = [str(r.get("op_type", "?")) for r in worst_first]
    colors = _op_colors(ops)

    from matplotlib.patches import Patch

    n = len(worst_first)
    fig = _figure(10, 1.4 + 0.26 * n)
    ax = fig.add_subplot()
    y = np.arange(n)
    ax.barh(y, shown, color=[colors[o] for o in ops], height=0.75)
    ax.set_yticks(y, [_short(str(r.get("name", "?"))) for r in worst_first], fontsize=8)
    ax.set_ylim(n - 0.4, -0.6)  # worst on top, no empty band above or below
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)
    log_x = metric != "snr_db" and bool(np.all(shown > 0)) and float(shown.max() / shown.min()) > 50
    for yi, v, s in zip(y, values, shown):
        text = "inf" if math.isinf(v) else (f"{v:.1f}" if metric == "snr_db" else f"{v:.3g}")
        ax.annotate(text, (s, yi), xytext=(3 if s >= 0 else -3, 0), textcoords="offset points",
                    va="center", ha="left" if s >= 0 else "right", fontsize=7)
    if log_x:  # noise ratios span decades: one bad layer would flatten all the others
        ax.set_xscale("log")
        ax.set_xlim(float(shown.min()) / 2, float(shown.max()) * 3)
        ax.set_xlabel(label + " (log scale)")
    else:
        span = float(np.ptp(shown)) or abs(cap) or 1.0
        ax.set_xlim(min(0.0, float(shown.min()) - 0.08 * span), max(0.0, float(shown.max())) + 0.08 * span)
    ax.set_title(title or f"Worst {n} of {len(layers)} layers by {label.split(',')[0]}")
    ax.legend(handles=[Patch(color=c, label=k) for k, c in colors.items()], title="op type",
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=8, frameon=False)
    return _save(fig, path)


def plot_activation_scatter(ref: np.ndarray, test: np.ndarray, name: str, path: str | os.PathLike,
                            max_points: int = 20000, sqnr_db: float | None = None) -> Path:
    """Scatter of INT8 against FP32 values of one tensor, with the y = x line.

    At most ``max_points`` element pairs are drawn, picked at random with a fixed seed;
    non-finite pairs are left out. ``sqnr_db``, if given, is shown in the title.
    """
    r = np.asarray(ref, dtype=np.float64).ravel()
    t = np.asarray(test, dtype=np.float64).ravel()
    if r.shape != t.shape:
        raise ValueError(f"scatter of {name}: {r.size} FP32 values vs {t.size} INT8 values")
    keep = np.isfinite(r) & np.isfinite(t)
    r, t = r[keep], t[keep]
    total = r.size
    if total > max_points:
        idx = np.random.default_rng(0).choice(total, size=max_points, replace=False)
        r, t = r[idx], t[idx]
    title = f"{name}: INT8 vs FP32"
    if r.size == 0:
        return _no_data(path, title)
    fig = _figure(6, 8.4)
    ax, ax_e = fig.subplots(2, 1, height_ratios=[3, 1.25], sharex=True)
    ax.scatter(r, t, s=3, alpha=0.35, color="tab:blue", edgecolors="none", rasterized=True)
    lo, hi = float(min(r.min(), t.min())), float(max(r.max(), t.max()))
    pad = 0.03 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="tab:red", lw=1, label="y = x", zorder=3)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_ylabel("INT8 value")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", frameon=False)
    sub = f"{r.size:,} of {total:,} values" if r.size < total else f"{total:,} values"
    if sqnr_db is not None:
        sub += ", SQNR " + ("inf" if math.isinf(sqnr_db) else f"{sqnr_db:.1f}") + " dB"
    ax.set_title(f"{_short(title, 60)}\n{sub}", fontsize=10)
    # the error panel shows what the scatter hides at this scale: rounding steps and clipping
    ax_e.scatter(r, t - r, s=3, alpha=0.35, color="tab:purple", edgecolors="none", rasterized=True)
    ax_e.axhline(0.0, color="tab:red", lw=1)
    ax_e.set_xlabel("FP32 value")
    ax_e.set_ylabel("INT8 \u2212 FP32")
    ax_e.grid(alpha=0.3)
    return _save(fig, path)


def plot_fallback_tradeoff(trials: Sequence[Mapping[str, Any]], metric_name: str, target: float | None,
                           path: str | os.PathLike, chosen: int | None = None) -> Path:
    """Task metric against the number of layers kept in FP32, one point per fallback trial.

    Trials are dicts with ``n_fp32_layers`` and ``metric`` (trials whose metric is None are left
    out); optional ``passed`` (bool: drawn green/grey) and ``chosen`` (bool: drawn as a star).
    ``chosen``, the argument, marks ``trials[chosen]`` instead (as ``FallbackResult.chosen``).
    ``target`` is drawn as a dashed line.
    """
    if chosen is not None and 0 <= chosen < len(trials):
        trials = [dict(t, chosen=(i == chosen)) for i, t in enumerate(trials)]
    rows = sorted((t for t in trials if t.get("metric") is not None and t.get("n_fp32_layers") is not None),
                  key=lambda t: t["n_fp32_layers"])
    title = f"Fallback: {metric_name} vs layers kept in float"
    if not rows:
        return _no_data(path, title)
    from matplotlib.ticker import MaxNLocator

    x = np.array([float(t["n_fp32_layers"]) for t in rows])
    y = np.array([float(t["metric"]) for t in rows])
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    kept = np.array([t.get("kept", True) is not False for t in rows])
    best: dict[float, int] = {}          # the curve: per layer count, the best kept trial
    for i, (xi, yi) in enumerate(zip(x, y)):
        if kept[i] and (xi not in best or yi > y[best[xi]]):
            best[xi] = i
    line = sorted(best.values(), key=lambda i: x[i])
    ax.plot(x[line], y[line], color="0.6", lw=1, zorder=1)       # the trade-off curve
    passed = [t.get("passed") for t in rows]
    colors = np.array(["tab:green" if p else ("0.45" if p is False else "tab:blue") for p in passed])
    ax.scatter(x[kept], y[kept], c=colors[kept], s=36, zorder=2)
    if (~kept).any():
        ax.scatter(x[~kept], y[~kept], marker="x", c="tab:red", s=36, zorder=2,
                   label="tried, no gain: back to INT8")
    if any(p is True for p in passed):
        ax.scatter([], [], c="tab:green", s=36, label="meets target")
    if any(p is False for p in passed):
        ax.scatter([], [], c="0.45", s=36, label="below target")
    tests = [(x[i], float(rows[i]["test_metric"])) for i in line
             if rows[i].get("test_metric") is not None]
    if tests:                      # the curve's trials on the test images (nothing chosen on them)
        tx, ty = zip(*tests)
        ax.plot(tx, ty, color="tab:purple", lw=1, ls=":", marker="s", mfc="none", ms=6,
                zorder=2, label="the same trials on the test images")
    star = [(xi, yi) for xi, yi, t in zip(x, y, rows) if t.get("chosen")]
    if star:
        ax.scatter(*zip(*star), marker="*", s=260, facecolors="none", edgecolors="tab:orange",
                   linewidths=1.6, zorder=3, label="chosen")
    if target is not None:
        ax.axhline(float(target), color="tab:red", ls="--", lw=1, label=f"target {float(target):.4g}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layers kept in float (export.float_precision)")
    ax.set_ylabel(metric_name + (" (dots: selection images, the search's)" if tests else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=9)
    return _save(fig, path)


def plot_batch_sweep(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                     title: str | None = None, throughput_unit: str = "images/s") -> Path:
    """Throughput (left panel) and latency (right panel) against batch size.

    Rows are dicts with ``batch`` and ``throughput``; every key starting with ``latency`` (for
    example ``latency_ms``, ``latency_p50_ms``, ``latency_p99_ms``) becomes one latency line.
    """
    rows = sorted((r for r in rows if r.get("batch") is not None), key=lambda r: r["batch"])
    title = title or "Batch sweep"
    if not rows:
        return _no_data(path, title)
    batches = [int(r["batch"]) for r in rows]
    fig = _figure(11, 4.2)
    ax_t, ax_l = fig.subplots(1, 2)
    tp = [(b, float(r["throughput"])) for b, r in zip(batches, rows) if r.get("throughput") is not None]
    if tp:
        ax_t.plot(*zip(*tp), marker="o", color="tab:blue")
        for b, v in tp:
            ax_t.annotate(f"{v:.0f}", (b, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax_t.set_ylim(0, max(v for _, v in tp) * 1.15)
    ax_t.set_ylabel(f"throughput ({throughput_unit})")
    ax_t.set_title("Throughput")
    lat_keys = sorted({k for r in rows for k in r if k.startswith("latency")})
    for i, k in enumerate(lat_keys):
        pts = [(b, float(r[k])) for b, r in zip(batches, rows) if r.get(k) is not None]
        if pts:
            ax_l.plot(*zip(*pts), marker="os^dv"[i % 5], label=k.removesuffix("_ms").replace("_", " "))
    ax_l.set_ylabel("latency (ms)")
    ax_l.set_title("Latency")
    ax_l.set_ylim(bottom=0)
    if lat_keys:
        ax_l.legend(fontsize=9, loc="upper left")
    for ax in (ax_t, ax_l):
        if len(set(batches)) > 1 and min(batches) > 0:
            ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)
