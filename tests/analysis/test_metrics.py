"""Tensor fidelity metrics on arrays with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from xtrt.analysis.metrics import (
    OutputComparer, compare_outputs, cosine, isclose_share, rank_agreement, sqnr_db,
)
from xtrt.errors import DataError


def _alternating(n: int, amp: float) -> np.ndarray:
    return amp * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)


def test_sqnr_known_noise():
    ref = np.ones(100) * 2.0  # sum ref^2 = 400
    test = ref + _alternating(100, 0.2)  # sum noise^2 = 4 -> ratio 100 -> 20 dB
    assert sqnr_db(ref, test) == pytest.approx(20.0, abs=1e-9)
    test = ref + _alternating(100, 0.02)  # ratio 10_000 -> 40 dB
    assert sqnr_db(ref, test) == pytest.approx(40.0, abs=1e-9)


def test_sqnr_edge_cases():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert sqnr_db(a, a.copy()) == math.inf
    assert sqnr_db(np.zeros(4), np.zeros(4)) == math.inf
    assert sqnr_db(np.zeros(4), np.ones(4)) == -math.inf
    assert sqnr_db(np.zeros(0), np.zeros(0)) == math.inf
    assert math.isnan(sqnr_db(np.ones(3), np.array([1.0, np.nan, 1.0])))


def test_cosine_known():
    assert cosine(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx(1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(0.0)
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine(np.array([1.0, 0.0]), np.array([-1.0, 0.0])) == pytest.approx(-1.0)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine(np.zeros(3), np.ones(3)) == 0.0


def test_isclose_share_exact():
    ref = np.ones(10)
    test = ref.copy()
    test[:3] += 0.01  # |d| = 0.01 > atol + rtol*1 = 1.001e-3
    test[3] += 0.0009  # within 1.001e-3
    assert isclose_share(ref, test) == pytest.approx(0.7)
    assert isclose_share(ref, test, rtol=0.02) == 1.0
    assert isclose_share(np.zeros(0), np.zeros(0)) == 1.0


def test_shape_mismatch_message():
    with pytest.raises(DataError, match=r"FP32 shape \(2, 3\) differs from quantized shape \(3, 2\)"):
        sqnr_db(np.zeros((2, 3)), np.zeros((3, 2)))


def test_rank_agreement_crafted():
    ref = np.array([[0.1, 0.5, 0.3, 0.2],
                    [0.9, 0.1, 0.0, 0.4]])
    # row 0: INT8 swaps ranks 1 and 2 (indices 1 and 2); row 1 identical
    test = np.array([[0.1, 0.3, 0.5, 0.2],
                     [0.9, 0.1, 0.0, 0.4]])
    rows = rank_agreement(ref, test, max_rank=10)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]  # capped at C
    assert rows[0]["mae"] == pytest.approx(0.1)  # |0.5-0.3| in row 0, 0 in row 1 -> mean 0.1
    assert rows[0]["disagree_pct"] == pytest.approx(50.0)
    assert rows[1]["mae"] == pytest.approx(0.1)
    assert rows[1]["disagree_pct"] == pytest.approx(50.0)
    assert rows[2] == {"rank": 3, "mae": 0.0, "disagree_pct": 0.0}
    assert rank_agreement(ref, test, max_rank=2)[-1]["rank"] == 2


def test_rank_agreement_flattens_per_sample():
    ref = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    rows = rank_agreement(ref, ref, max_rank=3)
    assert len(rows) == 3 and all(r["disagree_pct"] == 0 and r["mae"] == 0 for r in rows)


def test_comparer_streaming_equals_whole():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(10, 8)).astype(np.float32)
    test = ref + rng.normal(scale=0.05, size=ref.shape).astype(np.float32)
    cmp = OutputComparer(["y"])
    for i in range(0, 10, 3):
        cmp.update([ref[i:i + 3]], {"y": test[i:i + 3]})
    stream = cmp.result()["y"]
    whole = compare_outputs([ref], [test], ["y"])["y"]
    batched = compare_outputs([[ref[:4], ref[4:]]], [[test[:4], test[4:]]], ["y"])["y"]
    for res in (stream, batched):
        for key in ("sqnr_db", "cosine", "isclose", "max_abs", "mean_abs"):
            assert res[key] == pytest.approx(whole[key], rel=1e-9)
        assert len(res["rank"]) == len(whole["rank"])
        for got, want in zip(res["rank"], whole["rank"]):
            assert got["rank"] == want["rank"]
            assert got["mae"] == pytest.approx(want["mae"])
            assert got["disagree_pct"] == pytest.approx(want["disagree_pct"])
    assert whole["sqnr_db"] == pytest.approx(sqnr_db(ref, test))
    assert whole["cosine"] == pytest.approx(cosine(ref, test))
    assert whole["max_abs"] == pytest.approx(float(np.max(np.abs(ref - test))))
    assert whole["shape"] == [8] and whole["numel"] == 80 and whole["nonfinite"] == 0
    assert len(whole["rank"]) == 8


def test_comparer_counts_nonfinite_and_checks_names():
    cmp = OutputComparer(["a", "b"], max_rank=0)
    cmp.update([np.ones((1, 2)), np.ones((1, 3))], [np.array([[1.0, np.nan]]), np.ones((1, 3))])
    res = cmp.result()
    assert res["a"]["nonfinite"] == 1 and math.isnan(res["a"]["sqnr_db"])
    assert math.isnan(res["a"]["max_abs"])
    assert res["b"]["sqnr_db"] == math.inf and res["b"]["rank"] == []
    with pytest.raises(DataError, match=r"quantized gave 1 outputs, expected 2"):
        cmp.update([np.ones((1, 2)), np.ones((1, 3))], [np.ones((1, 2))])
    with pytest.raises(DataError, match=r"FP32 outputs lack \['b'\]"):
        cmp.update({"a": np.ones((1, 2))}, [np.ones((1, 2)), np.ones((1, 3))])
    with pytest.raises(DataError, match=r"output 'a': batch with per-sample shape \(5,\)"):
        cmp.update([np.ones((1, 5)), np.ones((1, 3))], [np.ones((1, 5)), np.ones((1, 3))])
