"""The stages' typed values: the method plan decided once, the job resolved before any work."""
import pytest

from xtrt.config import config_from_dict
from xtrt.errors import ConfigError, DataError
from xtrt.quant.calibrate import plan_method
from xtrt.quant.job import QuantJob


def _cfg(tmp_path, **extra):
    data = {"model": "m.onnx", "calibration": {"data": "images"}, **extra}
    return config_from_dict(data, base_dir=tmp_path)


@pytest.mark.parametrize("cal,lsq,engine,methods,why", [
    ({"method": "auto"}, False, "ort", ("percentile", "minmax", "kl", "mse"), "all four"),
    ({"method": "kl"}, False, "ort", ("kl",), "calibration.method: kl"),
    ({"method": "auto", "engine": "ppq"}, False, "ppq", ("percentile",), "auto means percentile"),
    # LSQ runs after calibration on either engine (xtrt.quant.techniques): it no longer decides it
    ({"method": "auto"}, True, "ort", ("percentile", "minmax", "kl", "mse"), "all four"),
    ({"method": "mse"}, True, "ort", ("mse",), "calibration.method: mse"),
])
def test_method_plan_is_decided_in_one_place(tmp_path, cal, lsq, engine, methods, why):
    cfg = _cfg(tmp_path, calibration={"data": "images", **cal},
               quantization={"lsq": {"enabled": lsq}})
    plan = plan_method(cfg)
    assert (plan.engine, plan.methods) == (engine, methods)
    assert why in plan.reason
    assert plan.lsq is None and plan.searches == (len(methods) > 1)


def test_per_tensor_plan_keeps_every_method_without_a_search(tmp_path):
    cfg = _cfg(tmp_path, calibration={"data": "images", "method": "mse"},
               quantization={"per_tensor": True})
    plan = plan_method(cfg)
    assert plan.methods[0] == "mse" and len(plan.methods) == 4 and not plan.searches


def test_job_resolves_cli_plugins_against_the_working_directory(tmp_path, tiny_model,
                                                                  image_dir, monkeypatch):
    cfgdir, cwd = tmp_path / "cfg", tmp_path / "cwd"
    cfgdir.mkdir(), cwd.mkdir()
    (cwd / "my_ops.py").write_text("")
    (cfgdir / "cfg_ops.py").write_text("")
    cfg = config_from_dict({"model": str(tiny_model), "plugins": ["cfg_ops.py"],
                            "output_dir": str(tmp_path / "out"),
                            "calibration": {"data": str(image_dir), "steps": 2, "batch_size": 2}},
                           base_dir=cfgdir)
    monkeypatch.chdir(cwd)
    job = QuantJob.from_config(cfg, cli_plugins=["my_ops.py"])
    try:
        assert job.plugins == [cfgdir / "cfg_ops.py", cwd / "my_ops.py"]
        assert job.stage.is_dir() and job.stage.parent == tmp_path / "out"
        assert len(job.calibration_files) == 4 and job.heldout_files
        assert not set(job.calibration_files) & set(job.heldout_files)
        assert not job.judged_on_calibration
    finally:
        job.release()
    assert not job.stage.exists()
    with pytest.raises(ConfigError, match="plugin file .*nope.py.* does not exist"):
        QuantJob.from_config(cfg, cli_plugins=["nope.py"])


def test_job_says_when_it_judges_on_calibration_images(tmp_path, tiny_model, image_dir):
    cfg = config_from_dict({"model": str(tiny_model), "output_dir": str(tmp_path / "out"),
                            "calibration": {"data": str(image_dir), "steps": 6, "batch_size": 2}},
                           base_dir=tmp_path)
    job = QuantJob.from_config(cfg)
    job.release()
    assert job.judged_on_calibration and job.heldout_files == job.calibration_files


def test_job_fails_on_data_before_any_work(tmp_path, tiny_model):
    cfg = config_from_dict({"model": str(tiny_model), "calibration": {"data": "missing/"}},
                           base_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        QuantJob.from_config(cfg)


def test_selection_and_test_parts_are_disjoint_and_interleaved():
    from xtrt.quant.job import split_selection_test

    files = [f"f{i}" for i in range(10)]
    sel, test = split_selection_test(files, 0.5)
    assert len(sel) == 5 and len(test) == 5 and not set(sel) & set(test)
    assert sorted(sel + test) == sorted(files)
    assert sel[0] == "f0" and sel[-1] == "f8"          # spread over the list, not its first half
    sel, test = split_selection_test(files, 0.3)
    assert len(sel) == 3 and len(test) == 7
    assert split_selection_test(files, 0.0) == ([], files)
    assert split_selection_test(["a"], 0.5) == ([], ["a"])
