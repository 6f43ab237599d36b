"""The README.md written into every run folder: what each file is and how to open it."""
from __future__ import annotations

__all__ = ["run_readme", "HOW_TO_OPEN"]

HOW_TO_OPEN = """\
## How to open the results

| file | what | open with |
|---|---|---|
| `tb/` | one TensorBoard run per model, one worker per batch size (`bs8` ...) | `pip install torch-tb-profiler` then `tensorboard --logdir tb` and open the **PYTORCH_PROFILER** tab; pick the run and the worker. The stages (`decode`, `preprocess`, `h2d`, `inference`, `d2h`, `postprocess`) are listed in the Operator view and drawn as ranges in the Trace view. |
| `trace.json` | Chrome trace of the headline batch (a copy of one `tb/` file) | drag it into <https://ui.perfetto.dev> (or `chrome://tracing`). torch-tb-profiler is deprecated upstream; Perfetto opens every `tb/*.pt.trace.json` too. |
| `ort/*.json` | ONNX Runtime's own per-node profile (`--backend ort`) | <https://ui.perfetto.dev>; its op-type totals are in `profile.json` (`top_ops`, source `ort`). |
| `profile.json` | all figures, versioned (`schema_version`) | any JSON reader; `python -m json.tool profile.json` |
| `sweep.png` | throughput (images/s) and latency (median, bar to p99) vs batch size | an image viewer |
| `stages.png` | mean time per stage for every batch size | an image viewer |
"""


def run_readme(result, head) -> str:
    v = result.verdict
    lines = [f"# xtrt profile: {' vs '.join(m.run_name for m in result.models)}", "",
             f"**Verdict:** {v.line}", ""]
    lines += [f"- {why}" for why in v.reasons]
    lines += [f"- inputs: {result.inputs.get('kind')}"]
    lines += [f"- note: {n}" for n in result.notes]
    lines += ["", "| model | batch | latency-all median ms | latency-model median ms | img/s |",
              "|---|---:|---:|---:|---:|"]
    for m in result.models:
        for b in m.batches:
            lines.append(f"| {m.run_name} | {b.batch} | {b.latency_all.median:.2f} | "
                         f"{b.latency_model.median:.2f} | {b.throughput_ips:.1f} |")
    lines += ["", HOW_TO_OPEN]
    return "\n".join(lines)
