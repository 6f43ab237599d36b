"""xtrt.quant.checks: scales, FP32 reference outputs and reported figures must be real numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xtrt.data.source import Batch
from xtrt.errors import DataError, QuantizationError
from xtrt.quant.checks import check_evaluation, check_reference, check_scales


class _Cal:
    def __init__(self, scales):
        self.act_scales = scales


def test_good_scales_pass():
    check_scales({"a": 0.01, "b": 1e-8})
    check_scales(_Cal({("conv1", 0): 0.5}))


@pytest.mark.parametrize("value,why", [(float("nan"), "nan"), (float("inf"), "inf"), (0.0, "0"),
                                       (-1.0, "-1")])
def test_bad_scale_names_the_tensor(value, why):
    with pytest.raises(QuantizationError) as e:
        check_scales({"ok": 0.1, "r1": value, "r2": value})
    msg = str(e.value)
    assert msg.startswith(f"activation scale of tensor 'r1' is {why} (and 1 more tensors): ")
    assert "(fix: check the calibration data" in msg


def test_bad_scale_of_a_calibration_result():
    with pytest.raises(QuantizationError, match="activation scale of tensor input 0 of node 'conv1' is nan: "
                                                "the calibration data or the activations hold NaN/Inf"):
        check_scales(_Cal({("conv1", 0): float("nan")}))


def test_reference_outputs_must_be_finite():
    b = Batch({"x": np.zeros((2, 1))}, [Path("a.png"), Path("b.png")])
    check_reference([[np.ones((2, 3))]], ["y"], [b])
    with pytest.raises(DataError) as e:
        check_reference([[np.array([[1.0, np.nan]])]], ["y"], [b])
    assert str(e.value).startswith("the FP32 model's output 'y' holds NaN/Inf on the held-out data "
                                   "(batch of a.png, ...)")
    check_reference([[np.array([[1, 2]], np.int64)]], ["idx"], [b])  # integer outputs are fine


def test_reported_figures_must_be_numbers():
    good = {"y": {"nonfinite": 0, "sqnr_db": 30.0, "cosine": 0.999}}
    check_evaluation(good)
    check_evaluation({"y": {"nonfinite": 0, "sqnr_db": float("inf"), "cosine": 1.0}})  # identical
    with pytest.raises(QuantizationError) as e:
        check_evaluation({**good, "boxes": {"nonfinite": 12, "sqnr_db": float("inf"), "cosine": 1.0}})
    assert str(e.value).startswith("the INT8 model's output 'boxes' holds 12 NaN/Inf values on the "
                                   "held-out data; its SQNR would be meaningless")
    with pytest.raises(QuantizationError, match="sqnr_db of PPQ's simulation's output 'y' is not a number"):
        check_evaluation({"y": {"nonfinite": 0, "sqnr_db": float("nan"), "cosine": 1.0}},
                         "PPQ's simulation")
