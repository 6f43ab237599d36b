"""Fixed costs a whole run no longer pays (issue 13 item 2): each test counts the sessions built
and the bytes fetched through a fake, and checks the figures against the way they were computed
before (host-side numpy on fetched tensors)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import make_classifier
from xtrt.runtime.session import make_session


def _outlier_calibrated(tmp_path, *, seed: int = 0, n: int = 3):
    import xtrt.backend.ppq as ppq_backend
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.placement import plan_placement

    pm = prepare_model(load_model(make_classifier(tmp_path / "m.onnx", outlier_channel=True)),
                       [2, 3, 32, 32])
    rng = np.random.default_rng(seed)
    batches = [{"input": rng.random((2, 3, 32, 32), dtype=np.float32)} for _ in range(n)]
    return pm, plan_placement(pm.model), ppq_backend.calibrate(pm.model, batches,
                                                               method="minmax"), batches


class _Sessions:
    """Sessions built and the largest array fetched, through xtrt's make_session."""

    def __init__(self, monkeypatch, *modules):
        self.built = 0
        self.largest = 0

        def counting(model, device="cpu", **kw):
            sess = make_session(model, device, **kw)
            self.built += 1
            real_run = sess.run

            def run(names, feeds, *a, **k):
                outs = real_run(names, feeds, *a, **k)
                self.largest = max([self.largest, *(np.asarray(o).size for o in outs)])
                return outs
            sess.run = run
            return sess

        import xtrt.runtime.session as session_mod
        monkeypatch.setattr(session_mod, "make_session", counting)


def _host_statistics(body, cal, placement, batches, opt="auto"):
    """layer_statistics' figures the way it computed them before: two sessions, every layer
    output fetched, reduced in float64 numpy (``opt``: ORT's optimization level; at 'basic' ORT
    rewrites the outlier model's Q/DQ and its conv2 figures move by 2 %)."""
    from xtrt.model.split import with_outputs
    from xtrt.quant.export import export_qdq

    nodes = {n.name: n for n in body.graph.node}
    outs = [nodes[n].output[0] for n in placement.quantize]
    fp = make_session(with_outputs(body, outs), optimization=opt)
    q = make_session(with_outputs(export_qdq(body, cal, placement), outs), optimization=opt)
    acc = {t: np.zeros(4) for t in outs}
    for feeds in batches:
        for t, a, b in zip(outs, fp.run(outs, feeds), q.run(outs, feeds)):
            a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
            acc[t] += (a @ b, a @ a, b @ b, np.sum(np.square(a - b)))
    return {n: acc[nodes[n].output[0]] for n in placement.quantize}


def test_layer_statistics_is_one_session_of_scalars(tmp_path, monkeypatch):
    """The FP32 body and its Q/DQ export run side by side in one session that returns only
    scalars (sums and ranges reduced in the graph); the figures are the host-side ones."""
    from xtrt.quant.sensitivity import layer_statistics

    pm, pl, cal, batches = _outlier_calibrated(tmp_path)
    host = _host_statistics(pm.body, cal, pl, batches, "disable")
    counts = _Sessions(monkeypatch)
    got = layer_statistics(pm.body, cal, pl, batches)
    assert counts.built == 1 and counts.largest == 1
    for name, (dot, ff, qq, err) in host.items():
        assert got[name]["cosine"] == pytest.approx(dot / np.sqrt(ff * qq), rel=1e-9), name
        assert got[name]["noise_ratio_ort"] == pytest.approx(err / ff, rel=1e-9), name
    x = np.concatenate([b["input"] for b in batches])
    assert got["conv1"]["act_min"] == float(x.min()) and got["conv1"]["act_max"] == float(x.max())


def test_layerwise_keeps_tensors_in_the_session(tmp_path, monkeypatch):
    """The layer-wise analysis binds the cached FP32 tensors and references (no plain run that
    copies them in and out) and brings back one scalar per output and forward; its figures are
    those of whole Q/DQ models with only that layer placed."""
    import onnxruntime as ort

    from xtrt.quant.export import export_qdq
    from xtrt.quant.placement import Placement
    from xtrt.quant.sensitivity import layerwise_sensitivity

    pm, pl, cal, batches = _outlier_calibrated(tmp_path, seed=1)
    ref = make_session(pm.body)
    refs = [ref.run(None, b)[0].astype(np.float64) for b in batches]
    want = {}
    for layer in pl.quantize:
        sess = make_session(export_qdq(pm.body, cal, Placement(quantize=[layer])),
                            optimization="disable")
        want[layer] = sum(float(np.sum(np.square(sess.run(None, b)[0] - r)))
                          for b, r in zip(batches, refs)) / sum(float(np.sum(r * r)) for r in refs)
    plain, sizes = [], []
    real_run, real_numpy = ort.InferenceSession.run, ort.OrtValue.numpy

    def run(self, *a, **k):
        plain.append(1)
        return real_run(self, *a, **k)

    def numpy(self):
        arr = real_numpy(self)
        sizes.append(arr.size)
        return arr
    monkeypatch.setattr(ort.InferenceSession, "run", run)
    monkeypatch.setattr(ort.OrtValue, "numpy", numpy)
    got = layerwise_sensitivity(pm.body, cal, pl, batches, segments=2)
    assert not plain and sizes and max(sizes) == 1
    assert len(sizes) == len(batches) * (1 + len(pl.quantize))   # signal + one noise a forward
    for layer, v in want.items():
        assert got[layer] == pytest.approx(v, rel=1e-3), layer


def test_worst_layer_values_is_one_session(tmp_path, monkeypatch):
    """The scatter plot's FP32 and INT8 values come from one session running both models; they
    are what each model gives alone (to float32 rounding)."""
    from types import SimpleNamespace

    from xtrt.model.split import with_outputs
    from xtrt.quant.analyse import worst_layer_values
    from xtrt.quant.export import export_qdq

    pm, pl, cal, batches = _outlier_calibrated(tmp_path)
    qm = export_qdq(pm.model, cal, pl)
    want = [np.concatenate([make_session(with_outputs(m, ["c2"])).run(["c2"], b)[0].ravel()
                            for b in batches]) for m in (pm.model, qm)]
    counts = _Sessions(monkeypatch)
    ref, test, title = worst_layer_values(pm, qm, "conv2", [SimpleNamespace(feeds=b)
                                                            for b in batches], "cpu")
    assert counts.built == 1 and title == "conv2 output (Conv)"
    # the FP32 side runs at ORT's 'basic' level now ('all' alone): float32 rounding apart
    np.testing.assert_allclose(ref, want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(test, want[1], rtol=1e-5, atol=1e-6)


def test_graphwise_noise_needs_no_ppq_pass(tmp_path, monkeypatch):
    """By default (analysis.graphwise_engine: ort) the graph-wise noise is the per-layer
    statistics' ONNX Runtime figure: PPQ's graph-wise pass does not run."""
    import json

    import xtrt.backend.ppq as ppq_backend
    from tests.conftest import make_images, write_config
    from xtrt.cli import run_main
    from xtrt.quant.__main__ import main

    def refuse(*a, **k):
        raise AssertionError("PPQ's graph-wise pass ran")
    monkeypatch.setattr(ppq_backend, "graphwise_error", refuse)
    make_classifier(tmp_path / "m.onnx", outlier_channel=True)
    make_images(tmp_path / "images", n=12)
    cfg = write_config(tmp_path / "c.yaml", model="m.onnx", output_dir="out",
                       input={"shape": [2, 3, 32, 32]},
                       preprocess={"preset": "resize_crop", "short_side": 32, "crop": [32, 32]},
                       calibration={"data": "images", "steps": 2, "batch_size": 2,
                                    "method": "minmax"},
                       evaluation={"count": 8, "batch_size": 4}, analysis={"analysis_steps": 2})
    assert run_main(main, ["--config", str(cfg), "-q"]) == 0
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["layers"]
    assert rows and all(r["noise_ratio"] == r["noise_ratio_ort"] for r in rows)
    assert {r["name"] for r in rows} == {"conv1", "conv2", "gap", "fc"}


def test_prepare_checks_the_other_batch_on_its_own_session(tmp_path, monkeypatch):
    """Preparing a dynamic-batch model builds two CPU sessions (original, prepared): the run at
    another batch reuses the prepared model's."""
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model

    counts = _Sessions(monkeypatch)
    pm = prepare_model(load_model(make_classifier(tmp_path / "m.onnx")), [2, 3, 32, 32])
    assert pm.dynamic_batch and any(s.startswith("runs at batch 2") for s in pm.steps)
    assert counts.built == 2
