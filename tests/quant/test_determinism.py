"""Two xtrt.quant runs on the same model and images give the same scales and the same bytes."""
from __future__ import annotations

import json

from tests.conftest import make_classifier, make_images, write_config
from xtrt.cli import run_main
from xtrt.quant.__main__ import main


def _scales(doc: dict) -> dict:
    return {"activations": doc["activations"], "weights": doc["weights"],
            "groups": doc["tensor_plan"]["groups"]}


def test_two_runs_give_identical_scales_and_model_bytes(tmp_path):
    make_classifier(tmp_path / "tiny.onnx")
    make_images(tmp_path / "images", n=12)
    outs = []
    for k in (1, 2):
        cfg = write_config(tmp_path / f"c{k}.yaml", model="tiny.onnx", output_dir=f"out{k}",
                           input={"shape": [2, 3, 32, 32]},
                           preprocess={"preset": "resize_crop", "short_side": 32, "crop": [32, 32]},
                           calibration={"data": "images", "steps": 2, "batch_size": 2,
                                        "method": "percentile"},
                           evaluation={"count": 4, "batch_size": 4},
                           analysis={"graphwise": False})
        assert run_main(main, ["--config", str(cfg), "-q"]) == 0
        outs.append(tmp_path / f"out{k}")
    a, b = (json.loads((o / "quant_cfg.json").read_text()) for o in outs)
    assert a["activations"] and _scales(a) == _scales(b)
    assert (outs[0] / "quantized.onnx").read_bytes() == (outs[1] / "quantized.onnx").read_bytes()
