"""PNG plots of a profile (matplotlib, Agg backend): batch sweep and stage breakdown."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from xtrt.profile.verdict import STAGES

__all__ = ["plot_sweep", "plot_stages"]

_COLORS = {"decode": "#8c564b", "preprocess": "#ff7f0e", "h2d": "#bcbd22", "inference": "#1f77b4",
           "d2h": "#17becf", "postprocess": "#2ca02c"}


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, plt.subplots(*args, **kwargs)


def _save(plt, fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_sweep(models: Sequence, path: Path, title: str) -> Path:
    """Throughput (images/s) and latency per batch (median, p99 bar) against batch size."""
    plt, (fig, (ax_t, ax_l)) = _figure(1, 2, figsize=(11, 4.2))
    for i, m in enumerate(models):
        bs = [b.batch for b in m.batches]
        color = f"C{i}"
        ax_t.plot(bs, [b.throughput_ips for b in m.batches], "o-", color=color,
                  label=f"{m.run_name}: pipeline")
        ax_t.plot(bs, [b.model_throughput_ips for b in m.batches], "s--", color=color, alpha=0.6,
                  label=f"{m.run_name}: inference only")
        for key, style, what in (("latency_all", "o-", "latency-all"),
                                 ("latency_model", "s--", "latency-model")):
            med = [getattr(b, key).median for b in m.batches]
            p99 = [getattr(b, key).p99 for b in m.batches]
            err = [[0] * len(med), [max(0.0, p - q) for p, q in zip(p99, med)]]
            ax_l.errorbar(bs, med, yerr=err, fmt=style, color=color, capsize=3,
                          alpha=1.0 if key == "latency_all" else 0.6,
                          label=f"{m.run_name}: {what}")
    for ax, ylabel, t in ((ax_t, "images / s", "Throughput"),
                          (ax_l, "ms per batch (median; bar to p99)", "Latency")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(t)
        ax.grid(True, alpha=0.3)
        allb = sorted({b.batch for m in models for b in m.batches})
        ax.set_xticks(allb)
        ax.set_xticklabels([str(b) for b in allb])
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(plt, fig, path)


def plot_stages(models: Sequence, path: Path, title: str) -> Path:
    """Stacked bars: mean ms per stage, one bar per (model, batch size)."""
    labels, rows = [], []
    for m in models:
        for b in m.batches:
            labels.append(f"{m.run_name}\nbatch {b.batch}" if len(models) > 1 else f"batch {b.batch}")
            rows.append(b.stage_ms)
    plt, (fig, ax) = _figure(figsize=(max(6.0, 1.3 * len(labels) + 3), 4.2))
    bottom = [0.0] * len(rows)
    for s in STAGES:
        vals = [r.get(s, 0.0) for r in rows]
        if not any(vals):
            continue
        ax.bar(labels, vals, bottom=bottom, color=_COLORS[s], label=s)
        bottom = [a + v for a, v in zip(bottom, vals)]
    ax.set_ylabel("ms per batch (mean)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(plt, fig, path)
