"""What a run computes once and shares (xtrt.quant.reuse): the same results as without sharing,
the FP32 model run once per held-out image, each model scored once per image set, each FP16
export built once, runners shared for the same model bytes."""
from __future__ import annotations

import collections
import json
import re

import numpy as np
import onnx
import pytest

from tests.conftest import make_classifier, make_images, write_config
from xtrt.cli import run_main
from xtrt.quant import reuse
from xtrt.quant.__main__ import main


def _config(tmp, **extra):
    make_classifier(tmp / "m.onnx", outlier_channel=True)
    make_images(tmp / "images", n=24)
    return write_config(
        tmp / "c.yaml", model="m.onnx", output_dir="out", input={"shape": [2, 3, 32, 32]},
        preprocess={"preset": "resize_crop", "short_side": 32, "crop": [32, 32]},
        calibration={"data": "images", "steps": 3, "batch_size": 2, "method": "auto"},
        evaluation={"count": 16, "batch_size": 4},         # a selection / test split
        analysis={"layerwise": True, "analysis_steps": 2, "max_trials": 3, "layers_per_trial": 1,
                  "target": {"metric": "sqnr", "min_value": 12.0}},
        export={"float_precision": "fp16"}, **extra)


class _Counts:
    """FP32-reference images, scorings per (image set, model bytes), FP16 exports per model."""

    def __init__(self, monkeypatch):
        import xtrt.quant.precision as precision
        import xtrt.quant.verify as verify

        self.ref_images = 0
        self.scored = collections.Counter()
        self.sets: dict[int, int] = {}
        self.fp16 = collections.Counter()
        real_prepare, real_evaluate = verify.prepare_eval, verify.evaluate
        real_apply = precision.apply_float_precision

        def prepare_eval(runner, batches, *a, **k):
            def counted():
                for b in batches:
                    self.ref_images += b.size
                    yield b
            return real_prepare(runner, counted(), *a, **k)

        def evaluate(run_fn, ed, **k):
            model = getattr(getattr(run_fn, "__self__", None), "_xtrt_model", None)
            if model is not None:
                # image sets by order of first use (selection, then test)
                which = self.sets.setdefault(id(ed), len(self.sets))
                self.scored[(which, reuse.model_digest(model))] += 1
            return real_evaluate(run_fn, ed, **k)

        def apply(qmodel, precision_, batches, **k):
            self.fp16[(reuse.model_digest(qmodel), precision_)] += 1
            return real_apply(qmodel, precision_, batches, **k)

        import xtrt.quant.evaluate as evaluate_mod
        import xtrt.runtime.split as split

        real_init = split.SplitRunner.__init__

        def init(runner, model, *a, **k):
            real_init(runner, model, *a, **k)
            runner._xtrt_model = model

        monkeypatch.setattr(split.SplitRunner, "__init__", init)
        monkeypatch.setattr(verify, "prepare_eval", prepare_eval)
        monkeypatch.setattr(verify, "evaluate", evaluate)
        monkeypatch.setattr(evaluate_mod, "evaluate", evaluate)
        monkeypatch.setattr(precision, "apply_float_precision", apply)


def _figures(out, tmp) -> tuple[dict, bytes, str]:
    rep = json.loads((out / "report.json").read_text())
    rep.pop("timings_s", None)
    text = json.dumps(rep, sort_keys=True).replace(str(tmp), "TMP")
    text = re.sub(r'"(seconds|search_seconds|wall_s|elapsed_s)": [0-9.e+-]+', r'"\1": 0', text)
    cfg = json.loads((out / "quant_cfg.json").read_text())
    return cfg, (out / "quantized.onnx").read_bytes(), text


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run twice: with nothing shared (every Memo computes) and as xtrt runs it."""
    got = {}
    for kind in ("unshared", "shared"):
        tmp = tmp_path_factory.mktemp(kind)
        cfg = _config(tmp)
        with pytest.MonkeyPatch.context() as m:
            if kind == "unshared":
                m.setattr(reuse.Memo, "get", lambda self, model, compute, *k, **kw: compute())
            counts = _Counts(m)
            assert run_main(main, ["--config", str(cfg), "-q"]) == 0
        got[kind] = (tmp, counts, _figures(tmp / "out", tmp))
    return got


def test_sharing_changes_no_result(runs):
    (ta, _, (cfg_a, onnx_a, rep_a)), (tb, _, (cfg_b, onnx_b, rep_b)) = runs["unshared"], \
        runs["shared"]
    cfg_a, cfg_b = (json.loads(json.dumps(c).replace(str(t), "TMP")) for c, t in
                    ((cfg_a, ta), (cfg_b, tb)))
    assert cfg_a == cfg_b
    assert onnx_a == onnx_b
    assert json.loads(rep_a)["fallback"]["trials"], "the run must reach the fallback"
    assert rep_a == rep_b


def test_each_model_is_scored_once_per_image_set(runs):
    _, unshared, _ = runs["unshared"]
    _, shared, _ = runs["shared"]
    assert max(unshared.scored.values()) > 1          # without sharing, some model is re-scored
    assert max(shared.scored.values()) == 1
    assert set(shared.scored) == set(unshared.scored)  # the same models, the same image sets


def test_each_fp16_export_is_built_once(runs):
    _, unshared, _ = runs["unshared"]
    _, shared, _ = runs["shared"]
    assert max(unshared.fp16.values()) > 1            # the precision stage rebuilt the trial's
    assert max(shared.fp16.values()) == 1
    assert set(shared.fp16) == set(unshared.fp16)


def test_the_fp32_model_runs_once_per_held_out_image(runs):
    _, shared, _ = runs["shared"]
    assert shared.ref_images == 16                     # selection + test: each image once


def test_memo_is_keyed_by_model_bytes():
    m = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    copy = onnx.ModelProto()
    copy.CopyFrom(m)
    memo, calls = reuse.Memo(size=2), []
    assert memo.get(m, lambda: calls.append(1) or "a") == "a"
    assert memo.get(copy, lambda: calls.append(2) or "b") == "a"     # same bytes: a hit
    assert memo.get(copy, lambda: "c", "other key") == "c"
    assert memo.get(object(), lambda: "d") == "d"                    # not a proto: no cache
    assert calls == [1] and memo.hits == 1 and memo.misses == 3


def test_runner_cache_shares_a_session_for_the_same_bytes(tmp_path):
    make_classifier(tmp_path / "m.onnx")
    m = onnx.load(str(tmp_path / "m.onnx"))
    cache = reuse.RunnerCache(size=2)
    a = cache.runner(m, "cpu", optimization="basic")
    assert cache.runner(onnx.load(str(tmp_path / "m.onnx")), "cpu", optimization="basic") is a
    assert cache.runner(m, "cpu", optimization="all") is not a
    x = {a.input_names[0]: np.zeros((1, 3, 32, 32), np.float32)}
    assert a.run(x)[0].shape[0] == 1


def test_batches_digest_sees_every_value():
    a = [{"x": np.zeros((2, 3), np.float32)}]
    b = [{"x": np.zeros((2, 3), np.float32)}]
    b[0]["x"][1, 2] = 1e-7
    assert reuse.batches_digest(a) == reuse.batches_digest([{"x": a[0]["x"].copy()}])
    assert reuse.batches_digest(a) != reuse.batches_digest(b)
    assert reuse.session_options("cpu") == {}
    assert reuse.session_options("cuda")["cuda_options"]["cudnn_conv_algo_search"] == "HEURISTIC"
