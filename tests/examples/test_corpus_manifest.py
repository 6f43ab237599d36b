"""benchmarks/corpus.yaml and its loader (quick: no corpus package needed)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml

from xtrt.errors import ConfigError, XtrtError
from xtrt.examples import corpus


def test_manifest_covers_the_issue_minimum():
    models = corpus.load_manifest()
    assert len(models) >= 8
    assert len({m.family for m in models}) >= 5
    assert len({m.exporter.split(" (")[0].split(" 1")[0] for m in models}) >= 3
    for m in models:
        assert m.licence and m.exporter and m.metric and m.task in (
            "classification", "detection", "generic"), m.name
        assert all("==" in r for r in m.requirements), f"{m.name}: pin every package"
        assert len(m.input) == 4 and m.images in corpus.HELDOUT
    tried = yaml.safe_load(corpus.default_manifest().read_text())["tried"]
    assert any(not t["kept"] for t in tried) and all(t["why"] for t in tried)


def test_requirements_are_unique_and_in_order():
    reqs = corpus.requirements(corpus.load_manifest())
    assert len(reqs) == len(set(reqs))
    assert reqs[0] == "nudenet==3.4.2"


def _write(tmp_path, entry: dict) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump({"models": [entry]}))
    return p


BASE = dict(name="x", family="f", package="p==1", module="p", licence="MIT", exporter="e", opset=13,
            input=[1, 3, 8, 8], preprocess={}, images="photos", task="generic", metric="m")


def test_unknown_key_and_missing_source_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown keys"):
        corpus.load_manifest(_write(tmp_path, {**BASE, "path": "a.onnx", "licence_": "x"}))
    with pytest.raises(ConfigError, match="exactly one of path/export"):
        corpus.load_manifest(_write(tmp_path, BASE))
    with pytest.raises(ConfigError, match="not found"):
        corpus.load_manifest(tmp_path / "none.yaml")


def test_missing_package_names_the_pip_line(tmp_path):
    entry = corpus.load_manifest(_write(tmp_path, {**BASE, "module": "no_such_pkg_xtrt",
                                                   "path": "a.onnx"}))[0]
    assert not corpus.is_installed(entry)
    with pytest.raises(XtrtError, match="pip install --no-deps p==1"):
        corpus.materialize(entry, tmp_path)


def test_bundled_file_is_found_inside_the_package(tmp_path):
    spec = importlib.util.find_spec("xtrt")
    entry = corpus.load_manifest(_write(tmp_path, {**BASE, "module": "xtrt",
                                                   "path": "examples/corpus.py"}))[0]
    assert corpus.is_installed(entry)
    assert corpus.materialize(entry, tmp_path) == \
        Path(list(spec.submodule_search_locations)[0]) / "examples" / "corpus.py"


def test_image_split_is_disjoint_and_config_uses_it(tmp_path, monkeypatch):
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        Image.new("RGB", (16, 16), (i * 10, 0, 0)).save(src / f"im{i:02d}.png")
    monkeypatch.setattr(corpus, "_image_files", lambda kind, cache: sorted(src.iterdir()))
    entry = corpus.load_manifest(_write(tmp_path, {**BASE, "path": "a.onnx",
                                                   "input": [2, 3, 8, 8]}))[0]
    cfg_path = corpus.write_config(entry, tmp_path / "a.onnx", tmp_path / "work")
    cfg = yaml.safe_load(cfg_path.read_text())
    cal = {p.name for p in Path(cfg["calibration"]["data"]).iterdir()}
    held = {p.name for p in Path(cfg["evaluation"]["data"]).iterdir()}
    assert len(cal) == corpus.CAL_IMAGES and not cal & held and len(held) == 12
    assert cfg["calibration"]["steps"] * cfg["calibration"]["batch_size"] == corpus.CAL_IMAGES
    assert cfg["evaluation"]["count"] == 12 and cfg["evaluation"]["task"] == "generic"
    assert cfg["input"]["shape"] == [2, 3, 8, 8]
    assert set(cfg) == {"model", "output_dir", "input", "preprocess", "calibration", "evaluation"}
    assert set(cfg["evaluation"]) == {"data", "count", "batch_size", "task"}


def test_gray_height64_is_ddddocr_preprocessing():
    img = np.zeros((30, 90, 3), np.uint8)
    img[..., 1] = 255
    x = corpus.gray_height64(img)
    assert x.shape == (1, 64, 256) and x.dtype == np.float32
    np.testing.assert_allclose(x, 150 / 255.0, atol=1 / 255)  # PIL 'L' of pure green: 150
