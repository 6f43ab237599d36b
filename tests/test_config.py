import pytest

from xtrt.config import apply_overrides, config_from_dict, load_config
from xtrt.errors import ConfigError


def test_defaults_and_nested_values():
    cfg = config_from_dict({"model": "m.onnx", "calibration": {"steps": 3, "method": "kl"},
                            "quantization": {"lsq": {"enabled": True, "steps": 10}}})
    assert cfg.calibration.steps == 3 and cfg.calibration.method == "kl"
    assert cfg.quantization.lsq.enabled and cfg.quantization.lsq.steps == 10
    assert cfg.preprocess.preset == "letterbox"


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": "m.onnx", "calibraton": {}})
    assert str(e.value) == "unknown config key 'calibraton' (fix: did you mean 'calibration'?)"


def test_unknown_nested_key_names_its_path():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": "m.onnx", "calibration": {"step": 4}})
    assert "unknown config key 'calibration.step'" in str(e.value)
    assert "did you mean 'calibration.steps'?" in str(e.value)


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": "m.onnx", "calibration": {"method": "kld"}})
    assert str(e.value) == ("calibration.method: 'kld' is not allowed "
                            "(fix: use one of: auto, percentile, kl, mse, minmax, entropy)")


def test_entropy_needs_xtrts_statistics():
    assert config_from_dict({"model": "m.onnx",
                             "calibration": {"method": "entropy"}}).calibration.method == "entropy"
    with pytest.raises(ConfigError, match="calibration.method: entropy runs on xtrt's statistics"):
        config_from_dict({"model": "m.onnx", "calibration": {"method": "entropy", "engine": "ppq"}})


@pytest.mark.parametrize("section,key,value,text", [
    ("calibration", "steps", "many", "calibration.steps: expected an integer, got 'many'"),
    ("calibration", "steps", 0, "calibration.steps: must be >= 1, got 0"),
    ("calibration", "shuffle", "yes", "calibration.shuffle: expected true or false, got 'yes'"),
    ("preprocess", "size", [640], "preprocess.size: [640] is not [height, width]"),
    ("input", "shape", [1, 3, 0, 4], "input.shape: [1, 3, 0, 4] is not a valid shape"),
])
def test_bad_values(section, key, value, text):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": "m.onnx", section: {key: value}})
    assert text in str(e.value)


def test_model_is_required():
    with pytest.raises(ConfigError, match="config has no 'model'"):
        config_from_dict({})


def test_overrides_parse_yaml_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: m.onnx\ncalibration:\n  steps: 4\n")
    cfg = load_config(p, ["calibration.steps=64", "calibration.method=mse",
                          "input.shape=[1,3,224,224]", "analysis.target.metric=top1"])
    assert cfg.calibration.steps == 64 and cfg.calibration.method == "mse"
    assert cfg.input.shape == [1, 3, 224, 224]
    assert cfg.analysis.target.metric == "top1"


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="--set 'calibration.steps' is not key=value"):
        apply_overrides({}, ["calibration.steps"])


def test_paths_resolve_relative_to_the_config(tmp_path):
    sub = tmp_path / "cfgs"
    sub.mkdir()
    (sub / "c.yaml").write_text("model: ../m.onnx\n")
    cfg = load_config(sub / "c.yaml")
    assert cfg.path(cfg.model).resolve() == (tmp_path / "m.onnx").resolve()


def test_missing_and_invalid_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line"):
        load_config(bad)


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    """PyYAML reads 1e-4 (no dot) as a string; a float key takes it as the number it is."""
    p = tmp_path / "c.yaml"
    p.write_text("model: m.onnx\nquantization:\n  lsq:\n    lr: 1e-4\n")
    (tmp_path / "m.onnx").write_bytes(b"")
    cfg = load_config(p, ["quantization.lsq.lr=2E-3"])
    assert cfg.quantization.lsq.lr == pytest.approx(2e-3)
    cfg = load_config(p)
    assert cfg.quantization.lsq.lr == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(p, ["quantization.lsq.lr=fast"])
