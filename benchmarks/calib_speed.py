"""Calibration wall time per method against one plain FP32 pass, on CPU or CUDA.

    python benchmarks/calib_speed.py [--model data/yolov8n_e2e.onnx] [--images DIR] [--count 512]
                                     [--batch 32] [--imgsz 640] [--device cuda] [--methods ...] [--ppq]
                                     [--repeat 2] [--json OUT.json]

The brief's yardstick (YOLOv8n 640, 512 images, H100): one FP32 pass on ORT's CUDA EP 0.65 s;
PPQ's default percentile 138.6 s without its JIT CUDA kernels, 20.1 s with them (plus a 74 s build);
ModelOpt max 10.3 s.  This script times what ``xtrt.quant`` does for each method: ONNX Runtime
statistics over the calibration batches plus PPQ's scale rules (``xtrt.quant.calibrate.calibrate``).
Image decoding and preprocessing are timed separately (they are the same for every tool).
When the folder has fewer images than ``--count`` the files are cycled (said in the output).
``--ppq`` also times PPQ's own engine (``calibration.engine: ppq``) for percentile.

``auto`` is ``calibration.method: auto``: the statistics of all four methods from the same two
streamed passes (``xtrt.quant.observe.collect_statistics``), scales on the first candidate; the
held-out method search that follows in ``xtrt.quant`` is not in this figure.  Each row gives the
seconds (min-max over ``--repeat`` runs), the part of them spent in the statistics passes, the
part spent in PPQ (its graph: parsed and quantized, or copied from the call before; then the
scales: ``ppq_timings`` in the JSON splits it), the ratio to the FP32 pass, and on CUDA the GPU memory: torch's peak allocation and the device's peak
use above the baseline before the method (polled through NVML or nvidia-smi; what is not torch's
is ONNX Runtime's arena and workspace, plus the CUDA context of a new session).
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="data/yolov8n_e2e.onnx")
    p.add_argument("--images", default="data/images")
    p.add_argument("--count", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--methods", default="percentile,minmax,mse,kl,auto")
    p.add_argument("--ppq", action="store_true", help="also time PPQ's own engine (percentile)")
    p.add_argument("--preprocess-from", default=None, metavar="YAML",
                   help="take the preprocessing of this xtrt config (default: letterbox)")
    p.add_argument("--fp32-passes", type=int, default=3, help="FP32 passes timed (the fastest is "
                   "the floor)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each method (min-max shown)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--cold", action="store_true", help="drop the kept CUDA statistics session "
                   "before every run (each run then builds its own session and cuDNN plans)")
    p.add_argument("--ort", action="store_true", help="also time ONNX Runtime quantize_static "
                   "MinMax, calibrating on --device's execution provider")
    p.add_argument("--stats-cuda-options", default=None, metavar="JSON",
                   help="CUDA EP options of the statistics session (default: observe.STATS_CUDA_OPTIONS)")
    a = p.parse_args(argv)

    from xtrt.backend import ppq as ppq_backend
    from xtrt.config import Config, PreprocessConfig
    from xtrt.data.images import list_files
    from xtrt.data.preprocess import build_preprocess
    from xtrt.data.source import BatchSource
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.calibrate import calibrate
    from xtrt.quant.placement import plan_placement
    from xtrt.runtime.session import make_session

    files = list_files(a.images)
    distinct = len(files)
    files = [files[i % distinct] for i in range(a.count)]
    shape = [a.batch, 3, a.imgsz, a.imgsz]
    t = time.perf_counter()
    pm = prepare_model(load_model(a.model), shape)
    t_prep = time.perf_counter() - t
    if a.preprocess_from:
        from xtrt.config import load_config

        pcfg = load_config(a.preprocess_from)
        pre = build_preprocess(pcfg.preprocess, (a.imgsz, a.imgsz), pcfg.base_dir)
    else:
        pre = build_preprocess(PreprocessConfig(preset="letterbox", size=[a.imgsz, a.imgsz]))
    t = time.perf_counter()
    batches = list(BatchSource(files, pm.input_name, tuple(shape[1:]), pre, a.batch))
    t_data = time.perf_counter() - t
    feeds = [b.feeds for b in batches]
    placement = plan_placement(pm.model, plugin_tail=pm.tail_nodes)

    sess = make_session(pm.body, a.device)
    names = [o.name for o in sess.get_outputs()]
    sess.run(names, feeds[0])                      # warm-up (CUDA context, cuDNN autotune)
    fp32_runs = []
    for _ in range(max(1, a.fp32_passes)):
        t = time.perf_counter()
        for f in feeds:
            sess.run(names, f)
        fp32_runs.append(time.perf_counter() - t)
    t_fp32 = min(fp32_runs)

    import xtrt.quant.observe as observe

    if a.stats_cuda_options:
        observe.STATS_CUDA_OPTIONS = json.loads(a.stats_cuda_options)
    stats_s: list[float] = []
    collect = observe.collect_statistics

    def timed_collect(*args, **kw):                 # the statistics passes inside calibrate()
        t0 = time.perf_counter()
        try:
            return collect(*args, **kw)
        finally:
            stats_s.append(time.perf_counter() - t0)

    observe.collect_statistics = timed_collect
    rows = []
    for m in [x for x in a.methods.split(",") if x]:
        cfg = Config()
        cfg.device = a.device
        cfg.calibration.method = m
        runs = []
        for _ in range(max(1, a.repeat)):
            if a.cold:
                observe.release_sessions()
            warm = bool(observe._RUNNERS)
            with GpuMemory(a.device) as mem:
                t = time.perf_counter()
                cal = calibrate(cfg, pm, placement, batches, progress=False,
                                keep_session=not a.cold).result
                sec = time.perf_counter() - t
            runs.append({"seconds": sec, "statistics_s": stats_s.pop() if stats_s else None,
                         "ppq_s": cal.seconds, "ppq_timings": dict(cal.timings),
                         "session_reused": warm,
                         "int8_layers": len(cal.quantized_ops), **mem.figures()})
            del cal
        rows.append({"what": f"xtrt {m} (ORT statistics)", "method": m, "runs": runs})
    observe.collect_statistics = collect
    observe.release_sessions()
    if a.ort:
        rows.append(_ort_minmax(pm.body, feeds, a.device))
    if a.ppq:
        with GpuMemory(a.device) as mem:
            t = time.perf_counter()
            cal = ppq_backend.calibrate(pm.model, feeds, device=a.device, method="percentile",
                                        fp32_ops=list(placement.keep_float))
            sec = time.perf_counter() - t
        rows.append({"what": "PPQ engine percentile (no JIT kernels)", "method": "ppq",
                     "runs": [{"seconds": sec, "statistics_s": None,
                               "int8_layers": len(cal.quantized_ops), **mem.figures()}]})

    head = (f"{Path(a.model).name} at {a.imgsz}x{a.imgsz}, {a.count} images "
            f"({distinct} distinct{', cycled' if distinct < a.count else ''}), batch {a.batch}, "
            f"device {a.device}, {max(1, a.repeat)} run(s) each")
    print(head)
    print(f"prepare {t_prep:.1f} s; decode+preprocess {t_data:.1f} s (not in the figures below); "
          f"FP32 passes {', '.join(f'{x:.3f}' for x in fp32_runs)} s (the fastest is the floor)\n")
    print(_table(rows, t_fp32, a.device))
    if a.json:
        Path(a.json).write_text(json.dumps({"title": head, "fp32_pass_s": t_fp32, "fp32_passes_s": fp32_runs,
                                            "prepare_s": t_prep, "data_s": t_data,
                                            "rows": rows}, indent=1))
    return 0


def _ort_minmax(body, feeds, device: str) -> dict:
    """ONNX Runtime quantize_static MinMax (QDQ, per-channel, symmetric INT8) calibrating on
    ``device``'s execution provider; the row of the table."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    eps = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "body.onnx", Path(d) / "q.onnx"
        onnx.save(body, str(src))
        with GpuMemory(device) as mem:
            t = time.perf_counter()
            quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            calibration_providers=eps,
                            extra_options={"ActivationSymmetric": True, "QuantizeBias": False})
            sec = time.perf_counter() - t
        n_q = sum(1 for n in onnx.load(str(out)).graph.node if n.op_type == "QuantizeLinear")
    return {"what": f"ORT quantize_static MinMax ({eps[0]}; last column: its QuantizeLinear "
                    "nodes)", "method": "ort-minmax",
            "runs": [{"seconds": sec, "statistics_s": None, "int8_layers": n_q, **mem.figures()}]}


class GpuMemory:
    """Peak GPU memory over a ``with`` block: torch's own peak allocation and the device's peak use
    above the baseline at entry (NVML, else ``nvidia-smi``, polled every 20 ms in a thread)."""

    def __init__(self, device: str):
        self.on = device == "cuda"
        self.torch_peak = self.base = self.peak = None

    def __enter__(self):
        if not self.on:
            return self
        import torch

        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self._read = _device_used_reader()
        self.base = self._read()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.02):
            used = self._read()
            if used is not None and (self.peak is None or used > self.peak):
                self.peak = used

    def __exit__(self, *exc):
        if not self.on:
            return False
        import torch

        torch.cuda.synchronize()
        self._stop.set()
        self._thread.join()
        used = self._read()
        if used is not None and (self.peak is None or used > self.peak):
            self.peak = used
        self.torch_peak = torch.cuda.max_memory_allocated()
        return False

    def figures(self) -> dict:
        """GiB figures (None where not measured)."""
        gib = 2.0 ** 30
        rise = None if self.peak is None or self.base is None else (self.peak - self.base) / gib
        return {"torch_peak_gib": None if self.torch_peak is None else self.torch_peak / gib,
                "device_base_gib": None if self.base is None else self.base / gib,
                "device_peak_gib": None if self.peak is None else self.peak / gib,
                "device_rise_gib": rise}


def _device_used_reader():
    """A function returning GPU 0's used memory in bytes (None when nothing can read it)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(h).used)
    except Exception:
        pass

    def smi():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True, timeout=5).stdout
            return int(float(out.split()[0]) * 2 ** 20)
        except Exception:
            return None
    return smi


def _span(values, fmt="{:.2f}") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    lo, hi = min(vals), max(vals)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"


def _table(rows: list[dict], t_fp32: float, device: str) -> str:
    """The markdown table: seconds, statistics part, ratio to the FP32 pass, GPU memory."""
    gpu = device == "cuda"
    head = "| what | seconds | of which statistics | of which PPQ | x FP32 pass | INT8 layers |"
    sep = "|---|---:|---:|---:|---:|---:|"
    if gpu:
        head += " torch peak GiB | device peak GiB (rise) |"
        sep += "---:|---:|"
    lines = [head, sep, f"| one FP32 pass on ONNX Runtime ({device}) | {t_fp32:.2f} | - | - | 1 | - |"
             + (" - | - |" if gpu else "")]
    for r in rows:
        runs = r["runs"]
        sec = [x["seconds"] for x in runs]
        reused = [x.get("session_reused") for x in runs]
        what = r["what"] + ("" if not any(reused) else
                            f" (session kept from the call before in runs {[i + 1 for i, k in enumerate(reused) if k]})")
        line = (f"| {what} | {_span(sec)} | {_span([x['statistics_s'] for x in runs])} | "
                f"{_span([x.get('ppq_s') for x in runs])} | "
                f"{_span([s / t_fp32 for s in sec], '{:.1f}')} | {runs[-1]['int8_layers']} |")
        if gpu:
            line += (f" {_span([x['torch_peak_gib'] for x in runs])} | "
                     f"{_span([x['device_peak_gib'] for x in runs])} "
                     f"(+{_span([x['device_rise_gib'] for x in runs])}) |")
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
