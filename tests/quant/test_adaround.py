"""AdaRound through xtrt's PPQ backend (``xtrt.backend.ppq._optim._hard_checked_adaround``) on
the tests' tiny classifier (tests/conftest.py), random inputs, 3 calibration batches.  (Not
make_models.tiny_add: there the export and PPQ's simulation differ by ~5e-3 without any
pass, a separate matter.)

* the exported Q/DQ model equals PPQ's simulation after the pass: max |difference| at most 1e-4
  of the output's largest magnitude (ONNX Runtime with graph optimizations off, as
  tests/quant/test_techniques.py);
* the pass never moves a weight scale (TensorRT's ``max|w| / 127`` stays) and leaves every
  weight on its INT8 grid;
* a block whose hard (exported) rounding is worse than nearest rounding is withdrawn, and the
  technique record counts it.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from tests.conftest import make_classifier

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.placement import plan_placement

    path = make_classifier(tmp_path_factory.mktemp("adaround") / "tiny.onnx", hw=(16, 16))
    prep = prepare_model(load_model(path), [4, 3, 16, 16], None)
    rng = np.random.default_rng(0)
    batches = [{prep.input_name: rng.normal(0, 1, (4, 3, 16, 16)).astype(np.float32)}
               for _ in range(3)]
    return prep, plan_placement(prep.model), batches


def _calibrated(prep, placement, batches):
    from xtrt.backend import ppq as B
    from xtrt.quant.calibrate import placed_activations
    from xtrt.quant.observe import collect_ranges

    t = placed_activations(prep.model, placement)
    return B.calibrate(prep.model, batches, method="minmax", progress=False,
                       act_ranges=collect_ranges(prep.body, t, batches, method="minmax"))


def _run(tiny, **settings):
    """(calibration result before, after, the pass's record)."""
    import copy

    import torch

    from xtrt.backend import ppq as B

    prep, placement, batches = tiny
    cal = _calibrated(prep, placement, batches)
    before = (copy.deepcopy(cal.weights), {k: v[0].copy() for k, v in cal.weight_scales.items()})
    random.seed(0)
    torch.manual_seed(0)
    rec = B.optimize(cal, batches, adaround={"batches": 8, **settings}, progress=False)
    return before, cal, rec["adaround"]


def _export_vs_simulation(prep, cal, placement, feeds) -> float:
    from xtrt.backend import ppq as B
    from xtrt.quant.export import export_qdq
    from xtrt.runtime.session import make_session

    q = export_qdq(prep.model, cal, placement)
    out = make_session(q, "cpu", optimization="disable").run(None, feeds)[0]
    sim = B.simulate(cal, feeds)[0]
    return float(np.abs(out - sim).max() / np.abs(sim).max())


@pytest.fixture(scope="module")
def trained(tiny):
    return _run(tiny, steps=20, lr=1e-3)


def test_adaround_export_equals_simulation(tiny, trained):
    prep, placement, batches = tiny
    (w0, _), cal, rec = trained
    assert rec["batches"] == 3 and rec["blocks"] >= 1        # all calibration batches (< 8)
    assert rec["withdrawn"] < rec["blocks"]                   # something was kept ...
    assert any(not np.array_equal(w0[k], cal.weights[k]) for k in w0)   # ... and reaches the export
    for feeds in batches:
        assert _export_vs_simulation(prep, cal, placement, feeds) < TOL


def test_adaround_keeps_weight_scales_and_the_int8_grid(tiny, trained):
    prep, _, _ = tiny
    (w0, s0), cal, _ = trained
    weight_of = {(n.name, i): t for n in prep.model.graph.node for i, t in enumerate(n.input)}
    assert set(s0) == set(cal.weight_scales)
    checked = 0
    for k, s in s0.items():
        assert np.array_equal(cal.weight_scales[k][0], s), k   # max|w|/127, not PPQ's tuning
        w = cal.weights[weight_of[k]]
        if np.array_equal(w, w0[weight_of[k]]):
            continue                 # withdrawn: float weights, the export rounds to nearest
        q = w / s.reshape([-1] + [1] * (w.ndim - 1))
        assert np.abs(q - np.round(q)).max() < 1e-3, k
        assert q.min() >= -128.5 and q.max() <= 127.5, k
        checked += 1
    assert checked >= 1


def test_block_worse_with_hard_rounding_is_withdrawn(tiny):
    """No rounding regularizer (gamma 0) and a large lr: the soft rounding fits the block better
    than nearest rounding while its hard rounding does worse (measured: 1 of 3 blocks), which
    PPQ's own check keeps; the pass puts the block's weights back."""
    prep, placement, batches = tiny
    (w0, _), cal, rec = _run(tiny, steps=30, lr=1e-1, gamma=0.0)
    assert rec["withdrawn_on_hard"] >= 1 and rec["withdrawn"] >= rec["withdrawn_on_hard"]
    assert any(np.array_equal(w0[k], cal.weights[k]) for k in w0)       # a block put back
    assert _export_vs_simulation(prep, cal, placement, batches[0]) < TOL


def test_technique_record_counts_withdrawn_blocks(tiny):
    """A huge lr wrecks every block: all are withdrawn, the weights are unchanged, and the
    report's technique record (xtrt.quant.techniques.after_calibration) says so."""
    from xtrt.config import config_from_dict
    from xtrt.quant import techniques

    prep, placement, batches = tiny
    cfg = techniques.resolve(config_from_dict({
        "model": "m.onnx", "quantization": {"adaround": {"steps": 10, "lr": 1e3}}}))
    cal = _calibrated(prep, placement, batches)
    w0 = {k: v.copy() for k, v in cal.weights.items()}
    info = techniques.after_calibration(cfg, cal, {}, batches, progress=False)
    rec = info["passes"]["adaround"]
    assert rec["batches"] == 3 and rec["steps"] == 10 and rec["lr"] == 1e3
    assert rec["blocks"] >= 1 and rec["withdrawn"] == rec["blocks"]
    assert all(np.array_equal(w0[k], cal.weights[k]) for k in w0)


def _adaround_then_lsq(tiny, after: bool, train: str = "activation_scales"):
    """AdaRound 20 steps and LSQ 50 steps at lr 1e-4 (measured: every activation scale of the
    tiny model moves, no block withdrawn) in one ``optimize`` call; returns (result, record)."""
    import torch

    from xtrt.backend import ppq as B

    prep, placement, batches = tiny
    cal = _calibrated(prep, placement, batches)
    random.seed(0)
    torch.manual_seed(0)
    rec = B.optimize(cal, batches, adaround={"batches": 8, "steps": 20, "lr": 1e-3},
                     lsq={"batches": 8, "steps": 50, "lr": 1e-4, "train": train,
                          "after_adaround": after}, progress=False)
    return cal, rec


def test_lsq_activation_scales_after_adaround_keeps_its_rounding(tiny, trained):
    """quantization.lsq.after_adaround + train: activation_scales: AdaRound runs first, LSQ
    then moves activation scales only, so the weights (and their scales) are exactly AdaRound's
    and the export still equals PPQ's simulation."""
    prep, placement, batches = tiny
    (_, s0), ada, _ = trained                       # AdaRound alone, same seed and settings
    cal, rec = _adaround_then_lsq(tiny, after=True)
    assert list(rec) == ["adaround", "lsq"]
    for k, w in ada.weights.items():
        assert np.array_equal(cal.weights[k], w), k
    for k, s in s0.items():
        assert np.array_equal(cal.weight_scales[k][0], s), k
    for k, b in ada.biases.items():
        assert np.array_equal(cal.biases[k], b), k
    moved = [k for k, v in cal.act_scales.items() if not np.isclose(v, ada.act_scales[k])]
    assert moved, "LSQ changed no activation scale"
    for feeds in batches:
        assert _export_vs_simulation(prep, cal, placement, feeds) < TOL


def test_lsq_before_adaround_by_default_and_train_all_moves_weights(tiny, trained):
    """Without after_adaround LSQ runs first (PPQ's order); LSQ's train: all moves weights off
    AdaRound's grid, which is what activation_scales is for."""
    (_, s0), ada, _ = trained
    _, rec = _adaround_then_lsq(tiny, after=False)
    assert list(rec) == ["lsq", "adaround"]
    cal, _ = _adaround_then_lsq(tiny, after=True, train="all")
    assert any(not np.array_equal(cal.weights[k], w) for k, w in ada.weights.items())
