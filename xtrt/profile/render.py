"""Plain-text rendering of a profile: stage table, latency table, top ops (pure string functions)."""
from __future__ import annotations

from typing import Sequence

from xtrt.profile.verdict import STAGES

__all__ = ["table", "stage_table", "latency_table", "top_ops_table", "workers_table",
           "render_result"]


def table(headers: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> str:
    """A fixed-width text table; ``align`` has one of 'l'/'r' per column (default: first left)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def fmt(row):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                         for c, w, a in zip(row, widths, align)).rstrip()
    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def stage_table(model, synthetic: bool) -> str:
    """Mean ms per step and share of wall time, per stage, one column pair per batch size."""
    headers = ["stage"]
    for b in model.batches:
        headers += [f"bs{b.batch} ms", "share"]
    rows = []
    for s in STAGES:
        row = [s]
        for b in model.batches:
            if synthetic and s in ("decode", "preprocess"):
                row += ["-", "-"]
            else:
                row += [f"{b.stage_ms[s]:.2f}", f"{b.verdict.shares[s]:.1%}"]
        rows.append(row)
    total = ["step (wall)"]
    for b in model.batches:
        total += [f"{b.latency_all.mean:.2f}", "100%"]
    rows.append(total)
    return table(headers, rows)


def latency_table(models) -> str:
    """Deployment-style figures per model and batch size (ms per batch, images/s)."""
    headers = ["model", "batch", "latency", "mean", "median", "p99", "min", "max", "img/s",
               "peak dev MB"]
    rows = []
    for m in models:
        for b in m.batches:
            for what, st, ips in (("all", b.latency_all, b.throughput_ips),
                                  ("model", b.latency_model, b.model_throughput_ips)):
                mem = "-" if b.peak_device_mem_mb is None else f"{b.peak_device_mem_mb:.0f}"
                rows.append([m.run_name, b.batch, f"latency-{what}", f"{st.mean:.2f}",
                             f"{st.median:.2f}", f"{st.p99:.2f}", f"{st.min:.2f}", f"{st.max:.2f}",
                             f"{ips:.1f}", mem if what == "all" else ""])
    return table(headers, rows, "lrlrrrrrrr")


def top_ops_table(batch_result, n: int = 10) -> str:
    """Top ops by self CPU + device time (ORT nodes by op type, torch ops by name)."""
    rows = []
    steps = max(1, batch_result.latency_all.count)
    for r in batch_result.top_ops[:n]:
        rows.append([r.name[:48], r.source + (f"/{r.provider}" if r.provider else ""), r.calls,
                     f"{r.self_cpu_ms:.2f}", f"{r.self_device_ms:.2f}",
                     f"{(r.self_cpu_ms + r.self_device_ms) / steps:.3f}"])
    if not rows:
        return "(no ops recorded)"
    return table(["op", "source", "calls", "self CPU ms", "self device ms", "ms/step"], rows,
                 "llrrrr")


def workers_table(rows) -> str:
    """The feed table: today's single-thread pipeline, N workers, pinned/async, GPU decode;
    images/s, gain over today, shares, GPU busy, the bound and the next bottleneck."""
    out = []
    base = rows[0].throughput_ips if rows else 0.0
    for r in rows:
        busy = "-" if r.gpu_busy_share is None else \
            f"{r.gpu_busy_share:.0%}" + ("*" if r.gpu_busy_estimated else "")
        gain = f"x{r.throughput_ips / base:.2f}" if base > 0 else "-"
        out.append([r.name, f"{r.step_ms:.2f}", f"{r.throughput_ips:.1f}", gain,
                    f"{r.input_share:.0%}", f"{r.inference_share:.0%}", busy, r.label,
                    r.biggest_stage or "-"])
    text = table(["pipeline", "step ms", "img/s", "vs today", "decode+pre (wait)", "inference",
                  "GPU busy", "bound", "biggest stage"], out, "lrrrrrrll")
    if any(r.gpu_busy_estimated for r in rows):
        text += "\n* GPU busy estimated as the (synchronised) inference share, untraced"
    return text


def render_result(result) -> str:
    """The full report printed by ``python -m xtrt.profile`` (without the final summary line)."""
    synthetic = result.inputs.get("kind") == "synthetic"
    out = [f"verdict: {result.verdict.line}"]
    for why in result.verdict.reasons:
        out.append(f"  ({why})")
    if result.models[0].workers_line:
        out.append(f"decode workers: {result.models[0].workers_line}")
    if result.models[0].feed_line:
        out.append(f"feed: {result.models[0].feed_line}")
    src = ("synthetic tensors (no --images): decode/preprocess not measured" if synthetic else
           f"{result.inputs.get('files')} photo(s) from {result.inputs.get('source')}, "
           f"preprocess: {result.inputs.get('preprocess')}")
    out.append(f"inputs: {src}")
    for note in result.notes:
        out.append(f"note: {note}")
    for m in result.models:
        out.append("")
        out.append(f"== {m.run_name}  [{m.backend}, {m.device}; postprocess: {m.postprocess}]")
        out.append(stage_table(m, synthetic))
        for b in m.batches:
            out.append(f"  bs{b.batch}: {b.verdict.label}")
        head = max(m.batches, key=lambda r: r.batch)
        if m.workers:
            out.append("")
            out.append(f"feed at batch {head.batch} (rows after today's are untraced):")
            out.append(workers_table(m.workers))
        out.append("")
        out.append(f"top ops at batch {head.batch} (summed over {head.latency_all.count} steps):")
        out.append(top_ops_table(head))
    out.append("")
    out.append("latency per batch in ms (latency-all: decode..postprocess with transfers; "
               "latency-model: inference only):")
    out.append(latency_table(result.models))
    if result.out_dir is not None:
        out.append("")
        out.append(f"traces: tensorboard --logdir {result.out_dir / 'tb'}   |   "
                   f"ui.perfetto.dev: {result.out_dir / 'trace.json'}")
        out.append(f"plots:  {result.out_dir / 'sweep.png'}, {result.out_dir / 'stages.png'}")
    return "\n".join(out)
