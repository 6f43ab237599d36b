"""A layer that is deliberately hard to quantize: analysis must rank it first and fallback fix it."""
import json

import numpy as np
import pytest

from tests.conftest import make_classifier, make_images, write_config
from xtrt.analysis.fallback import run_fallback
from xtrt.cli import run_main
from xtrt.quant.__main__ import main
from xtrt.runtime.session import make_session


@pytest.fixture(scope="module")
def outlier_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outlier")
    make_classifier(tmp / "m.onnx", outlier_channel=True)
    make_images(tmp / "images", n=24)
    cfg = write_config(
        tmp / "c.yaml", model="m.onnx", output_dir="out", input={"shape": [2, 3, 32, 32]},
        preprocess={"preset": "resize_crop", "short_side": 32, "crop": [32, 32]},
        calibration={"data": "images", "steps": 4, "batch_size": 2},
        # selection_share 0: the trials are judged on the images the report is, so they can be
        # compared with a re-evaluation of the written model
        evaluation={"count": 16, "batch_size": 4, "selection_share": 0.0},
        analysis={"layerwise": True, "analysis_steps": 2, "max_trials": 4, "layers_per_trial": 1,
                  "target": {"metric": "sqnr", "min_value": 12.0}},
        export={"float_precision": "fp32"})   # the fallback judges FP32 exports
    assert run_main(main, ["--config", str(cfg), "-q"]) == 0
    return tmp, json.loads((tmp / "out" / "report.json").read_text())


def test_outlier_layer_is_ranked_first(outlier_run):
    _, rep = outlier_run
    assert rep["worst_layers"][0]["name"] == "conv2"
    assert rep["summary"]["worst_layer"] == "conv2"


def test_layer_records_carry_cosine_and_ranges(outlier_run):
    """The outlier shows in the per-layer data: conv2's input range is ~1000x the others', the
    accumulated cosine drops at conv2 (and stays low after it), and its clip covers the outlier."""
    _, rep = outlier_run
    rows = {r["name"]: r for r in rep["layers"]}
    assert set(rows) == {"conv1", "conv2", "gap", "fc"}
    for r in rows.values():
        assert -1.0 <= r["cosine"] <= 1.0 + 1e-9 and r["act_clip"] > 0
        assert r["act_min"] <= r["act_max"]
    assert rows["conv1"]["cosine"] > 0.99 > rows["conv2"]["cosine"]
    assert rows["fc"]["cosine"] < 0.99
    assert rows["conv2"]["act_max"] > 100 * rows["conv1"]["act_max"]
    assert rows["conv2"]["act_clip"] > 0.5 * rows["conv2"]["act_max"]
    assert rows["conv1"]["weight_min"] < 0 < rows["conv1"]["weight_max"]
    assert rows["conv1"]["weight_channel_spread"] >= 1.0 and "weight_min" not in rows["gap"]


def test_fallback_moves_it_to_float_and_reaches_the_target(outlier_run):
    tmp, rep = outlier_run
    fb = rep["fallback"]
    assert fb["reached"] is True
    assert fb["trials"][0]["metric"] < 12.0          # all-INT8 misses the target
    chosen = fb["trials"][fb["chosen"]]
    assert chosen["fp32_layers"][0] == "conv2" and chosen["metric"] >= 12.0
    cfg = json.loads((tmp / "out" / "quant_cfg.json").read_text())
    assert "conv2" not in cfg["int8_ops"] and "fallback" in cfg["float_ops"]["conv2"]


def test_report_matches_a_reevaluation_of_the_exported_model(outlier_run):
    tmp, rep = outlier_run
    from xtrt.config import PreprocessConfig
    from xtrt.data.images import decode_image, list_files
    from xtrt.data.preprocess import build_preprocess
    pre = build_preprocess(PreprocessConfig(preset="resize_crop", short_side=32, crop=[32, 32]))
    files = list_files(tmp / "images")[8:24]
    x = np.stack([pre(decode_image(f))[0] for f in files])
    ref = make_session(tmp / "m.onnx").run(None, {"input": x})[0].astype(np.float64)
    got = make_session(tmp / "out" / "quantized.onnx").run(None, {"input": x})[0]
    sqnr = 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())
    assert rep["outputs"]["logits"]["sqnr_db"] == pytest.approx(sqnr, abs=0.05)
    assert rep["fallback"]["trials"][rep["fallback"]["chosen"]]["metric"] == pytest.approx(sqnr, abs=0.05)


def test_pngs_are_written(outlier_run):
    tmp, rep = outlier_run
    for name in ("layers_noise.png", "layers_alone.png", "fallback.png", "worst_layer_scatter.png"):
        data = (tmp / "out" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_fallback_says_plainly_when_the_target_is_out_of_reach():
    res = run_fallback(["a", "b", "c"], lambda layers: 0.5 + 0.1 * len(layers), target=0.99,
                       max_trials=2, per_trial=1, first_value=0.5)
    assert not res.reached and len(res.trials) == 3
    assert res.reason.startswith("target not met within 2 trial(s) (budget analysis.max_trials)")
    assert res.chosen == 2  # the best trial is kept


def test_fallback_stops_when_no_layers_are_left():
    res = run_fallback(["a"], lambda layers: 0.0, target=1.0, max_trials=5, per_trial=2,
                       first_value=0.0)
    assert not res.reached and "no more layers" in res.reason


def _outlier_calibrated(tmp_path, *, seed: int, n: int):
    """The outlier-channel classifier, prepared, placed and minmax-calibrated on n random batches."""
    import xtrt.backend.ppq as ppq_backend
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.placement import plan_placement

    pm = prepare_model(load_model(make_classifier(tmp_path / "m.onnx", outlier_channel=True)),
                       [2, 3, 32, 32])
    rng = np.random.default_rng(seed)
    batches = [{"input": rng.random((2, 3, 32, 32), dtype=np.float32)} for _ in range(n)]
    pl = plan_placement(pm.model)
    return pm, pl, ppq_backend.calibrate(pm.model, batches, method="minmax"), batches


def test_ort_layerwise_ranks_like_ppqs(tmp_path):
    """The switchable-Q/DQ session on ONNX Runtime and PPQ's layerwise_error_analyse agree."""
    import xtrt.backend.ppq as ppq_backend
    from xtrt.quant.sensitivity import layerwise_sensitivity

    pm, pl, cal, batches = _outlier_calibrated(tmp_path, seed=0, n=8)
    ours = layerwise_sensitivity(pm.model, cal, pl, batches[:2])
    ppq = ppq_backend.layerwise_error(cal, batches[:2], steps=2, progress=False)
    assert set(ours) == {"conv1", "conv2", "gap", "fc"}
    assert max(ours, key=ours.get) == max(ppq, key=ppq.get) == "conv2"
    common = set(ours) & set(ppq)       # PPQ's analysis skips the pooling layer
    assert common == {"conv1", "conv2", "fc"}
    assert sorted(common, key=ours.get) == sorted(common, key=ppq.get)


@pytest.mark.parametrize("segments", [1, 2, 4])
def test_layerwise_from_cached_cuts_equals_one_layer_exports(tmp_path, segments):
    """Starting each layer's run at a cached cut gives what a whole Q/DQ model with only that
    layer placed gives on ONNX Runtime."""
    from xtrt.quant.export import export_qdq
    from xtrt.quant.placement import Placement
    from xtrt.quant.sensitivity import layerwise_sensitivity

    pm, pl, cal, batches = _outlier_calibrated(tmp_path, seed=1, n=3)
    got = layerwise_sensitivity(pm.model, cal, pl, batches, segments=segments)
    ref_sess = make_session(pm.body)
    refs = [ref_sess.run(None, b) for b in batches]
    signal = sum(float(np.sum(np.square(r[0].astype(np.float64)))) for r in refs)
    for layer in pl.quantize:
        sess = make_session(export_qdq(pm.body, cal, Placement(quantize=[layer])))
        noise = sum(float(np.sum(np.square(sess.run(None, b)[0].astype(np.float64) - r[0])))
                    for b, r in zip(batches, refs))
        assert got[layer] == pytest.approx(noise / signal, rel=1e-3, abs=1e-9), layer


def test_shortfall_is_explained():
    from xtrt.analysis.fallback import explain_shortfall

    sens = {"a": 90.0, "b": 5.0, **{f"x{i}": 0.1 for i in range(50)}}
    trials = [{"metric": 0.5, "fp32_layers": []}, {"metric": 0.8, "fp32_layers": ["a"], "added": ["a"]},
              {"metric": 0.81, "fp32_layers": ["a", "b"], "added": ["b"]}]
    why = explain_shortfall(trials, 0.9, sens)
    assert "best 0.810 against target 0.900" in why
    assert "carry 95.0%" in why and "accumulated over many layers" in why
    why = explain_shortfall(trials[:2], 0.9, sens)       # 'a' alone: 90 % -> still concentrated? no
    assert "carry 90.0%" in why
    concentrated = explain_shortfall(trials[:2], 0.9, {"a": 1.0, "b": 1.0, "c": 1.0})
    assert "still concentrated" in concentrated
    res = run_fallback(["a", "b"], lambda layers: 0.1 * len(layers), target=1.0, max_trials=2,
                       per_trial=1, first_value=0.0, sensitivity={"a": 2.0, "b": 1.0, "c": 0.5})
    assert not res.reached and res.as_dict()["why"].startswith("best 0.200")


def test_greedy_fallback_puts_unhelpful_layers_back():
    """A layer whose float version hurts (errors that cancelled) goes back to INT8."""
    def metric(layers):
        return 0.5 + 0.2 * sum(x.startswith("good") for x in layers) - 0.1 * ("bad" in layers)

    ranking = ["bad", "good1", "good2", "good3"]
    res = run_fallback(ranking, metric, target=0.9, max_trials=5, per_trial=1, first_value=0.5,
                       strategy="greedy")
    assert res.reached and res.fp32_layers == ["good1", "good2"]
    assert [t["kept"] for t in res.trials] == [True, False, True, True]
    ranked = run_fallback(ranking, metric, target=0.9, max_trials=5, per_trial=1, first_value=0.5)
    assert ranked.reached and ranked.fp32_layers == ["bad", "good1", "good2", "good3"]


def test_greedy_uses_the_tie_breaker_when_the_metric_does_not_move():
    """Top-1 over few images moves in coarse steps: a layer that leaves it unchanged but raises
    the output SQNR stays float; one that lowers the SQNR goes back."""
    def metric(layers):
        sqnr = 20 + 3 * sum(x.startswith("good") for x in layers) - 5 * ("bad" in layers)
        return (0.9 if len(set(layers) - {"bad"}) >= 3 else 0.8), sqnr

    res = run_fallback(["good1", "bad", "good2", "good3"], metric, target=0.9, max_trials=6,
                       per_trial=1, first_value=metric([]), strategy="greedy")
    assert res.reached and res.fp32_layers == ["good1", "good2", "good3"]
    assert [t["kept"] for t in res.trials] == [True, True, False, True, True]
