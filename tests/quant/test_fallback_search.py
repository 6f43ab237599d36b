"""The fallback judges what xtrt writes (FP16 export), its rankings and its bisection search."""
import hashlib
import json

import numpy as np
import onnx
import pytest

from tests.conftest import make_classifier, make_images, write_config
from xtrt.analysis.fallback import run_bisect, run_fallback
from xtrt.cli import run_main
from xtrt.quant.__main__ import fallback_curve_line, main


def _run(tmp, *, share: float, analysis: dict):
    make_classifier(tmp / "m.onnx", outlier_channel=True)
    make_images(tmp / "images", n=24)
    cfg = write_config(
        tmp / "c.yaml", model="m.onnx", output_dir="out", input={"shape": [2, 3, 32, 32]},
        preprocess={"preset": "resize_crop", "short_side": 32, "crop": [32, 32]},
        calibration={"data": "images", "steps": 4, "batch_size": 2},
        evaluation={"count": 16, "batch_size": 4, "selection_share": share},
        analysis={"layerwise": True, "analysis_steps": 2, "max_trials": 4, "layers_per_trial": 1,
                  "trt_rtx": False, "target": {"metric": "sqnr", "min_value": 12.0}, **analysis},
        export={"float_precision": "fp16"})
    assert run_main(main, ["--config", str(cfg), "-q"]) == 0
    return json.loads((tmp / "out" / "report.json").read_text())


@pytest.fixture(scope="module")
def fp16_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fb16")
    # selection_share 0: trials and report on the same images, so their figures must be equal
    return tmp, _run(tmp, share=0.0, analysis={})


def test_the_written_model_is_the_judged_fp16_trial(fp16_run):
    tmp, rep = fp16_run
    fb = rep["fallback"]
    chosen = fb["trials"][fb["chosen"]]
    assert fb["reached"] and chosen["fp32_layers"] == ["conv2"]
    written = onnx.load(str(tmp / "out" / "quantized.onnx"))
    assert chosen["graph_sha256"] == hashlib.sha256(written.graph.SerializeToString()).hexdigest()
    # the same model on the same images: the very same figure (an FP32 trial differs)
    assert chosen["metric"] == rep["outputs"]["logits"]["sqnr_db"]
    assert rep["float_precision"]["float_precision"] == "fp16"


def test_fallback_layer_runs_fp16_in_the_written_model(fp16_run):
    tmp, _ = fp16_run
    g = onnx.load(str(tmp / "out" / "quantized.onnx")).graph
    conv2 = next(n for n in g.node if n.name == "conv2")
    inits = {i.name: i for i in g.initializer}
    w = inits.get(conv2.input[1])
    assert w is not None and w.data_type == onnx.TensorProto.FLOAT16     # float weight, FP16
    cfg = json.loads((tmp / "out" / "quant_cfg.json").read_text())
    assert "conv2" not in cfg["int8_ops"]


@pytest.mark.parametrize("ranking", ["float_alone", "greedy"])
def test_bisect_with_float_gain_ranking_and_test_curve(tmp_path, ranking):
    rep = _run(tmp_path, share=0.5, analysis={"fallback_strategy": "bisect",
                                              "fallback_ranking": ranking})
    fb = rep["fallback"]
    assert fb["reached"] and fb["trials"][fb["chosen"]]["fp32_layers"] == ["conv2"]
    assert fb["search"]["ranking"] == ranking and fb["search"]["order"][0] == "conv2"
    curve = fb["curve"]
    assert [c["n_fp32_layers"] for c in curve] == [0, 1]
    assert all(c["test"] is not None for c in curve)        # every trial also on the test part
    assert curve[1]["test"] > curve[0]["test"]
    assert rep["summary"]["choices_made_on"].startswith("8 selection")
    line = fallback_curve_line(fb)
    assert line.startswith("Fallback curve (float layers: selection/test metric): 0: ")
    assert "chosen 1 layer(s)" in line


def _curve_metric(helpful: dict[str, float], base: float = 0.5):
    calls = []

    def metric(layers):
        calls.append(list(layers))
        return base + sum(helpful.get(x, 0.0) for x in layers)
    return metric, calls


def test_bisect_finds_the_shortest_prefix_with_few_trials():
    order = [f"l{i}" for i in range(50)]
    metric, calls = _curve_metric({f"l{i}": 0.1 for i in range(5)})   # 5 layers reach 1.0
    res = run_bisect(order, metric, target=1.0, max_trials=8, first_value=0.5)
    assert res.reached and res.fp32_layers == order[:5]
    assert [len(c) for c in calls[:5]] == [1, 2, 4, 8, 6] and len(calls[5]) == 5
    assert [t["step"] for t in res.trials[1:5]] == ["gallop"] * 4
    assert len(calls) <= 8                                       # the budget holds


def test_bisect_prunes_a_useless_layer_of_the_prefix():
    order = ["a", "dud", "b", "c"]
    metric, _ = _curve_metric({"a": 0.2, "b": 0.2, "c": 0.1})      # a+b+c = 1.0, dud adds nothing
    res = run_bisect(order, metric, target=1.0, max_trials=8, first_value=0.5)
    assert res.reached and sorted(res.fp32_layers) == ["a", "b", "c"]
    assert res.trials[res.chosen]["step"] == "prune"
    assert res.as_dict()["curve"][-1]["n_fp32_layers"] == 4


def test_bisect_reports_a_target_out_of_reach():
    res = run_bisect(["a", "b", "c"], lambda layers: 0.5 + 0.1 * len(layers), target=2.0,
                     max_trials=5, first_value=0.5)
    assert not res.reached and res.reason == "no prefix of the ranking meets the target"
    assert res.fp32_layers == ["a", "b", "c"] and res.why.startswith("best 0.800")


def test_strategy_bisect_is_reached_through_run_fallback():
    res = run_fallback(["a", "b"], lambda layers: 0.5 + 0.5 * ("a" in layers), target=1.0,
                       max_trials=3, per_trial=1, first_value=0.5, strategy="bisect")
    assert res.reached and res.fp32_layers == ["a"] and res.trials[1]["step"] == "gallop"


def test_float_gain_equals_exports_with_those_layers_float(tmp_path):
    """The switch session's noise with a set of layers float is what an export with exactly the
    other layers placed gives on ONNX Runtime (mean over outputs of noise/signal), both run
    without ORT's graph rewrites (its 'basic' level rewrites the plain Q/DQ chain: 0.035 apart)."""
    import xtrt.backend.ppq as ppq_backend
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.export import export_qdq
    from xtrt.quant.placement import Placement, plan_placement
    from xtrt.quant.sensitivity import FloatGain
    from xtrt.runtime.session import make_session

    pm = prepare_model(load_model(make_classifier(tmp_path / "m.onnx", outlier_channel=True)),
                       [2, 3, 32, 32])
    rng = np.random.default_rng(3)
    batches = [{"input": rng.random((2, 3, 32, 32), dtype=np.float32)} for _ in range(3)]
    pl = plan_placement(pm.model)
    cal = ppq_backend.calibrate(pm.model, batches, method="minmax")
    fg = FloatGain(pm.body, cal, pl, batches[:2], optimization="disable")
    ref = make_session(pm.body)
    for floats in ([], ["conv2"], ["conv1", "fc"]):
        sess = make_session(export_qdq(pm.body, cal, Placement(
            quantize=[n for n in pl.quantize if n not in floats]), only_placed=True),
            optimization="disable")
        noise = sum(float(np.sum(np.square(sess.run(None, b)[0].astype(np.float64) -
                                           ref.run(None, b)[0]))) for b in batches[:2])
        signal = sum(float(np.sum(np.square(ref.run(None, b)[0].astype(np.float64))))
                     for b in batches[:2])
        assert fg.noise(floats) == pytest.approx(noise / signal, rel=1e-3, abs=1e-9), floats
    alone = fg.float_alone()
    assert min(alone, key=alone.get) == "conv2"          # the outlier layer gains most
    order, path = fg.greedy_order(steps=2, candidates=3, alone=alone)
    assert order[0] == "conv2" and sorted(order) == sorted(pl.quantize)
    assert path[1] <= path[0] + 1e-12
