"""PPQ's optimisation passes, equalization, per-tensor choice and effort presets (tiny models).

The exported Q/DQ model is compared with PPQ's simulation on ONNX Runtime with graph optimizations
off: the plain QuantizeLinear/DequantizeLinear arithmetic TensorRT's Q/DQ semantics define.  (With
ORT's optimizations on, its CPU kernels fuse the Q/DQ convolution and round the float bias onto the
int32 accumulator grid: about 7e-5 on the tiny model's first conv, measured, which can flip later
roundings.)  Tolerance: 1e-4 of the output's largest magnitude.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_classifier
from xtrt.quant import techniques

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.placement import plan_placement

    tmp = tmp_path_factory.mktemp("techniques")
    prep = prepare_model(load_model(make_classifier(tmp / "tiny.onnx", hw=(16, 16))),
                         [4, 3, 16, 16], None)
    rng = np.random.default_rng(0)
    batches = [{prep.input_name: rng.normal(0, 1, (4, 3, 16, 16)).astype(np.float32)}
               for _ in range(3)]
    return prep, batches, plan_placement(prep.model)


def _tensors(prep, placement):
    inits = {i.name for i in prep.model.graph.initializer}
    return list(dict.fromkeys(t for n in prep.model.graph.node if n.name in set(placement.quantize)
                              for t in n.input if t and t not in inits))


def _stats(prep, placement, batches):
    from xtrt.quant.observe import collect_histograms, collect_ranges

    t = _tensors(prep, placement)
    out = {m: {"ranges": collect_ranges(prep.body, t, batches, method=m)}
           for m in ("percentile", "minmax")}
    out.update({m: {"hists": collect_histograms(prep.body, t, batches, method=m)}
                for m in ("kl", "mse")})
    return out


def _calibrated(prep, placement, batches):
    from xtrt.backend import ppq as B

    st = _stats(prep, placement, batches)
    return B.calibrate(prep.model, batches, method="percentile", progress=False,
                       act_ranges=st["percentile"]["ranges"]), st


def _export_vs_simulation(prep, cal, placement, feeds) -> float:
    from xtrt.backend import ppq as B
    from xtrt.quant.export import export_qdq
    from xtrt.runtime.session import make_session

    q = export_qdq(prep.model, cal, placement)
    out = make_session(q, "cpu", optimization="disable").run(None, feeds)[0]
    sim = B.simulate(cal, feeds)[0]
    return float(np.abs(out - sim).max() / np.abs(sim).max())


def _snapshot(cal):
    return (dict(cal.act_scales), {k: v[0].copy() for k, v in cal.weight_scales.items()},
            {k: v.copy() for k, v in cal.weights.items()}, {k: v.copy() for k, v in cal.biases.items()})


def _changed(a: dict, b: dict) -> bool:
    return any(not np.allclose(a[k], b[k], rtol=0, atol=0) for k in a)


def test_bias_correction_reaches_the_export(tiny):
    from xtrt.backend import ppq as B

    prep, batches, placement = tiny
    cal, _ = _calibrated(prep, placement, batches)
    before = _snapshot(cal)
    B.optimize(cal, batches, bias_correction={"batches": 2}, progress=False)
    assert _changed(before[3], cal.biases)           # the pass moved at least one bias
    assert _export_vs_simulation(prep, cal, placement, batches[0]) < TOL


def test_lsq_and_adaround_reach_the_export(tiny):
    from xtrt.backend import ppq as B

    prep, batches, placement = tiny
    cal, _ = _calibrated(prep, placement, batches)
    before = _snapshot(cal)
    secs = B.optimize(cal, batches, lsq={"steps": 10, "batches": 2},
                      adaround={"steps": 10, "batches": 2}, progress=False)
    assert set(secs) == {"lsq", "adaround"}
    assert _changed(before[2], cal.weights) or _changed(before[1], cal.weight_scales)
    assert _export_vs_simulation(prep, cal, placement, batches[1]) < TOL


def test_equalization_keeps_the_float_function_and_balances_channels(tiny):
    from xtrt.backend import ppq as B
    from onnx import numpy_helper
    from xtrt.runtime.session import make_session

    prep, batches, _ = tiny
    body = type(prep.body)()
    body.CopyFrom(prep.body)
    changed, pairs = B.equalize(body, iterations=10)
    assert pairs >= 1 and {"w1", "w2"} <= set(changed)
    before = {i.name: numpy_helper.to_array(i) for i in body.graph.initializer}
    assert techniques.apply_initializers(body, changed) == len(changed)
    ref = make_session(prep.body, "cpu").run(None, batches[0])[0]
    got = make_session(body, "cpu").run(None, batches[0])[0]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()

    def spread(w):   # ratio of the largest to the smallest per-output-channel range
        r = np.abs(w).reshape(w.shape[0], -1).max(1)
        return r.max() / r.min()

    assert spread(changed["w1"]) < spread(before["w1"])


def test_per_tensor_choice_takes_each_layers_lowest_error(tiny):
    from xtrt.backend import ppq as B

    prep, batches, placement = tiny
    cal, st = _calibrated(prep, placement, batches)
    chosen = B.choose_per_tensor(cal, st, batches[:1])
    assert chosen and all(set(c["mse"]) == set(st) for c in chosen.values())
    for key, c in chosen.items():
        assert c["method"] == min(c["mse"], key=c["mse"].get)
        node, i = key.rsplit(":", 1)
        one = B.rescale(_calibrated(prep, placement, batches)[0], c["method"],
                        **{k: v for k, v in st[c["method"]].items()})
        assert cal.act_scales[(node, int(i))] == pytest.approx(one.act_scales[(node, int(i))])
    assert _export_vs_simulation(prep, cal, placement, batches[2]) < TOL


def test_effort_presets_fill_only_what_is_unset():
    from xtrt.config import config_from_dict

    fast = techniques.resolve(config_from_dict({"model": "m.onnx",
                                                "quantization": {"effort": "fast"}}))
    q = fast.quantization
    assert fast.calibration.method == techniques.EFFORTS["fast"].method
    assert not (q.lsq.enabled or q.adaround.enabled or q.bias_correction.enabled
                or q.equalization.enabled or q.per_tensor)
    best = techniques.resolve(config_from_dict({
        "model": "m.onnx", "calibration": {"method": "mse"},
        "quantization": {"effort": "best", "lsq": {"enabled": False},
                         "adaround": {"steps": 7}}}))
    assert best.calibration.method == "mse"
    assert best.quantization.lsq.enabled is False
    assert best.quantization.adaround.enabled is True and best.quantization.adaround.steps == 7
    # a method written in the config holds for every tensor: no per-tensor choice over it
    assert best.quantization.per_tensor is False
    left = techniques.resolve(config_from_dict({"model": "m.onnx",
                                                "quantization": {"effort": "best"}}))
    assert left.quantization.per_tensor == techniques.EFFORTS["best"].per_tensor


def test_effort_presets_are_the_measured_ones():
    """The presets benchmarks/techniques.md ("The presets") chose: fast = default = minmax,
    best = method auto (all selection images) + LSQ 20; PPQ's engine (no search) gets minmax in
    place of the effort's auto."""
    from xtrt.config import config_from_dict

    def resolved(effort, **cal):
        return techniques.resolve(config_from_dict({"model": "m.onnx", "calibration": cal,
                                                    "quantization": {"effort": effort}}))

    got = {e: resolved(e) for e in ("fast", "default", "best")}
    assert {e: c.calibration.method for e, c in got.items()} == \
        {"fast": "minmax", "default": "minmax", "best": "auto"}
    assert {e: (c.quantization.lsq.enabled, c.quantization.lsq.steps) for e, c in got.items()} \
        == {"fast": (False, 20), "default": (False, 20), "best": (True, 20)}
    assert got["best"].calibration.search_images is None      # auto's choice on every image
    # a config that says nothing gets the default effort
    assert techniques.resolve(config_from_dict({"model": "m.onnx"})).calibration.method == \
        "minmax"
    assert resolved("best", engine="ppq").calibration.method == "minmax"
    assert resolved("best", engine="ppq", method="auto").calibration.method == "auto"


def test_quant_run_with_passes_writes_what_ppq_simulates(tmp_path):
    """The whole pipeline (ORT engine, per-tensor choice, LSQ, bias correction): the written
    quantized.onnx equals PPQ's simulation, and the report says what ran."""
    import json

    from tests.conftest import make_images, write_config
    from xtrt.cli import run_main
    from xtrt.quant.__main__ import main

    make_classifier(tmp_path / "tiny.onnx")
    make_images(tmp_path / "images", n=12)
    cfg = write_config(tmp_path / "tiny.yaml", model="tiny.onnx", output_dir="out",
                       input={"shape": [2, 3, 32, 32]},
                       preprocess={"preset": "resize_crop", "short_side": 32, "crop": [32, 32]},
                       calibration={"data": "images", "steps": 4, "batch_size": 2},
                       quantization={"effort": "best", "lsq": {"steps": 5, "batches": 2},
                                     "per_tensor": True, "bias_correction": {"enabled": True},
                                     "equalization": {"enabled": True}},
                       evaluation={"count": 4, "batch_size": 4})
    assert run_main(main, ["--config", str(cfg), "-q"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    tech = report["calibration"]["techniques"]
    assert {"lsq", "bias_correction"} <= set(tech["passes"]) and tech["per_tensor"]["layers"] > 0
    assert tech["equalization"]["pairs"] >= 1
    # the written model scores what PPQ's simulation scores (ORT's fused kernels: within 0.5 dB)
    for name, out in report["outputs"].items():
        sim = report["ppq_simulation"]["outputs"][name]["sqnr_db"]
        assert abs(out["sqnr_db"] - sim) < 0.5, (name, out["sqnr_db"], sim)


def test_learned_non_positive_scales_are_exported_positive(tiny):
    """LSQ can learn a negative step (TensorRT-RTX rejected such an export of PP-OCRv4 det:
    "Scale coefficients must all be positive"); the export writes its magnitude, which quantizes
    identically with zero point 0."""
    import onnx
    from onnx import numpy_helper

    from xtrt.backend import ppq as B
    from xtrt.quant.export import export_qdq

    prep, batches, placement = tiny
    cal, _ = _calibrated(prep, placement, batches)
    flipped = 0
    for op in cal.graph.operations.values():
        for var, qc in zip(op.inputs, getattr(op, "config", None) and
                           op.config.input_quantization_config or []):
            if var.is_parameter and qc.scale is not None and qc.scale.numel() > 1:
                qc.scale = -qc.scale          # as a step LSQ drove below zero
                flipped += 1
                break
    assert flipped
    B._collect_scales(cal)
    q = export_qdq(prep.model, cal, placement)
    scales = [numpy_helper.to_array(t) for t in q.graph.initializer if "scale" in t.name]
    assert scales and all((s > 0).all() for s in scales)
    onnx.checker.check_model(q)
    assert _export_vs_simulation(prep, cal, placement, batches[0]) < TOL
