"""Scales from statistics, with PPQ's rules, vectorised.

* Weights: PPQ's ``ParameterQuantizePass`` runs a dummy forward and, per output channel, its
  Python ``minmax_to_scale_offset``; :func:`weight_pass` gives the same float32 scales from one
  reduction per weight (float64 arithmetic, as PPQ's Python floats), then xtrt's TensorRT rule
  (:func:`weight_scales`, max|w| / 127) overwrites them as before.
* Activations: ``minmax_to_scale_offset`` (PPQ's own function, per tensor: a few Python
  operations) for percentile / minmax ranges; for kl and mse the clip search over the histogram,
  PPQ's ``hist_to_scale_offset`` of its ``TorchHistObserver`` / ``TorchMSEObserver``, batched
  over every tensor (:func:`kl_best_bins`, :func:`mse_best_ends`).  The mse search is PPQ's sum
  term for term (a sequential cumulative sum: the same float64 rounding), so it picks the same
  clip.  The kl search does PPQ's float32 histogram arithmetic in batches; where the two best
  candidates are within :data:`KL_TIE` of each other (where a different summation order could
  change the choice) PPQ's own function decides for that tensor.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from xtrt.errors import QuantizationError
from xtrt.trt.rules import weight_scale

HIST_METHODS = ("kl", "mse", "entropy")   # methods whose scales come from a histogram
KL_TIE = 1e-4          # relative gap under which PPQ's own kl search is asked
KL_EPS = 1e-30         # ppq.quantization.measure.torch_KL_divergence


def _plain_symmetric(qc) -> bool:
    """A config whose scale rule is the plain symmetric linear one (no power-of-2, no
    observer overrides): the one the vectorised rules reproduce."""
    from ppq.core import QuantizationProperty as P

    pol = qc.policy
    return (pol.has_property(P.SYMMETRICAL) and pol.has_property(P.LINEAR)
            and not pol.has_property(P.POWER_OF_2) and not qc.detail)


def _weight_pass_once(graph, executor=None, dataloader=None, **kwargs) -> None:
    """ParameterQuantizePass for every per-channel minmax weight config still INITIAL; PPQ's
    own pass for any other parameter config (after these are set, it sees only the rest)."""
    import torch
    from ppq.core import QuantizationProperty as P
    from ppq.core import QuantizationStates
    from ppq.IR import QuantableOperation
    from ppq.quantization.observer.range import OBSERVER_MIN_SCALE
    from ppq.quantization.optim import ParameterQuantizePass

    rest = False
    for op in graph.operations.values():
        if not isinstance(op, QuantableOperation):
            continue
        for qc, var in op.config_with_variable:
            if not var.is_parameter or qc.state != QuantizationStates.INITIAL:
                continue
            w = var.value
            if not (isinstance(w, torch.Tensor) and w.ndim >= 2 and w.numel() > 0
                    and qc.policy.has_property(P.PER_CHANNEL) and qc.channel_axis is not None
                    and str(qc.observer_algorithm).lower() == "minmax" and _plain_symmetric(qc)):
                rest = True
                continue
            view = w.detach().transpose(0, qc.channel_axis).flatten(start_dim=1)
            lo = view.amin(dim=1).clamp(max=0).double()
            hi = view.amax(dim=1).clamp(min=0).double()
            scale = (2 * torch.maximum(hi.abs(), lo.abs())) / float(qc.quant_max - qc.quant_min)
            scale = torch.clamp(scale, min=OBSERVER_MIN_SCALE).float()
            qc.scale = scale.to(w.device)
            qc.offset = torch.zeros_like(qc.scale)
            qc.state = QuantizationStates.ACTIVATED
    if rest:
        ParameterQuantizePass().optimize(graph=graph, dataloader=dataloader, executor=executor,
                                         **kwargs)


def weight_pass():
    """An instance of xtrt's parameter pass as a PPQ optimisation pass (see the module doc)."""
    from ppq.quantization.optim import QuantizationOptimizationPass

    class WeightScalePass(QuantizationOptimizationPass):
        def __init__(self):
            super().__init__(name="xtrt Parameter Quantization Pass (vectorised)")

        def optimize(self, graph, dataloader=None, executor=None, **kwargs):
            _weight_pass_once(graph, executor=executor, dataloader=dataloader, **kwargs)

    return WeightScalePass()


def weight_scales(graph) -> None:
    """Per-output-channel weight scale = max|w| / 127, as TensorRT computes it
    (:func:`xtrt.trt.rules.weight_scale`).

    PPQ divides the range by 127.5 (``(quant_max - quant_min) / 2``), so each channel's largest
    weight rounds to 128 and is clipped to 127: with 9 weights per depthwise channel that clipped
    maximum dominates the error (EfficientNet-Lite0: 15.3 -> 19.3 dB weight-only SQNR)."""
    import torch
    from ppq.core import QuantizationStates

    for op in graph.operations.values():
        cfg = getattr(op, "config", None)
        if cfg is None:
            continue
        for var, qc in zip(op.inputs, cfg.input_quantization_config):
            if not var.is_parameter or qc.state == QuantizationStates.FP32 or qc.scale is None:
                continue
            w = var.value
            if not isinstance(w, torch.Tensor) or w.ndim < 1 or qc.scale.numel() <= 1 and w.ndim > 1:
                continue
            axis = qc.channel_axis if qc.channel_axis is not None else 0
            scale = torch.from_numpy(weight_scale(w.detach().float().cpu().numpy(), axis))
            if scale.numel() == qc.scale.numel():
                qc.scale = scale.to(qc.scale.device).reshape(qc.scale.shape)


def kl_best_bins(hists: np.ndarray, quant_bins: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """PPQ's kl clip search on ``hists`` [tensors, bins]: per tensor the chosen bin range
    (``best_bin_range``) and whether the runner-up was within :data:`KL_TIE` of it.  On one
    torch thread: 32 small steps, where a second thread only waits at barriers (measured on the
    shared 2-core CPU: 0.1 s on one thread, 1.5 s on two, for 24 histograms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _kl_best_bins(hists, quant_bins)
    finally:
        torch.set_num_threads(before)


def _kl_best_bins(hists: np.ndarray, quant_bins: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    h = torch.from_numpy(np.asarray(hists)).float().clone()
    t, bins = h.shape
    h[:, : int(bins * .002)] = 0
    h[:, int(bins * .002)] = 1
    total = h.sum(dim=1, keepdim=True)
    ranges = list(range(quant_bins, bins + quant_bins - 1, quant_bins))
    kls = torch.empty((t, len(ranges)), dtype=torch.float64)
    for j, r in enumerate(ranges):
        p = h[:, :r].clone()
        p[:, r - 1] += h[:, r:].sum(dim=1)
        p = p / total
        q = h[:, :r].reshape(t, quant_bins, r // quant_bins)
        pos = q > 0
        cnt = pos.sum(dim=2, keepdim=True)
        cnt[cnt == 0] = 1
        q = torch.div(q.sum(dim=2, keepdim=True), cnt) * pos
        q = q / q.sum(dim=(1, 2), keepdim=True)
        pd, qd = p.double(), q.reshape(t, r).double()
        kls[:, j] = (pd * (torch.log10(pd + KL_EPS) - torch.log10(qd + KL_EPS))).sum(dim=1)
    order = torch.sort(kls, dim=1, stable=True)
    best = order.indices[:, 0].numpy()
    if len(ranges) > 1:
        gap = (order.values[:, 1] - order.values[:, 0]).numpy()
        tie = gap <= KL_TIE * np.maximum(np.abs(order.values[:, 0].numpy()), 1e-12)
    else:
        tie = np.zeros(t, bool)
    return np.asarray(ranges)[best], tie


def _xlogx(x: np.ndarray) -> np.ndarray:
    """``x log x`` with ``0 log 0 = 0`` (``x >= 0``)."""
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1)), 0.0)


def entropy_best_bins(hists: np.ndarray, quant_bins: int = 128, start: int = 128,
                      chunk: int = 8) -> np.ndarray:
    """TensorRT's entropy calibration (the legacy ``IInt8EntropyCalibrator2`` algorithm, as
    NVIDIA's pytorch-quantization ``_compute_amax_entropy`` writes it) on ``hists`` [tensors,
    bins] of ``|x|`` over ``[0, max|x|]``: per tensor the bin edge ``i`` whose clip ``[0, i)``
    gives the least KL divergence between the clipped distribution (the tail added to its last
    bin) and its ``quant_bins``-level quantization (each level's count spread evenly over its
    non-empty bins); every ``i`` from ``start`` to ``bins`` is tried and the largest among
    equal minima kept.  Bin 0's count is replaced by bin 1's (exact zeros of a ReLU would
    dominate).  The clip is ``i`` bin widths.

    Vectorised: with cumulative sums of ``b``, ``b log b`` and of the non-empty-bin count, each
    candidate's divergence is a sum over its ``quant_bins`` levels (``O(tensors x bins x
    quant_bins)``, not ``bins^2``):  ``KL = sum p log p - sum p log q``, where ``p = b / P``
    (``P`` all counts, the tail on bin ``i-1``), ``q = (S_g / C_g) / Q`` on the non-empty bins of
    level ``g`` (``S_g`` its count, ``C_g`` its non-empty bins, ``Q`` the counts below ``i``).
    A candidate whose last bin is empty while the tail is not has ``q = 0`` where ``p > 0``:
    infinite, never chosen."""
    h = np.asarray(hists, dtype=np.float64).copy()
    if h.ndim != 2 or h.shape[1] < start:
        raise ValueError(f"entropy search needs [tensors, >= {start}] histograms, got {h.shape}")
    h[:, 0] = h[:, 1]
    t, bins = h.shape
    cands = np.arange(start, bins + 1)
    # level edges of candidate i: bins [ceil(i*g/Q), ceil(i*(g+1)/Q)) (np.digitize on linspace)
    edges = np.stack([np.ceil(np.linspace(0, i, quant_bins + 1)).astype(np.int64) for i in cands])
    zero = np.zeros((t, 1))
    cb = np.concatenate([zero, np.cumsum(h, axis=1)], axis=1)           # [t, bins + 1]
    cl = np.concatenate([zero, np.cumsum(_xlogx(h), axis=1)], axis=1)
    cn = np.concatenate([zero, np.cumsum(h > 0, axis=1)], axis=1)
    total = cb[:, -1:]                                                   # P, [t, 1]
    out = np.empty(t, dtype=np.int64)
    for lo in range(0, t, chunk):
        sl = slice(lo, lo + chunk)
        b, l, n, P = cb[sl], cl[sl], cn[sl], total[sl]
        s = b[:, edges[:, 1:]] - b[:, edges[:, :-1]]                   # S_g  [tc, cands, Q]
        c = n[:, edges[:, 1:]] - n[:, edges[:, :-1]]                   # C_g
        with np.errstate(divide="ignore", invalid="ignore"):
            level = np.where(s > 0, s * np.log(np.where(s > 0, s, 1) / np.where(c > 0, c, 1)), 0.)
            tail = P - b[:, cands]                                     # counts at or past i
            last = h[sl][:, cands - 1]                                 # b_{i-1}
            q_last = np.log(np.where(s[:, :, -1] > 0, s[:, :, -1], 1)
                            / np.where(c[:, :, -1] > 0, c[:, :, -1], 1))
            below = b[:, cands]                                        # Q
            # sum p log p: bins below i-1 as they are, bin i-1 with the tail on it
            plogp = (l[:, cands - 1] + _xlogx(last + tail)) / P - np.log(P)
            plogq = (level.sum(axis=2) + tail * q_last) / P - np.log(np.where(below > 0, below, 1))
            kl = plogp - plogq
        kl = np.where((last == 0) & (tail > 0), np.inf, kl)
        kl = np.where(np.isfinite(kl), kl, np.inf)
        # the largest i among equal minima (pytorch-quantization's last argmin); tolerance for
        # the summation order of the cumulative sums
        best = kl.min(axis=1, keepdims=True)
        ok = kl <= best + 1e-12 * np.maximum(1.0, np.abs(best))
        out[sl] = cands[kl.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)]
    return out


def mse_losses(hists: np.ndarray, levels: int = 256) -> tuple[np.ndarray, list[int]]:
    """PPQ's symmetric per-tensor mse losses on ``hists`` [tensors, bins]: ``[tensors,
    candidates]`` and each candidate's ``end`` (in bins), in PPQ's order (min-max first, then
    each step).  Each loss is PPQ's ``compute_mse_loss`` term for term, summed in its order (a
    sequential cumulative sum), so it is the same float."""
    h = np.asarray(hists, dtype=np.float64)
    t, bins = h.shape
    idx = np.arange(bins)
    steps = [(bins // levels + 1)] + [s for s in range(1, bins // levels + 1)
                                      if levels * s <= bins + levels]
    total = np.asarray([float(int(v)) for v in np.asarray(hists).sum(axis=1)])
    losses = np.empty((t, len(steps)))
    for j, step in enumerate(steps):
        end = levels * step
        left = idx % step
        right = step - left - 1
        err = np.where(left == right, left + 0.25, np.minimum(left + 0.5, right + 0.5))
        err = np.where(idx > end, (idx - end) + 0.5, err)
        terms = (h * err) * err / total[:, None]
        losses[:, j] = np.cumsum(terms, axis=1)[:, -1]
    return losses, [levels * s for s in steps]


def mse_best_ends(hists: np.ndarray, levels: int = 256) -> np.ndarray:
    """The ``best_end`` PPQ's mse search picks per tensor (the first smallest loss, as its
    stable sort)."""
    losses, ends = mse_losses(hists, levels)
    return np.asarray(ends)[np.argmin(losses, axis=1)]


def hist_scales(method: str, items: Sequence[tuple[np.ndarray, float, object, object]]
                ) -> list[tuple[float, float]]:
    """(scale, offset) for each ``(histogram, bin width, config, variable)`` of ``method``
    (kl | mse), as PPQ's observer's ``hist_to_scale_offset`` gives them."""
    from ppq.core import OBSERVER_KL_HIST_BINS, OBSERVER_MIN_SCALE
    from ppq.quantization.observer.range import minmax_to_scale_offset

    def ppq_own(hist, width, qc, var):
        return _ppq_hist_scale(method, hist, width, qc, var)

    out: list = [None] * len(items)
    if method == "entropy":
        # xtrt's own search (PPQ has none): the clip, then PPQ's rule for the config's policy
        if not items:
            return out
        by_len: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            by_len.setdefault(len(it[0]), []).append(i)
        for ids in by_len.values():
            best = entropy_best_bins(np.stack([np.asarray(items[i][0]) for i in ids]))
            for i, b in zip(ids, best):
                amax = int(b) * float(items[i][1])
                out[i] = minmax_to_scale_offset(-amax, amax, items[i][2], OBSERVER_MIN_SCALE)
        return out
    groups: dict[tuple, list[int]] = {}
    for i, (hist, width, qc, var) in enumerate(items):
        if not _plain_symmetric(qc) or qc.policy.has_property(_per_channel()) or hist.ndim != 1:
            out[i] = ppq_own(hist, width, qc, var)
        else:
            groups.setdefault((len(hist), qc.num_of_bits, qc.quant_max - qc.quant_min), []).append(i)
    for (bins, bits, span), ids in groups.items():
        stack = np.stack([items[i][0] for i in ids])
        if method == "kl":
            best, tie = kl_best_bins(stack, 2 ** (bits - 1))
            for i, b, close in zip(ids, best, tie):
                hist, width, qc, var = items[i]
                if close:
                    out[i] = ppq_own(hist, width, qc, var)
                    continue
                scale = (int(b) / OBSERVER_KL_HIST_BINS) * float(width) * \
                    (OBSERVER_KL_HIST_BINS / 2 ** (bits - 1))
                out[i] = (max(scale, OBSERVER_MIN_SCALE), 0)
        else:
            ends = mse_best_ends(stack, span + 1)
            for i, end in zip(ids, ends):
                width, qc = float(items[i][1]), items[i][2]
                out[i] = minmax_to_scale_offset(-(int(end) * width), int(end) * width, qc,
                                                OBSERVER_MIN_SCALE)
    return out


def _ppq_hist_scale(method: str, hist: np.ndarray, width: float, qc, var) -> tuple:
    """PPQ's own ``hist_to_scale_offset`` of the kl / mse observer, for one tensor."""
    import torch
    from ppq.quantization.observer.range import TorchHistObserver, TorchMSEObserver

    obs = {"kl": TorchHistObserver, "mse": TorchMSEObserver}[method](watch_on=var, quant_cfg=qc)
    return obs.hist_to_scale_offset(histogram=torch.from_numpy(hist.astype(np.int64)),
                                    hist_bins=len(hist), hist_scale=float(width), config=qc)


def ppq_hist_scales(method: str, items: Sequence[tuple]) -> list[tuple[float, float]]:
    """:func:`hist_scales` the way PPQ computes them: its observer, one tensor at a time
    (entropy, which PPQ does not have: xtrt's search)."""
    if method == "entropy":
        return hist_scales(method, items)
    return [_ppq_hist_scale(method, *it) for it in items]


def _per_channel():
    from ppq.core import QuantizationProperty

    return QuantizationProperty.PER_CHANNEL


def activation_configs(graph):
    """(variable, config, consuming op) for every activation input config, in graph order.

    PPQ overlaps a config when another one owns the tensor's quantization (the output config of a
    GlobalAveragePool/AveragePool feeding a Conv, the configs of a fused pair): such a config is
    ``OVERLAPPED`` and ``dominated_by`` points at its owner, whose scale it shares."""
    for op in graph.operations.values():
        cfg = getattr(op, "config", None)
        if cfg is None:
            continue
        for var, qc in zip(op.inputs, cfg.input_quantization_config):
            if not var.is_parameter:
                yield var, qc, op


def apply_stats(graph, method: str, ranges: dict, hists: dict, reapply: bool = False,
                search=None) -> None:
    """Activate every activation quant config from statistics collected on ONNX Runtime, with
    PPQ's rules: ``minmax_to_scale_offset`` for ranges, the kl / mse observer's
    ``hist_to_scale_offset`` for histograms (batched: :func:`hist_scales`).

    The scale is set on the dominant config (``dominated_by``), once, from the statistics of the
    tensor its consumers read; overlapped configs then share it, as PPQ intends.  ``search``:
    the histogram rule (:func:`hist_scales` by default, :func:`ppq_hist_scales` for PPQ's own)."""
    import torch
    from ppq.core import QuantizationStates
    from ppq.quantization.observer.range import minmax_to_scale_offset

    by_hist = method in HIST_METHODS
    missing: list[str] = []
    todo: list[tuple] = []           # (root, var, "hist" | "range")
    seen: set[int] = set()
    for var, qc, op in activation_configs(graph):
        root = qc.dominated_by
        if id(root) in seen:
            continue
        if root.state != QuantizationStates.INITIAL and not (
                reapply and root.state == QuantizationStates.ACTIVATED):
            continue
        if by_hist and var.name in hists:
            todo.append((root, var, "hist"))
        elif var.name in ranges:
            todo.append((root, var, "range"))
        else:
            missing.append(f"{op.name} ({op.type}) input {var.name!r}")
            continue
        seen.add(id(root))
    if missing:
        raise QuantizationError(
            f"no calibration statistics for {len(missing)} quantized input(s), e.g. node "
            f"{missing[0]}: ONNX Runtime did not report that tensor",
            "report the model to xtrt; meanwhile exclude the node with "
            f"quantization.exclude_nodes: [{missing[0].split(' ')[0]}]")
    hist_items = [(np.asarray(hists[v.name][0]), hists[v.name][1], r, v)
                  for r, v, k in todo if k == "hist"]
    found = iter((search or hist_scales)(method, hist_items) if hist_items else [])
    for root, var, kind in todo:
        if kind == "hist":
            scale, offset = next(found)
        else:
            lo, hi = ranges[var.name]
            scale, offset = minmax_to_scale_offset(float(lo), float(hi), root)
        root.scale = torch.tensor(scale, dtype=torch.float32)
        root.offset = torch.tensor(offset, dtype=torch.float32)
        root.state = QuantizationStates.ACTIVATED
