"""Every INT8 tool on identical data, scored by the same code: one markdown table + one PNG.

    python benchmarks/compare.py [--models effnet,yolo] [--tools xtrt-default,xtrt-best,ort-minmax,...]
        [--modelopt-python /work/venv-modelopt/bin/python] [--out benchmarks/compare.md]
        [--png benchmarks/compare.png] [--work /tmp/xtrt-bench] [--json rows.jsonl]

Data and scoring: ``benchmarks/_bench.py`` (32 calibration photos; the test part of the held-out
images; xtrt's evaluator on ONNX Runtime CPU, 'basic' optimisation for every Q/DQ model).

Tools (each given the same calibration images, preprocessed by xtrt):

* ``xtrt-default`` / ``xtrt-best`` / ``xtrt-fast``: xtrt's stages at ``quantization.effort``
  default / best / fast on the original model (seconds: prepare + calibrate + techniques + export).
* ``ort-minmax`` / ``ort-percentile``: ONNX Runtime ``quantize_static`` (QDQ, per-channel, INT8
  weights and activations, ``ActivationSymmetric``, ``QuantizeBias: False``) on xtrt's prepared
  FP32 body; ORT's Entropy is not run: with its default bins it returns exactly the MinMax scales
  (benchmarks/../shared peers.md, checked tensor by tensor on three models) at 3-14x the time.
* ``modelopt-max``: NVIDIA ModelOpt ``modelopt.onnx.quantization.quantize`` (int8, max,
  ``high_precision_dtype=fp32``, CPU calibration EP) in its own venv (``--modelopt-python``)
  on the same body, through ``modelopt_compare.run_modelopt``.

Bodies quantized by other tools get the original detection tail re-attached
(``modelopt_compare.with_tail``) so every model is scored end to end.  Columns: calibrate+export
seconds, fidelity, compute layers left in float, Q/DQ node count, xtrt.lint findings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402

XTRT = {"xtrt-fast": ["quantization.effort=fast"],
        "xtrt-default": ["quantization.effort=default"],
        "xtrt-best": ["quantization.effort=best"]}
LABELS = {"xtrt-fast": "xtrt effort fast", "xtrt-default": "xtrt default",
          "xtrt-fast=default": "xtrt fast = default (minmax)",
          "xtrt-percentile": "xtrt percentile (rejected default)",
          "xtrt-best": "xtrt effort best (minmax + LSQ 20)",
          "xtrt-pt+lsq20": "xtrt per-tensor + LSQ 20 (rejected best)", "ort-minmax": "ORT quantize_static MinMax",
          "ort-percentile": "ORT quantize_static Percentile", "modelopt-max": "ModelOpt int8 max"}


class _Reader:
    """onnxruntime CalibrationDataReader over pre-computed feeds."""

    def __init__(self, feeds):
        self.feeds, self.i = list(feeds), 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0


def ort_quantize(body_path: Path, out: Path, feeds, method: str) -> float:
    """ONNX Runtime quantize_static, TensorRT-style settings; returns seconds."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    t0 = time.perf_counter()
    quantize_static(str(body_path), str(out), _Reader(feeds), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax,
                                      "percentile": CalibrationMethod.Percentile}[method],
                    extra_options={"ActivationSymmetric": True, "QuantizeBias": False})
    return time.perf_counter() - t0


def run_tool(tool: str, bench, work: Path, ctx: dict, modelopt_python: str | None):
    """(model, seconds, note) for one tool on ``bench``."""
    import numpy as np
    import onnx

    from modelopt_compare import run_modelopt, with_tail
    from techniques import run_variant

    if tool in XTRT:
        qmodel, info = run_variant(bench, XTRT[tool])
        return qmodel, info["seconds"], info["cpu_s"], info
    prepared = ctx["prepared"]
    if tool.startswith("ort-"):
        out = work / f"{bench.key}_{tool}.onnx"
        c0 = time.process_time()
        secs = ort_quantize(ctx["body_path"], out, ctx["feeds"], tool.split("-", 1)[1])
        cpu = time.process_time() - c0
        return with_tail(onnx.load(str(out)), prepared), secs, cpu, {}
    if tool == "modelopt-max":
        if not modelopt_python or not Path(modelopt_python).is_file():
            raise FileNotFoundError(f"no ModelOpt python at {modelopt_python}")
        calib = work / f"{bench.key}_calib.npy"
        if not calib.exists():
            np.save(calib, np.concatenate([f[prepared.input_name] for f in ctx["feeds"]]))
        out = work / f"{bench.key}_modelopt_max.onnx"
        secs = run_modelopt(modelopt_python, ctx["body_path"], calib, out)
        return with_tail(onnx.load(str(out)), prepared), secs, None, {}
    raise ValueError(f"unknown tool {tool!r}")


def lint_counts(model) -> dict:
    from xtrt.lint.qdq import lint_qdq, summarize

    s = summarize(lint_qdq(model))
    return {"lint_errors": s["error"], "lint_warnings": s["warning"]}


def render(rows: Sequence[dict]) -> str:
    out = ["| model | tool | calibrate+export s (wall) | CPU s | fidelity vs FP32 (test part) | "
           "compute layers in float | Q/DQ nodes | lint errors / warnings |",
           "|---|---|---:|---:|---|---|---:|---|"]
    for r in rows:
        cpu = "-" if r.get("cpu_s") is None else f"{r['cpu_s']:.1f}"
        out.append(f"| {r['model']} | {LABELS.get(r['tool'], r['tool'])} | {r['seconds']:.1f} | "
                   f"{cpu} | {_bench.fidelity_text(r['test'])} | "
                   f"{r['float_layers']}/{r['compute']} | {r['qdq_nodes']} | "
                   f"{r['lint_errors']} / {r['lint_warnings']} |")
    return "\n".join(out)


def plot(rows: Sequence[dict], path: Path) -> None:
    """Fidelity vs seconds, one panel per model, one marker per tool."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = list(dict.fromkeys(r["model"] for r in rows))
    markers = dict(zip(LABELS, "o*o*PPsD^"))
    colors = dict(zip(LABELS, plt.cm.tab10.colors))
    fig, axes = plt.subplots(1, len(models), figsize=(6.4 * len(models), 5.6), squeeze=False)
    for ax, m in zip(axes[0], models):
        for r in [r for r in rows if r["model"] == m]:
            t = r["test"]
            y = t.get("top1", t.get("map50_95"))
            if y is None:
                continue
            ax.scatter(r["seconds"], 100 * y, s=110, marker=markers.get(r["tool"], "o"),
                       color=colors.get(r["tool"]),
                       label=f"{LABELS.get(r['tool'], r['tool'])}: {100 * y:.1f}, "
                             f"{r['seconds']:.0f} s", zorder=3)
        first = next(r["test"] for r in rows if r["model"] == m)
        if "top1" in first:
            what = f"top-1 agreement with FP32 % ({first['total']} test images)"
        else:
            what = f"mAP50-95 vs FP32 x100 ({first['reference_boxes']} FP32 boxes)"
        ax.set_xscale("log")
        secs = [r["seconds"] for r in rows if r["model"] == m]
        ticks = [t for t in (2, 5, 10, 20, 50, 100, 200, 500, 1000)
                 if min(secs) / 2 <= t <= max(secs) * 2]
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlim(min(secs) / 1.5, max(secs) * 1.5)
        ax.set_xlabel("calibrate + export seconds (2 shared CPU cores, log scale)")
        ax.set_ylabel(what)
        ax.set_title(f"{m}: higher and further left is better")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
                  frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    import onnx

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="effnet,yolo")
    p.add_argument("--tools", default="xtrt-default,xtrt-best,ort-minmax,ort-percentile,"
                                      "modelopt-max")
    p.add_argument("--modelopt-python", default="/work/venv-modelopt/bin/python")
    p.add_argument("--work", default="/tmp/xtrt-bench")
    p.add_argument("--out", default=str(Path(__file__).with_name("compare.md")))
    p.add_argument("--png", default=str(Path(__file__).with_name("compare.png")))
    p.add_argument("--json", help="append rows to this JSON-lines file as they finish")
    p.add_argument("--render", nargs="+", metavar="JSONL",
                   help="run nothing: write the table and PNG from rows of earlier --json runs")
    a = p.parse_args(argv)
    work = Path(a.work)
    rows, notes = [], []
    if a.render:
        rows = [json.loads(ln) for f in a.render for ln in Path(f).read_text().splitlines()
                if ln.strip()]
        return _write(rows, notes, a)
    for m in [x.strip() for x in a.models.split(",") if x.strip()]:
        bench = _bench.load_bench(m, work)
        cfg = bench.config()
        prepared, _ = _bench.prepare(bench, cfg)
        body_path = work / f"{m}_body.onnx"
        onnx.save(prepared.body, str(body_path))
        feeds = [b.feeds for b in _bench.batches(bench, cfg, prepared, bench.cal,
                                                 bench.shape[0])]
        ctx = {"prepared": prepared, "body_path": body_path, "feeds": feeds}
        test_ev = _bench.evaluator(bench, bench.test, "test")
        print(f"{bench.label}: {len(bench.cal)} calibration, {len(bench.test)} test images",
              file=sys.stderr, flush=True)
        for tool in [x.strip() for x in a.tools.split(",") if x.strip()]:
            try:
                model, secs, cpu, info = run_tool(tool, bench, work, ctx, a.modelopt_python)
            except (FileNotFoundError, SystemExit) as exc:
                notes.append(f"{bench.label} / {tool}: not run ({exc})")
                print(notes[-1], file=sys.stderr, flush=True)
                continue
            row = {"model": bench.label, "tool": tool, "seconds": round(secs, 1),
                   "cpu_s": None if cpu is None else round(cpu, 1),
                   "test": _bench.score(test_ev, model), **_bench.qdq_stats(model),
                   **lint_counts(model), "info": info,
                   "images": {"calibration": len(bench.cal), "test": len(bench.test)}}
            rows.append(row)
            print(render([row]).splitlines()[-1], file=sys.stderr, flush=True)
            if a.json:
                with open(a.json, "a") as fh:
                    fh.write(json.dumps(row, default=str) + "\n")
        test_ev.close()
    return _write(rows, notes, a)


def _write(rows, notes, a) -> int:
    table = render(rows)
    imgs = {r["model"]: r.get("images", {}) for r in rows}
    data = "; ".join(f"{m}: {i.get('calibration')} calibration, {i.get('test')} test images"
                     for m, i in imgs.items())
    Path(a.out).write_text(
        "# INT8 tools compared (generated by benchmarks/compare.py)\n\n"
        f"Identical images for every tool ({data}); every model scored by xtrt's evaluator on "
        "ONNX Runtime CPU against the FP32 model.  Seconds: wall time on 2 CPU cores shared "
        "with other jobs (inflated); CPU s: the process's CPU time (ModelOpt runs in a "
        "subprocess: wall time of its quantize() only).  Float layers: Conv/Gemm/MatMul "
        "without a DequantizeLinear input.  Lint: xtrt.lint.qdq.lint_qdq.\n\n"
        f"![fidelity vs seconds]({Path(a.png).name})\n\n"
        + table + "\n" + "".join(f"\n- {n}" for n in notes) + "\n")
    if rows:
        plot(rows, Path(a.png))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
