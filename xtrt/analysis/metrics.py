"""Tensor fidelity metrics: how close an INT8 output is to its FP32 reference.

Pure numpy functions on one pair of arrays (:func:`sqnr_db`, :func:`cosine`, :func:`isclose_share`,
:func:`rank_agreement`) and a streaming accumulator (:class:`OutputComparer`) that gives the same
numbers over many batches without keeping them in memory; :func:`compare_outputs` wraps it for
in-memory lists.

Conventions, in every function here:
  * ``ref`` is the FP32 reference, ``test`` the quantized output; both are cast to float64.
  * Identical arrays (including two all-zero or two empty arrays) give SQNR ``inf``, cosine 1.0,
    isclose share 1.0.
  * An all-zero reference with a non-zero test gives SQNR ``-inf`` (the test is pure noise) and
    cosine 0.0.
  * Non-finite values in ``test`` propagate (SQNR/cosine become nan); the comparer counts them
    separately in ``nonfinite`` so that a report can say why.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xtrt.errors import DataError

__all__ = [
    "sqnr_db", "cosine", "isclose_share", "rank_agreement", "OutputComparer", "compare_outputs",
]

log = logging.getLogger(__name__)


def _pair(ref: Any, test: Any, what: str = "output") -> tuple[np.ndarray, np.ndarray]:
    """Cast both arrays to float64 and check that their shapes match."""
    r = np.asarray(ref, dtype=np.float64)
    t = np.asarray(test, dtype=np.float64)
    if r.shape != t.shape:
        raise DataError(
            f"{what}: FP32 shape {tuple(r.shape)} differs from quantized shape {tuple(t.shape)}",
            hint="compare the same output of both models, with the same batch and input shape",
        )
    return r, t


def _sqnr_from_sums(signal: float, noise: float) -> float:
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _cosine_from_sums(dot: float, ref2: float, test2: float) -> float:
    if any(math.isnan(v) for v in (dot, ref2, test2)):
        return math.nan
    if ref2 == 0.0 and test2 == 0.0:
        return 1.0
    if ref2 == 0.0 or test2 == 0.0:
        return 0.0
    return float(dot / (math.sqrt(ref2) * math.sqrt(test2)))


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10*log10(sum(ref^2) / sum((ref-test)^2))``.

    Returns ``inf`` when the arrays are identical, ``-inf`` when ``ref`` is all zero and ``test``
    is not. Higher is better; about 6 dB per bit, so a good INT8 tensor sits at 30-40 dB.
    """
    r, t = _pair(ref, test)
    return _sqnr_from_sums(float(np.sum(r * r)), float(np.sum((r - t) ** 2)))


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    """Cosine similarity of the two arrays flattened: 1.0 same direction, 0.0 orthogonal.

    Two all-zero arrays give 1.0; one all-zero array against a non-zero one gives 0.0.
    """
    r, t = _pair(ref, test)
    return _cosine_from_sums(float(np.dot(r.ravel(), t.ravel())),
                             float(np.dot(r.ravel(), r.ravel())),
                             float(np.dot(t.ravel(), t.ravel())))


def isclose_share(ref: np.ndarray, test: np.ndarray, rtol: float = 1e-3, atol: float = 1e-5) -> float:
    """Share (0..1) of elements with ``|test - ref| <= atol + rtol * |ref|``; 1.0 for empty arrays."""
    r, t = _pair(ref, test)
    if r.size == 0:
        return 1.0
    return float(np.count_nonzero(np.isclose(t, r, rtol=rtol, atol=atol)) / r.size)


def _as_rows(a: np.ndarray) -> np.ndarray:
    """[N, ...] -> [N, C]; a 1-D array is one sample per element (C == 1)."""
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(-1, 1)
    return a.reshape(a.shape[0], -1)


def _topk_desc(rows: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values per row, largest first; ties go to the lower index."""
    return np.argsort(-rows, axis=1, kind="stable")[:, :k]


def _rank_sums(r: np.ndarray, t: np.ndarray, max_rank: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per rank: summed |ref - test| at FP32's index, number of rows whose indices differ, rows."""
    r2, t2 = _as_rows(r), _as_rows(t)
    k = min(max_rank, r2.shape[1])
    if r2.shape[0] == 0 or k == 0:
        return np.zeros(k), np.zeros(k, dtype=np.int64), 0
    ref_idx = _topk_desc(r2, k)
    test_idx = _topk_desc(t2, k)
    abs_err = np.abs(np.take_along_axis(r2, ref_idx, 1) - np.take_along_axis(t2, ref_idx, 1))
    return abs_err.sum(axis=0), np.count_nonzero(ref_idx != test_idx, axis=0), r2.shape[0]


def _rank_rows(err_sum: np.ndarray, differ: np.ndarray, rows: int) -> list[dict]:
    if rows == 0:
        return []
    return [{"rank": i + 1, "mae": float(err_sum[i] / rows), "disagree_pct": float(100.0 * differ[i] / rows)}
            for i in range(len(err_sum))]


def rank_agreement(ref: np.ndarray, test: np.ndarray, max_rank: int = 10) -> list[dict]:
    """Per output rank 1..max_rank, how far INT8 is from FP32 where FP32 ranks that value.

    Outputs of shape [N, C] (anything else is flattened per sample to [N, -1]; a 1-D array is N
    samples of one value). Each FP32 row is sorted descending; for rank ``r``, with ``idx_r`` the
    FP32 index at that rank:

      * ``mae``: mean over rows of ``|ref[idx_r] - test[idx_r]|``;
      * ``disagree_pct``: percentage of rows whose INT8 index at rank ``r`` is not ``idx_r``.

    Ties are broken towards the lower index in both arrays, so equal values that INT8 rounding
    creates count as a disagreement whenever the order changes.

    Returns:
        ``[{"rank": 1, "mae": float, "disagree_pct": float}, ...]``, ``min(max_rank, C)`` entries
        (empty list for zero rows).
    """
    r, t = _pair(ref, test)
    return _rank_rows(*_rank_sums(r, t, max_rank))


class _Acc:
    """Running sums for one output."""

    def __init__(self, name: str, max_rank: int):
        self.name = name
        self.max_rank = max_rank
        self.sample_shape: tuple[int, ...] | None = None
        self.numel = 0
        self.ref2 = self.err2 = self.test2 = self.dot = self.abs_sum = 0.0
        self.max_abs = 0.0
        self.ref_abs_max = 0.0
        self.close = 0
        self.nonfinite = 0
        self.rank_err: np.ndarray | None = None
        self.rank_differ: np.ndarray | None = None
        self.rows = 0

    def update(self, ref: Any, test: Any, rtol: float, atol: float) -> None:
        r, t = _pair(ref, test, what=f"output {self.name!r}")
        shape = tuple(r.shape[1:]) if r.ndim >= 1 else ()
        if self.sample_shape is None:
            self.sample_shape = shape
        elif shape != self.sample_shape:
            raise DataError(
                f"output {self.name!r}: batch with per-sample shape {shape}, earlier batches had "
                f"{self.sample_shape}",
                hint="feed every batch at the same input shape",
            )
        if r.size == 0:
            return
        finite = np.isfinite(t)
        self.nonfinite += int(r.size - np.count_nonzero(finite))
        d = r - t
        ad = np.abs(d)
        self.numel += r.size
        self.ref2 += float(np.sum(r * r))
        self.test2 += float(np.sum(t * t))
        self.err2 += float(np.sum(d * d))
        self.dot += float(np.dot(r.ravel(), t.ravel()))
        self.abs_sum += float(np.sum(ad))
        self.max_abs = float(np.maximum(self.max_abs, np.max(ad)))  # np.maximum keeps nan
        self.ref_abs_max = float(np.maximum(self.ref_abs_max, np.max(np.abs(r))))
        self.close += int(np.count_nonzero(np.isclose(t, r, rtol=rtol, atol=atol)))
        if self.max_rank > 0 and r.ndim >= 1:
            err, differ, rows = _rank_sums(r, t, self.max_rank)
            if self.rank_err is None:
                self.rank_err, self.rank_differ = err, differ
            else:
                self.rank_err = self.rank_err + err
                self.rank_differ = self.rank_differ + differ
            self.rows += rows

    def result(self) -> dict:
        n = self.numel
        return {
            "shape": list(self.sample_shape) if self.sample_shape is not None else None,
            "numel": n,
            "sqnr_db": _sqnr_from_sums(self.ref2, self.err2),
            "cosine": _cosine_from_sums(self.dot, self.ref2, self.test2),
            "isclose": self.close / n if n else 1.0,
            "max_abs": self.max_abs,
            "mean_abs": self.abs_sum / n if n else 0.0,
            "ref_abs_max": self.ref_abs_max,
            "nonfinite": self.nonfinite,
            "rank": (_rank_rows(self.rank_err, self.rank_differ, self.rows)
                     if self.rank_err is not None else []),
        }


class OutputComparer:
    """Streaming FP32-vs-quantized comparison of named outputs, one batch at a time.

    Example::

        cmp = OutputComparer(["logits"])
        for batch in data:
            cmp.update(fp32_session.run(batch), int8_session.run(batch))
        stats = cmp.result()["logits"]

    Args:
        names: output names, in the order that sequence arguments of :meth:`update` use.
        rtol, atol: tolerance of the ``isclose`` share.
        max_rank: ranks of :func:`rank_agreement` to accumulate (0 to skip; it sorts every row).
    """

    def __init__(self, names: Sequence[str], rtol: float = 1e-3, atol: float = 1e-5, max_rank: int = 10):
        if len(set(names)) != len(names):
            raise DataError(f"output names are not unique: {list(names)}",
                            hint="give each output its own name")
        self.names = list(names)
        self.rtol, self.atol = rtol, atol
        self._acc = {n: _Acc(n, max_rank) for n in self.names}

    def _by_name(self, outputs: Sequence[Any] | Mapping[str, Any], side: str) -> dict[str, Any]:
        if isinstance(outputs, Mapping):
            missing = [n for n in self.names if n not in outputs]
            if missing:
                raise DataError(f"{side} outputs lack {missing}; they have {sorted(outputs)}",
                                hint="compare models with the same output names")
            return {n: outputs[n] for n in self.names}
        if len(outputs) != len(self.names):
            raise DataError(f"{side} gave {len(outputs)} outputs, expected {len(self.names)} "
                            f"({self.names})", hint="compare models with the same outputs, in the same order")
        return dict(zip(self.names, outputs))

    def update(self, ref_outputs: Sequence[Any] | Mapping[str, Any],
               test_outputs: Sequence[Any] | Mapping[str, Any]) -> None:
        """Add one batch: a sequence in ``names`` order or a mapping name -> array, per side."""
        refs = self._by_name(ref_outputs, "FP32")
        tests = self._by_name(test_outputs, "quantized")
        for n in self.names:
            self._acc[n].update(refs[n], tests[n], self.rtol, self.atol)

    def result(self) -> dict[str, dict]:
        """Per output name: ``{"shape": per-sample shape, "numel", "sqnr_db", "cosine", "isclose",
        "max_abs", "mean_abs", "ref_abs_max", "nonfinite", "rank": [rank_agreement rows]}``."""
        out = {n: self._acc[n].result() for n in self.names}
        for n, r in out.items():
            if r["nonfinite"]:
                log.warning("output %r: %d non-finite values in the quantized output", n, r["nonfinite"])
        return out


def compare_outputs(ref_list: Sequence[Any], test_list: Sequence[Any], names: Sequence[str],
                    rtol: float = 1e-3, atol: float = 1e-5, max_rank: int = 10) -> dict[str, dict]:
    """Compare outputs held in memory, several batches each.

    Args:
        ref_list, test_list: one entry per output (in ``names`` order); each entry is an array
            ``[N, ...]`` or a list of such arrays (batches, taken as concatenated along axis 0).
        names: output names.

    Returns:
        ``{name: stats}`` as :meth:`OutputComparer.result`.
    """
    if len(ref_list) != len(names) or len(test_list) != len(names):
        raise DataError(f"got {len(ref_list)} FP32 and {len(test_list)} quantized outputs for "
                        f"{len(names)} names {list(names)}", hint="pass one entry per output name")
    cmp = OutputComparer(names, rtol=rtol, atol=atol, max_rank=max_rank)
    for name, refs, tests in zip(names, ref_list, test_list):
        refs = [refs] if isinstance(refs, np.ndarray) else list(refs)
        tests = [tests] if isinstance(tests, np.ndarray) else list(tests)
        if len(refs) != len(tests):
            raise DataError(f"output {name!r}: {len(refs)} FP32 batches but {len(tests)} quantized",
                            hint="run both models on the same batches")
        for r, t in zip(refs, tests):
            cmp._acc[name].update(r, t, rtol, atol)
    return cmp.result()
