"""Activation statistics for calibration, collected on ONNX Runtime.

Calibration time is statistics code, not inference: PPQ's runtime calibration runs its own torch
executor (slow convolutions on CPU) and its observers on every batch.  For ``percentile`` and
``minmax`` xtrt runs the prepared model once per batch on ONNX Runtime with the tensors it needs as
extra outputs, and reduces each tensor to two numbers per batch, with PPQ's exact definitions:

* percentile: per batch, the k-th smallest and largest values (k from the 0.9999 quantile, as
  ``torch.kthvalue`` in PPQ's TorchPercentileObserver), averaged over batches;
* minmax: the minimum and maximum over all batches;
* kl / mse: a second pass builds the histogram of ``|x|`` over ``[0, max(|min|, |max|)]`` (4096 /
  2048 bins, ``torch.histc`` semantics, as PPQ's TorchHistObserver / TorchMSEObserver), from which
  PPQ's own ``hist_to_scale_offset`` picks the clip;
* entropy: the same histogram in 2048 bins, TensorRT's entropy calibration picks the clip
  (:func:`xtrt.backend.ppq._scales.entropy_best_bins`).

Only a few numbers (or one histogram) per tensor are kept: memory does not grow with the data.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from xtrt.quant.buffers import OutputBuffers, inferred_specs as _inferred_specs
from xtrt.quant.reuse import CUDA_SCORING
from xtrt.runtime.feed import DeviceFeed, bind_inputs

__all__ = ["AUTO_METHODS", "FAST_METHODS", "PERCENTILE", "collect_ranges", "collect_statistics",
           "batch_range", "OutputBuffers", "release_sessions"]

log = logging.getLogger(__name__)

FAST_METHODS = ("percentile", "minmax", "kl", "mse", "entropy")
# what method auto and quantization.per_tensor choose among: entropy is behind minmax on 5 of the 8
# corpus models, level on 2 and ahead only on MTCNN ONet (benchmarks/techniques.md, "TensorRT's
# entropy calibration"), so it is asked for by name only
AUTO_METHODS = ("percentile", "minmax", "kl", "mse")
# PPQ's OBSERVER_KL_HIST_BINS / OBSERVER_MSE_HIST_BINS; entropy: TensorRT's 2048 bins
HIST_BINS = {"kl": 4096, "mse": 2048, "entropy": 2048}
PERCENTILE = 0.9999  # PPQ's OBSERVER_PERCENTILE


def batch_range(x: np.ndarray, method: str, percentile: float = PERCENTILE) -> tuple[float, float]:
    """(low, high) of one batch of one tensor, as PPQ's observer computes it."""
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    if method == "minmax":
        return float(flat.min()), float(flat.max())
    n = flat.size
    lo = max(0, int(n * (1 - percentile)))          # 0-based k of torch.kthvalue(k = idx + 1)
    hi = min(int(n * percentile), n - 1)
    part = np.partition(flat, (lo, hi))
    return float(part[lo]), float(part[hi])


def collect_ranges(model, tensors: Sequence[str], batches: Iterable[dict[str, np.ndarray]], *,
                   method: str = "percentile", device: str = "cpu",
                   progress: str | None = None) -> dict[str, tuple[float, float]]:
    """(low, high) per tensor of ``model`` over ``batches`` (see the module docstring)."""
    if method not in ("percentile", "minmax"):
        raise ValueError(f"collect_ranges supports percentile and minmax, not {method!r}")
    runner = _runner(model, tensors, device)
    acc = _RangeAcc(runner, [method])
    for feeds in _bar(batches, progress):
        acc.add(runner.run(feeds))
    return acc.ranges(method) if acc.rows[method] else {}


_RUNNERS: dict[tuple, "_StatsRunner"] = {}     # the last CUDA statistics runner, reused


def _runner(model, tensors: Sequence[str], device: str) -> "_StatsRunner":
    """A statistics runner for ``model`` and ``tensors``.  On CUDA the last one is kept and
    reused when the same model and tensors come again (method search, per-tensor choice,
    a second method): its session, cuDNN plans and buffers are the per-call fixed cost."""
    if device != "cuda":
        return _StatsRunner(model, tensors, device)
    import hashlib

    key = (hashlib.sha1(model.SerializeToString()).hexdigest(), tuple(dict.fromkeys(tensors)))
    found = _RUNNERS.get(key)
    if found is None:
        _RUNNERS.clear()                      # one at a time: its buffers are GPU memory
        found = _RUNNERS[key] = _StatsRunner(model, tensors, device)
    return found


def release_sessions() -> None:
    """Drop the kept CUDA statistics runner (its ORT session and torch buffers)."""
    _RUNNERS.clear()


def _bar(it, desc: str | None):
    """``it`` with a tqdm bar when ``desc`` is given."""
    if not desc:
        return it
    from tqdm import tqdm
    return tqdm(it, desc=desc, unit="batch", leave=False)


class _StatsRunner:
    """Runs the statistics session and reduces its outputs where they were computed.

    On CPU the outputs are numpy arrays and numpy reduces them (``np.partition`` beat
    ``torch.topk`` 3x on CPU).  On CUDA the outputs stay on the GPU (I/O binding into torch
    buffers) and torch reduces them there: copying every activation of every batch to the host
    and reducing it in numpy took the calibrate stage of a YOLOv8n 640 run (32 images, four
    methods) to 40.2 s on an H100; reduced on the GPU it takes 7.3 s.  The per-batch reductions
    (:class:`_RangeAcc`, :class:`_HistAcc`) stay on the device too: one host transfer per pass,
    not one per tensor and batch.  The output shapes come from ONNX shape inference (ORT then
    never allocates the activations itself, which left them in its arena), and a short last
    batch is padded to the full batch (the padding sliced off before any reduction), so it
    needs neither new buffers nor new cuDNN plans.
    """

    def __init__(self, model, tensors: Sequence[str], device: str, *, torch_reduce: bool | None = None,
                 pad: bool | None = None):
        self.cuda = device == "cuda"
        self.sess, self.names = _stats_session(model, tensors, device,
                                               cuda_options=STATS_CUDA_OPTIONS if self.cuda else None)
        self.torch = self.cuda if torch_reduce is None else bool(torch_reduce)  # tests: torch on CPU
        self._model = model
        self._buffers = OutputBuffers(self._output_specs, self._allocate)
        self._bindings: dict[int, object] = {}
        self._full: dict[str, tuple] | None = None      # the first batch's input shapes
        self._full_out: list[tuple] | None = None       # the first batch's output shapes
        self._pad_ok: bool | None = None                # every output batch-major (dim 0)
        self.pad = self.cuda if pad is None else bool(pad)
        self._shrink = False                            # free ORT's arena after a specs run
        self.padded = 0                                 # short batches padded (tests count)
        self._feed = DeviceFeed("cuda") if self.cuda else None

    def run(self, feeds: dict[str, np.ndarray]) -> list:
        """The statistics tensors for ``feeds`` (numpy on the numpy path, else torch tensors;
        on CUDA views of device buffers valid until the next call)."""
        feeds, real = self._pad(feeds) if self.pad else (feeds, None)
        if self.cuda:
            outs = self._run_cuda(feeds)
        else:
            outs = self.sess.run(self.names, feeds)
            if self.torch:
                import torch

                outs = [torch.from_numpy(o) for o in outs]
        if self._full_out is None:
            self._full_out = [tuple(o.shape) for o in outs]
        return outs if real is None else [o[:real] for o in outs]

    def _pad(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int | None]:
        """``feeds`` padded to the first batch's size by repeating its last sample, and the real
        count (None when not padded: a full batch, or outputs that are not all batch-major)."""
        shapes = {n: tuple(np.shape(a)) for n, a in feeds.items()}
        if self._full is None:
            self._full = shapes
            return feeds, None
        full = self._full
        if set(shapes) == set(full) and all(len(s) == len(full[n]) and s[1:] == full[n][1:]
                                            and s[0] > full[n][0] for n, s in shapes.items()):
            self._full, self._full_out, self._pad_ok = shapes, None, None   # a larger batch
            return feeds, None
        if shapes == full or set(shapes) != set(full) or any(
                len(s) == 0 or len(s) != len(full[n]) or s[1:] != full[n][1:] or s[0] >= full[n][0]
                for n, s in shapes.items()):
            return feeds, None
        real = {s[0] for s in shapes.values()}
        if len(real) != 1 or len({s[0] for s in full.values()}) != 1:
            return feeds, None
        if self._pad_ok is None:      # the first batch's outputs tell whether dim 0 is the batch
            b = next(iter(full.values()))[0]
            self._pad_ok = all(len(s) > 0 and s[0] == b for s in self._full_out or [()])
        if not self._pad_ok:
            return feeds, None
        m = real.pop()
        out = {}
        for n, a in feeds.items():
            a = np.asarray(a)
            b = full[n][0]
            out[n] = np.concatenate([a, np.repeat(a[-1:], b - m, axis=0)], axis=0)
        self.padded += 1
        return out, m

    def _run_cuda(self, feeds: dict[str, np.ndarray]) -> list:
        import torch

        buffers = self._buffers.get(feeds)
        kept = self._bindings.get(id(buffers))
        binding = kept[1] if kept is not None and kept[0] is buffers else None   # ids are reused
        if binding is None:
            if len(self._bindings) >= self._buffers.keep:
                self._bindings.clear()
            binding = self.sess.io_binding()
            self._bindings[id(buffers)] = (buffers, binding)
            for n, b in zip(self.names, buffers):
                if n not in feeds:
                    binding.bind_output(n, "cuda", 0, _np_dtype(b).type, tuple(b.shape), b.data_ptr())
        dev = self._feed.put(feeds)   # pinned buffers, asynchronous copy (xtrt.runtime.feed)
        torch.cuda.current_stream().synchronize()      # the last batch's reductions read buffers
        self._feed.wait()
        bind_inputs(binding, dev, self._feed.device_id)
        for n, b in zip(self.names, buffers):
            if n in feeds:    # a graph input: ORT leaves a buffer bound to it unwritten (seen on
                b.copy_(dev[n])                                            # an H200): copy it
        if any(n not in feeds for n in self.names):
            opts = None
            if self._shrink:                           # give back what a specs run left
                import onnxruntime as ort

                opts = ort.RunOptions()
                opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "gpu:0")
                self._shrink = False
            self.sess.run_with_iobinding(binding, opts)
            binding.synchronize_outputs()
        return buffers

    def _output_specs(self, feeds: dict[str, np.ndarray]) -> list[tuple[tuple[int, ...], np.dtype]]:
        """(shape, dtype) of every output for ``feeds``: from ONNX shape inference where it gives
        every dimension, else one run with the outputs left on the device (no host round trip of
        every activation, which cost seconds a method at batch 32)."""
        from onnx.helper import tensor_dtype_to_np_dtype

        inferred = _inferred_specs(self._model, self.names, feeds)
        if inferred is not None:
            return inferred
        outs = [n for n in self.names if n not in feeds]
        specs = {n: (tuple(a.shape), np.dtype(a.dtype)) for n, a in feeds.items()}
        if outs:
            binding = self.sess.io_binding()
            for n, a in feeds.items():
                binding.bind_cpu_input(n, np.ascontiguousarray(a))
            for n in outs:
                binding.bind_output(n, "cuda", 0)
            self.sess.run_with_iobinding(binding)
            for n, v in zip(outs, binding.get_outputs()):
                specs[n] = (tuple(v.shape()), np.dtype(tensor_dtype_to_np_dtype(v.element_type())))
            binding.clear_binding_outputs()
            self._shrink = True
        return [specs[n] for n in self.names]

    @staticmethod
    def _allocate(specs):
        import torch

        return [torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, dt)).dtype, device="cuda")
                for shape, dt in specs]

    def batch_range(self, v, method: str) -> tuple[float, float]:
        """(low, high) of one batch of one tensor as Python floats (a host sync on torch: the
        passes use :class:`_RangeAcc`, which keeps them on the device)."""
        if not self.torch:
            return batch_range(v, method)
        lo, hi = _torch_range(v, method)
        return float(lo), float(hi)

    def abs_max(self, v) -> float:
        if not self.torch:
            return float(np.abs(v).max()) if v.size else 0.0
        return float(v.abs().max()) if v.numel() else 0.0

    def abs_hist(self, v, bins: int, top: float) -> np.ndarray:
        """Histogram of |v| over [0, top] in ``bins`` equal bins (the last one closed), int64."""
        if not self.torch:
            h, _ = np.histogram(np.abs(v).reshape(-1), bins=bins, range=(0.0, top))
            return h
        return _torch_abs_hist(v, bins, top).cpu().numpy().astype(np.int64)


#: ONNX Runtime CUDA EP options of the statistics session: the scoring sessions' (arena grown by
#: what is asked, the activations living in torch buffers; cuDNN's heuristic conv plans: an
#: exhaustive search cost a new YOLOv8n 640 b32 session about 1 s on an H200, the plans it found
#: no faster), without cuDNN's maximal workspace
STATS_CUDA_OPTIONS: dict[str, str] = {**CUDA_SCORING, "cudnn_conv_use_max_workspace": "0"}
HIST_CHUNK = 1 << 24     # torch.histc counts in float32: exact up to 2**24 a bin, so chunk by that


def _torch_range(v, method: str):
    """(low, high) of one tensor as 0-d tensors on its device (no host sync)."""
    import torch

    flat = v.reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    if method == "minmax" or flat.numel() < 2:
        return torch.aminmax(flat)
    n = flat.numel()
    lo = max(0, int(n * (1 - PERCENTILE)))       # the same 0-based ranks as batch_range
    hi = min(int(n * PERCENTILE), n - 1)
    low = torch.topk(flat, lo + 1, largest=False, sorted=False).values.max()
    high = torch.topk(flat, n - hi, largest=True, sorted=False).values.min()
    return low, high


def _torch_abs_hist(v, bins: int, top: float):
    """Histogram of |v| over [0, top] (``torch.histc``: values above ``top`` dropped, the last
    bin closed) as a float64 tensor on v's device, counted in chunks of ``HIST_CHUNK`` (exact
    float32 counts, bounded temporaries) and with no host sync."""
    import torch

    flat = v.reshape(-1)
    out = torch.zeros(bins, dtype=torch.float64, device=flat.device)
    for i in range(0, flat.numel(), HIST_CHUNK):
        part = flat[i:i + HIST_CHUNK].float().abs()
        out += torch.histc(part, bins=bins, min=0.0, max=float(top)).double()
    return out


class _RangeAcc:
    """Per-batch (low, high) of every tensor for the methods asked, kept where they were computed
    (device 0-d tensors on torch, floats on numpy) and brought to the host once at the end."""

    def __init__(self, runner: _StatsRunner, methods: Sequence[str]):
        self.runner, self.methods = runner, list(methods)
        self.rows: dict[str, list] = {m: [] for m in self.methods}   # per batch: [2 * tensors]

    def add(self, values: Sequence) -> None:
        for m in self.methods:
            if self.runner.torch:
                import torch

                pairs = [x for v in values for x in _torch_range(v, m)]
                self.rows[m].append(torch.stack(pairs) if pairs else None)
            else:
                self.rows[m].append([x for v in values for x in batch_range(v, m)])

    def table(self, method: str) -> np.ndarray:
        """[batches, tensors, 2] float64 of (low, high)."""
        rows = self.rows[method]
        n = len(self.runner.names)
        if not rows or n == 0:
            return np.zeros((len(rows), n, 2))
        if self.runner.torch:
            import torch

            arr = torch.stack(rows).double().cpu().numpy()
        else:
            arr = np.asarray(rows, dtype=np.float64)
        return arr.reshape(len(rows), n, 2)

    def ranges(self, method: str) -> dict[str, tuple[float, float]]:
        """minmax: min of lows / max of highs; percentile: the batch means (PPQ's rules)."""
        t = self.table(method)
        if method == "minmax":
            lo, hi = t[:, :, 0].min(axis=0), t[:, :, 1].max(axis=0)
        else:
            lo, hi = t[:, :, 0].mean(axis=0), t[:, :, 1].mean(axis=0)
        return {name: (float(lo[i]), float(hi[i])) for i, name in enumerate(self.runner.names)}


class _HistAcc:
    """Histograms of |x| per tensor over [0, top], summed over batches on the device."""

    def __init__(self, runner: _StatsRunner, bins: int, tops: Sequence[float]):
        self.runner, self.bins, self.tops = runner, bins, list(tops)
        self.sums = None

    def add(self, values: Sequence) -> None:
        if self.runner.torch:
            import torch

            h = torch.stack([_torch_abs_hist(v, self.bins, top)
                             for v, top in zip(values, self.tops)])
        else:
            h = np.stack([self.runner.abs_hist(v, self.bins, top)
                          for v, top in zip(values, self.tops)]).astype(np.int64)
        self.sums = h if self.sums is None else self.sums + h

    def counts(self) -> np.ndarray:
        """[tensors, bins] int64."""
        if self.sums is None:
            return np.zeros((len(self.runner.names), self.bins), np.int64)
        if self.runner.torch:
            return np.rint(self.sums.cpu().numpy()).astype(np.int64)
        return self.sums


def _np_dtype(t) -> np.dtype:
    """The numpy dtype of a torch tensor."""
    import torch

    return np.dtype(torch.empty(0, dtype=t.dtype).numpy().dtype)


def _stats_session(model, tensors: Sequence[str], device: str, cuda_options: dict | None = None):
    """An ORT session of ``model`` whose outputs are exactly ``tensors``."""
    from xtrt.model.split import with_outputs
    from xtrt.runtime.session import make_session

    names = list(dict.fromkeys(tensors))
    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    missing = [t for t in names if t not in produced]
    if missing:
        raise ValueError(f"tensors not in the graph: {missing[:3]}")
    return make_session(with_outputs(model, names), device, cuda_options=cuda_options), names


def collect_histograms(model, tensors: Sequence[str], batches: Sequence[dict[str, np.ndarray]], *,
                       method: str = "mse", device: str = "cpu", progress: str | None = None
                       ) -> dict[str, tuple[np.ndarray, float]]:
    """Per tensor: (histogram of |x| as int64 [bins], bin width), over two passes of ``batches``."""
    bins = HIST_BINS[method]
    runner = _runner(model, tensors, device)
    batches = list(batches)
    ranges = _RangeAcc(runner, ["minmax"])
    for feeds in _bar(batches, progress and f"{progress} (1/2)"):        # pass 1: the range
        ranges.add(runner.run(feeds))
    tops = _tops(ranges)
    hist = _HistAcc(runner, bins, tops)
    for feeds in _bar(batches, progress and f"{progress} (2/2)"):        # pass 2: the histogram
        hist.add(runner.run(feeds))
    counts = hist.counts()
    return {t: (counts[i], tops[i] / bins) for i, t in enumerate(runner.names)}


def _tops(ranges: _RangeAcc) -> list[float]:
    """max |x| per tensor from the minmax table (1.0 where all zeros): the histograms' range."""
    t = ranges.table("minmax")
    if t.shape[0] == 0:
        return [1.0] * t.shape[1]
    amax = np.abs(t).max(axis=(0, 2))
    return [float(v) if v > 0 else 1.0 for v in amax]


def collect_statistics(model, tensors: Sequence[str],
                       batches: Callable[[], Iterator[dict[str, np.ndarray]]],
                       methods: Sequence[str], *, device: str = "cpu",
                       progress: str | None = None) -> dict[str, dict]:
    """Statistics for every method in ``methods`` from at most two streamed passes.

    ``batches()`` returns a fresh iterator of feeds each time it is called (a pass).  Pass 1 gives
    minmax and percentile ranges and |x| maxima from the same session run; pass 2 (only for kl or
    mse) one histogram of |x| over ``[0, max|x|]`` with kl's 4096 bins, from which mse's 2048-bin
    histogram is the sum of neighbouring bins (the same edges).  Returns
    ``{method: {"ranges": ...}}`` or ``{method: {"hists": ...}}`` as the one-method collectors do.
    On CUDA every per-batch figure stays on the device until the end of its pass.
    """
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in FAST_METHODS]
    if unknown:
        raise ValueError(f"unknown calibration method(s) {unknown}")
    runner = _runner(model, tensors, device)
    names = runner.names
    hist_methods = [m for m in methods if m in HIST_BINS]
    ranges = _RangeAcc(runner, ["minmax"] + (["percentile"] if "percentile" in methods else []))
    for feeds in _bar(batches(), progress if not hist_methods or not progress
                      else f"{progress} (1/2)"):
        ranges.add(runner.run(feeds))
    out: dict[str, dict] = {}
    if not ranges.rows["minmax"]:
        return out
    for m in ("minmax", "percentile"):
        if m in methods:
            out[m] = {"ranges": ranges.ranges(m)}
    if hist_methods:
        bins = HIST_BINS["kl"]
        tops = _tops(ranges)
        hist = _HistAcc(runner, bins, tops)
        for feeds in _bar(batches(), f"{progress} (2/2)" if progress else None):
            hist.add(runner.run(feeds))
        counts = hist.counts()
        for m in hist_methods:
            mb = HIST_BINS[m]
            merge = bins // mb
            out[m] = {"hists": {t: (counts[i].reshape(mb, merge).sum(axis=1), tops[i] / mb)
                                for i, t in enumerate(names)}}
    return {m: out[m] for m in methods if m in out}
