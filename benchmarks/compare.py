"""Every INT8 tool on identical data, scored by the same code: one markdown table + one PNG.

    python benchmarks/compare.py [--models effnet,yolo] [--tools xtrt-default,xtrt-best,ort-minmax,...]
        [--modelopt-python /work/venv-modelopt/bin/python] [--out benchmarks/compare.md]
        [--png benchmarks/compare.png] [--work /tmp/xtrt-bench] [--json rows.jsonl]

Data and scoring: ``benchmarks/_bench.py`` (32 calibration photos; the test part of the held-out
images; xtrt's evaluator on ONNX Runtime CPU, 'basic' optimisation for every Q/DQ model, with ORT's
``WeightBiasQuantization`` pass off: ``xtrt.runtime.session.BASIC_DISABLED``).

Tools (each given the same calibration images, preprocessed by xtrt):

* ``xtrt-default`` / ``xtrt-best`` / ``xtrt-fast``: xtrt's stages at ``quantization.effort``
  default / best / fast on the original model (seconds: prepare + calibrate + techniques + export).
* ``ort-minmax`` / ``ort-entropy`` / ``ort-percentile``: ONNX Runtime ``quantize_static`` (QDQ,
  per-channel, INT8 weights and activations, ``ActivationSymmetric``, ``QuantizeBias: False``) on
  xtrt's prepared FP32 body.  With its default bins Entropy returns the MinMax scales (shared
  peers.md) at 3-14x the time.  Entropy and Percentile keep every intermediate tensor of every
  calibration image in RAM: ``--max-rss-gib`` stops such a run at a resident-memory cap and the
  row says so (the same images for every tool: fewer images is not an option).
* ``modelopt-max`` / ``modelopt-entropy`` (``-fp16``): NVIDIA ModelOpt
  ``modelopt.onnx.quantization.quantize`` (int8, ``high_precision_dtype`` fp32 or fp16, CPU
  calibration EP) in its own venv (``--modelopt-python``) on the same body, through
  :func:`run_modelopt`.
* ``ppq-trt``: PPQ 0.6.6 ``quantize_onnx_model`` on TRT_INT8 with its default setting.

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
          "xtrt-best": "xtrt effort best (auto + LSQ 20)",
          "xtrt-best-s5": "xtrt effort best of session 5 (minmax + LSQ 20)",
          "xtrt-pt+lsq20": "xtrt per-tensor + LSQ 20 (rejected best)",
          "ort-minmax": "ORT quantize_static MinMax", "ort-entropy": "ORT quantize_static Entropy",
          "ort-percentile": "ORT quantize_static Percentile",
          "modelopt-max": "ModelOpt int8 max, fp32", "modelopt-max-fp16": "ModelOpt int8 max, fp16",
          "modelopt-entropy": "ModelOpt int8 entropy, fp32",
          "modelopt-entropy-fp16": "ModelOpt int8 entropy, fp16",
          "ppq-trt": "PPQ 0.6.6 TRT_INT8 default"}
#: the run's order: every model through the cheap tools first, then the slow ones
CHEAP = "xtrt-default,ort-minmax,modelopt-max,modelopt-max-fp16,ppq-trt"
SLOW = "xtrt-best,ort-percentile,ort-entropy,modelopt-entropy,modelopt-entropy-fp16"


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


def _rss_gib() -> float:
    """This process's resident memory, GiB (Linux /proc)."""
    import os

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


class RssCap:
    """Raise MemoryError in this process once its resident memory passes ``gib`` (checked every
    0.2 s by a thread; raised between Python statements, e.g. between ORT's calibration runs, which
    collect every intermediate tensor of every image in Python lists).  ``peak``: the highest RSS
    seen, GiB; ``progress()`` (optional) says how far the run got, for the error."""

    def __init__(self, gib: float | None, progress=None):
        self.gib, self.start, self.fired, self._stop = gib, _rss_gib(), False, None
        self.peak, self.progress, self.t0 = self.start, progress, time.perf_counter()

    def _fire(self, *_):
        done = f" after {self.progress()}" if self.progress else ""
        raise MemoryError(f"resident memory passed the {self.gib:g} GiB cap{done}, "
                          f"{time.perf_counter() - self.t0:.0f} s in ({self.start:.1f} GiB before, "
                          f"peak {self.peak:.2f} GiB)")

    def _watch(self):
        import os
        import signal

        while not self._stop.wait(0.2):
            self.peak = max(self.peak, _rss_gib())
            if self.gib and self.peak > self.gib and not self.fired:
                self.fired = True
                os.kill(os.getpid(), signal.SIGUSR1)

    def __enter__(self):
        import signal
        import threading

        self.old = signal.signal(signal.SIGUSR1, self._fire)
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def __exit__(self, *exc):
        import signal

        self._stop.set()
        signal.signal(signal.SIGUSR1, self.old)


def ort_quantize(body_path: Path, out: Path, feeds, method: str,
                 max_rss_gib: float | None = None) -> tuple[float, float]:
    """ONNX Runtime quantize_static, TensorRT-style settings, under a resident-memory cap
    (:class:`RssCap`); returns (seconds, peak resident GiB of this process)."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    reader = _Reader(feeds)
    cap = RssCap(max_rss_gib, lambda: f"{reader.i}/{len(reader.feeds)} calibration batches read")
    t0 = time.perf_counter()
    with cap:
        quantize_static(str(body_path), str(out), reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method={"minmax": CalibrationMethod.MinMax,
                                          "entropy": CalibrationMethod.Entropy,
                                          "percentile": CalibrationMethod.Percentile}[method],
                        extra_options={"ActivationSymmetric": True, "QuantizeBias": False})
    return time.perf_counter() - t0, cap.peak


def _modelopt_worker(body: str, calib: str, out: str, method: str, hp: str) -> None:
    """Runs in ModelOpt's own venv (imports nothing from xtrt)."""
    import numpy as np
    from modelopt.onnx.quantization import quantize

    t0 = time.perf_counter()
    quantize(onnx_path=body, quantize_mode="int8", calibration_data=np.load(calib),
             calibration_method=method, calibration_eps=["cpu"], high_precision_dtype=hp,
             output_path=out, log_level="WARNING")
    print(f"modelopt_seconds {time.perf_counter() - t0:.2f}")


def run_modelopt(python: str, body: Path, calib: Path, out: Path, method: str, hp: str,
                 timeout: float) -> tuple[float, float]:
    """ModelOpt in the interpreter ``python``; (quantize() seconds, subprocess CPU seconds)."""
    import resource
    import subprocess

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run([python, str(Path(__file__).resolve()), "_modelopt", str(body),
                               str(calib), str(out), method, hp], capture_output=True, text=True,
                              cwd=str(out.parent), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"stopped after {timeout:.0f} s") from None
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or not out.is_file():
        last = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise RuntimeError(f"ModelOpt exit {proc.returncode}: {last[-1][:160] if last else ''}")
    secs = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("modelopt_seconds")]
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return (float(secs[-1]) if secs else float("nan")), cpu


def ppq_trt_default(body_path: Path, out: Path, feeds, shape, input_name: str) -> None:
    """PPQ 0.6.6 as its TensorRT sample runs it: ``quantize_onnx_model`` on TRT_INT8 with
    ``trt_setting()`` (the default setting), written by PPQ's own TensorRT Q/DQ exporter.
    (PPQ is imported behind xtrt's compatibility shim, as xtrt.backend.ppq does.)"""
    import torch

    from xtrt.backend import _ppq_compat

    _ppq_compat.install()
    from xtrt.backend.ppq import _quiet, _torch_threads
    # the torch thread setting xtrt's own PPQ runs get (half the cores: see _torch_threads)
    with _quiet(progress=False), _torch_threads("cpu"):
        from ppq.api import quantize_onnx_model
        from ppq.api.setting import QuantizationSettingFactory
        from ppq.core import TargetPlatform
        from ppq.parser.tensorRT import TensorRTExporter_QDQ

        data = [torch.from_numpy(f[input_name]) for f in feeds]
        graph = quantize_onnx_model(onnx_import_file=str(body_path), calib_dataloader=data,
                                    calib_steps=len(data), input_shape=list(shape),
                                    platform=TargetPlatform.TRT_INT8,
                                    setting=QuantizationSettingFactory.trt_setting(),
                                    collate_fn=lambda x: x.to("cpu"), device="cpu", verbose=0)
        TensorRTExporter_QDQ().export(str(out), graph)
    _free_batch(out, body_path)


def _free_batch(path: Path, body_path: Path) -> None:
    """PPQ writes the calibration batch size into the graph's inputs and outputs; give the batch
    dimension back its symbolic name where xtrt's body has one (so any batch size runs)."""
    import onnx

    body = onnx.load(str(body_path), load_external_data=False)
    d0 = body.graph.input[0].type.tensor_type.shape.dim[0]
    if not d0.dim_param:
        return
    m = onnx.load(str(path))
    for v in list(m.graph.input) + list(m.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = d0.dim_param
    del m.graph.value_info[:]
    onnx.save(m, str(path))


def run_tool(tool: str, bench, work: Path, ctx: dict, modelopt_python: str | None,
             timeout: float = 600, max_rss_gib: float | None = None):
    """(model, wall seconds, CPU seconds, info) for one tool on ``bench``; ``max_rss_gib``: the
    resident-memory cap of an ONNX Runtime run (:class:`RssCap`)."""
    import numpy as np
    import onnx

    from modelopt_compare import with_tail
    from techniques import run_variant

    if tool in XTRT:
        with _bench.Alarm(timeout):
            qmodel, info = run_variant(bench, XTRT[tool], selection_evaluator(ctx, XTRT[tool]),
                                       cache=work / "variants")
        return qmodel, info["seconds"], info["cpu_s"], info
    prepared = ctx["prepared"]
    out = work / f"{bench.key}_{tool}.onnx"
    if tool.startswith("ort-"):
        c0, rss0 = time.process_time(), _rss_gib()
        with _bench.Alarm(timeout):
            secs, peak = ort_quantize(ctx["body_path"], out, ctx["feeds"], tool.split("-", 1)[1],
                                      max_rss_gib)
        cpu = time.process_time() - c0
        return with_tail(onnx.load(str(out)), prepared), secs, cpu, {
            "rss_gib_before": round(rss0, 2), "rss_gib_peak": round(peak, 2)}
    if tool.startswith("modelopt-"):
        if not modelopt_python or not Path(modelopt_python).is_file():
            raise FileNotFoundError(f"no ModelOpt python at {modelopt_python}")
        calib = work / f"{bench.key}_calib.npy"
        if not calib.exists():
            np.save(calib, np.concatenate([f[prepared.input_name] for f in ctx["feeds"]]))
        parts = tool.split("-")
        hp = "fp16" if parts[-1] == "fp16" else "fp32"
        secs, cpu = run_modelopt(modelopt_python, ctx["body_path"], calib, out, parts[1], hp,
                                 timeout)
        return with_tail(onnx.load(str(out)), prepared), secs, cpu, {"high_precision": hp}
    if tool == "ppq-trt":
        c0, t0 = time.process_time(), time.perf_counter()
        with _bench.Alarm(timeout):
            ppq_trt_default(ctx["body_path"], out, ctx["feeds"], bench.shape,
                            prepared.input_name)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        return with_tail(onnx.load(str(out)), prepared), secs, cpu, {}
    raise ValueError(f"unknown tool {tool!r}")


def selection_evaluator(ctx: dict, overrides):
    """The evaluator of ``ctx``'s selection part when ``overrides`` resolve to ``calibration.method:
    auto`` (it chooses its method there, never on the test part), built on first use; else None."""
    from xtrt.quant.techniques import resolve

    bench = ctx["bench"]
    if resolve(bench.config(overrides)).calibration.method != "auto":
        return None
    if ctx.get("sel_ev") is None:
        ctx["sel_ev"] = _bench.evaluator(bench, bench.sel, "selection")
    return ctx["sel_ev"]


def lint_counts(model) -> dict:
    from xtrt.lint.qdq import lint_qdq, summarize

    s = summarize(lint_qdq(model))
    return {"lint_errors": s["error"], "lint_warnings": s["warning"]}


def engine_figures(model) -> dict:
    """TensorRT-RTX 1.7 AOT build (SM89) of ``model``: accepted, Int8 convolutions, Float layers
    outside the Int8 convolutions/GEMMs (:func:`xtrt.lint.trt_rtx.engine_judge`)."""
    from xtrt.lint.trt_rtx import engine_judge

    e = engine_judge(model)
    if not e.get("available"):
        return {"available": False}
    return {"available": True, "accepted": e["accepted"], "body_only": e["body_only"],
            "int8_convolutions": e["int8_convolutions"], "convolutions": e["convolutions"],
            "float_outside": len(e["fp32_islands"]), "errors": e["errors"][:1],
            "label": e["label"]}


def _one_line(exc: BaseException) -> str:  # noqa: D103
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {msg[:200]}"


def _engine_error(errors: Sequence[str]) -> str:
    """The builder's first error, without its API prefix and source location, in one cell."""
    import re

    if not errors:
        return "build failed"
    msg = re.sub(r"^IBuilder::\w+: Error Code \d+: ", "", errors[0])
    msg = re.sub(r"\. If this constant.*$|In \w+ at /_src\S*\)?$", "", msg).strip()
    return msg[:150]


def render(rows: Sequence[dict]) -> str:
    out = ["| model | tool | calibrate+export s (wall) | CPU s | fidelity vs FP32, test part "
           "[95 % interval] | compute layers in float | Q/DQ nodes | lint errors / warnings | "
           "TensorRT-RTX accepted | Int8 convs / all | Float layers outside Int8 convs |",
           "|---|---|---:|---:|---|---|---:|---|---|---|---:|"]
    for r in rows:
        label = LABELS.get(r["tool"], r["tool"])
        if r.get("failed"):
            out.append(f"| {r['model']} | {label} | - | - | {r['failed']} | - | - | - | - | - | - |")
            continue
        cpu = "-" if r.get("cpu_s") is None else f"{r['cpu_s']:.1f}"
        e = r.get("engine") or {}
        if not e.get("available"):
            acc = ic = fo = "-"
        else:
            acc = "yes" if e["accepted"] else "NO: " + _engine_error(e["errors"])
            acc += " (body)" if e.get("body_only") and e["accepted"] else ""
            ic = f"{e['int8_convolutions']}/{e['convolutions']}" if e["accepted"] else "-"
            fo = str(e["float_outside"]) if e["accepted"] else "-"
        out.append(f"| {r['model']} | {label} | {r['seconds']:.1f} | "
                   f"{cpu} | {_bench.fidelity_text(r['test'])} | "
                   f"{r['float_layers']}/{r['compute']} | {r['qdq_nodes']} | "
                   f"{r['lint_errors']} / {r['lint_warnings']} | {acc} | {ic} | {fo} |")
    return "\n".join(out)


def _figure(t: dict):
    """(value, low, high, axis label) of a row's headline figure."""
    if "top1" in t:
        lo, hi = t.get("top1_ci") or (t["top1"], t["top1"])
        return 100 * t["top1"], 100 * lo, 100 * hi, f"top-1 agreement with FP32 % ({t['total']} images)"
    if "reference_boxes" in t:
        if t.get("map50_95") is None:
            return None
        lo, hi = t.get("map_ci") or (t["map50_95"],) * 2
        return (100 * t["map50_95"], 100 * lo, 100 * hi,
                f"mAP50-95 vs FP32 x100 ({t['reference_boxes']} FP32 boxes)")
    if t.get("sqnr_db") is None:
        return None
    lo, hi = t.get("sqnr_ci") or (t["sqnr_db"],) * 2
    return t["sqnr_db"], lo, hi, f"worst output SQNR dB ({t.get('images')} images)"


def plot(rows: Sequence[dict], path: Path) -> None:
    """Fidelity vs seconds, one panel per model, one marker per tool (95 % interval bars)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in rows if not r.get("failed")]
    models = list(dict.fromkeys(r["model"] for r in rows))
    tools = list(dict.fromkeys(r["tool"] for r in rows))
    markers = dict(zip(tools, "o*sPD^vX<>ph"))
    colors = dict(zip(tools, plt.cm.tab10.colors + plt.cm.Dark2.colors))
    ncol = min(4, len(models))
    nrow = (len(models) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(11.0, 5.2 * ncol), 4.4 * nrow + 1.4), squeeze=False)
    for ax in axes.flat[len(models):]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, models):
        secs, what = [], ""
        for r in [r for r in rows if r["model"] == m]:
            f = _figure(r["test"])
            if f is None:
                continue
            y, lo, hi, what = f
            secs.append(r["seconds"])
            ax.errorbar(r["seconds"], y, yerr=[[max(0, y - lo)], [max(0, hi - y)]],
                        marker=markers[r["tool"]], color=colors[r["tool"]], ms=9, capsize=3,
                        lw=1, zorder=3, label=LABELS.get(r["tool"], r["tool"]))
        if not secs:
            continue
        ax.set_xscale("log")
        ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
                 if min(secs) / 2 <= t <= max(secs) * 2]
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlim(min(secs) / 1.5, max(secs) * 1.5)
        ax.set_xlabel("calibrate + export s (log)")
        ax.set_ylabel(what, fontsize=8)
        ax.set_title(m)
        ax.grid(True, which="both", alpha=0.3)
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)),
               fontsize=9, frameon=False)
    fig.suptitle("INT8 tools, identical data: higher and further left is better\n"
                 "(2 shared CPU cores; bars: 95 % intervals)", fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _context(m: str, work: Path) -> dict:
    """Bench, prepared model, FP32 body file, calibration feeds and test evaluator of ``m``."""
    import onnx

    bench = _bench.load_bench(m, work)
    cfg = bench.config()
    prepared, _ = _bench.prepare(bench, cfg)
    body_path = work / f"{bench.key}_body.onnx"
    onnx.save(prepared.body, str(body_path))
    feeds = [b.feeds for b in _bench.batches(bench, cfg, prepared, bench.cal, bench.shape[0])]
    t0 = time.perf_counter()
    test_ev = _bench.evaluator(bench, bench.test, "test")
    boxes = len([1 for d in test_ev.data.ref_detections for _ in d.get("scores", [])])
    print(f"{bench.label}: {len(bench.cal)} calibration, {len(bench.sel)} selection (xtrt's "
          f"method choice only), {len(bench.test)} test images"
          + (f", {boxes} FP32 boxes" if test_ev.data.task == "detection" else "")
          + f"; FP32 pass {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return {"bench": bench, "prepared": prepared, "body_path": body_path, "feeds": feeds,
            "ev": test_ev}


def _row(tool: str, ctx: dict, work: Path, a, left: float) -> dict:
    bench = ctx["bench"]
    base = {"model": bench.label, "key": bench.key, "tool": tool,
            "images": {"calibration": len(bench.cal), "selection": len(bench.sel),
                       "test": len(bench.test)}, "data": bench.data_note}
    if left <= 5:
        return {**base, "failed": "not run: the run's time budget was spent"}
    try:
        model, secs, cpu, info = run_tool(tool, bench, work, ctx, a.modelopt_python,
                                          timeout=min(a.timeout, left), max_rss_gib=a.max_rss_gib)
        row = {**base, "seconds": round(secs, 1), "cpu_s": None if cpu is None else round(cpu, 1),
               "info": info}
        row["test"] = _bench.score(ctx["ev"], model)
        row.update(_bench.qdq_stats(model))
        row.update(lint_counts(model))
        try:
            row["engine"] = engine_figures(model)
        except Exception as exc:                          # noqa: BLE001 - reported in the row
            row["engine"] = {"available": True, "accepted": False, "errors": [_one_line(exc)],
                             "float_outside": 0, "int8_convolutions": 0, "convolutions": 0}
        return row
    except Exception as exc:                              # noqa: BLE001 - one line in the table
        return {**base, "failed": f"failed: {_one_line(exc)}"}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(_bench.SPEC))
    p.add_argument("--tools", default=CHEAP + ";" + SLOW,
                   help="comma-separated tools; ';' separates passes over all models")
    p.add_argument("--modelopt-python", default="/work/venv-modelopt/bin/python")
    p.add_argument("--work", default="/tmp/xtrt-bench")
    p.add_argument("--out", default=str(Path(__file__).with_name("compare.md")))
    p.add_argument("--png", default=str(Path(__file__).with_name("compare.png")))
    p.add_argument("--json", help="append rows to this JSON-lines file as they finish; rows "
                                  "already there are kept and not re-run")
    p.add_argument("--timeout", type=float, default=420, help="seconds per tool")
    p.add_argument("--budget", type=float, default=1e9, help="seconds for the whole run")
    p.add_argument("--max-rss-gib", type=float, default=None,
                   help="stop an ONNX Runtime quantize_static run once this process's resident "
                        "memory passes this many GiB (the row then says so)")
    p.add_argument("--render", nargs="+", metavar="JSONL",
                   help="run nothing: write the table and PNG from rows of earlier --json runs")
    a = p.parse_args(argv)
    work = Path(a.work)
    if a.render:
        rows = [json.loads(ln) for f in a.render for ln in Path(f).read_text().splitlines()
                if ln.strip()]
        return _write(rows, a)
    t_start = time.perf_counter()
    rows = []
    if a.json and Path(a.json).is_file():
        rows = [json.loads(ln) for ln in Path(a.json).read_text().splitlines() if ln.strip()]
    done = {(r["key"], r["tool"]) for r in rows if not r.get("failed", "").startswith("not run")}
    rows = [r for r in rows if (r["key"], r["tool"]) in done]
    models = [_bench.ALIASES.get(x.strip(), x.strip()) for x in a.models.split(",") if x.strip()]
    ctxs: dict[str, dict] = {}
    for group in a.tools.split(";"):
        for m in models:
            tools = [t.strip() for t in group.split(",") if t.strip() and (m, t.strip()) not in done]
            if not tools:
                continue
            if m not in ctxs:
                ctxs[m] = _context(m, work)
            for tool in tools:
                row = _row(tool, ctxs[m], work, a, a.budget - (time.perf_counter() - t_start))
                rows.append(row)
                print(render([row]).splitlines()[-1], file=sys.stderr, flush=True)
                if a.json:
                    with open(a.json, "a") as fh:
                        fh.write(json.dumps(row, default=str) + "\n")
    for c in ctxs.values():
        c["ev"].close()
        if c.get("sel_ev") is not None:
            c["sel_ev"].close()
    return _write(rows, a)


def _unique(rows: Sequence[dict]) -> list[dict]:
    """One row per (model, tool): a measured row over a 'not run' one, else the first."""
    out: dict[tuple, dict] = {}
    for r in rows:
        k = (r.get("key", r["model"]), r["tool"])
        if k not in out or str(out[k].get("failed", "")).startswith("not run"):
            out[k] = r
    return list(out.values())


def _write(rows, a) -> int:
    rows = _unique(rows)
    order = {k: i for i, k in enumerate(_bench.SPEC)}
    tool_order = {t: i for i, t in enumerate(LABELS)}
    rows = sorted(rows, key=lambda r: (order.get(r.get("key"), 99),
                                       tool_order.get(r["tool"], 99)))
    table = render(rows)
    seen, data = set(), []
    for r in rows:
        if r["model"] in seen:
            continue
        seen.add(r["model"])
        i = r.get("images", {})
        data.append(f"- {r['model']}: {i.get('calibration')} calibration, {i.get('test')} test "
                    f"images ({i.get('selection')} selection images: xtrt's method choice only). "
                    f"{r.get('data', '')}")
    Path(a.out).write_text(
        "# INT8 tools compared (generated by benchmarks/compare.py)\n\n"
        "Identical calibration and test images for every tool; every model scored by the same "
        "code (xtrt's evaluator, ONNX Runtime CPU, 'basic' graph optimisation with the "
        "WeightBiasQuantization pass off for every Q/DQ model) against the FP32 model.  95 % intervals: Wilson for top-1 agreement, bootstrap "
        "over test images for mAP50-95 (100 rounds) and SQNR (200 rounds).  Seconds: "
        "calibrate+export wall time on 2 CPU cores shared with other jobs (inflated); CPU s: "
        "process CPU time (ModelOpt: its subprocess).  Compute layers in float: "
        "Conv/Gemm/MatMul/ConvTranspose without a DequantizeLinear input.  Lint: "
        "xtrt.lint.qdq.  Engine columns: TensorRT-RTX 1.7 AOT build, SM89 "
        "(xtrt.lint.trt_rtx.engine_judge; plugin-terminated models built by their body).\n\n"
        + "\n".join(data) + "\n\n"
        f"![fidelity vs seconds]({Path(a.png).name})\n\n" + table + "\n")
    if rows:
        plot(rows, Path(a.png))
    print(table)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_modelopt":
        _modelopt_worker(*sys.argv[2:7])
        sys.exit(0)
    sys.exit(main())
