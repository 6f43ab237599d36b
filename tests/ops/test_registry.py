"""The handler registry: register, duplicates, plugins, attribute conversion, the unknown-op error."""
from __future__ import annotations

import textwrap

import pytest
import torch
from onnx import helper

import xtrt.ops
from xtrt.errors import UnsupportedOpError, XtrtError
from xtrt.ops import OpHandler, OpRegistry, node_attrs, unknown_op_error


def test_builtins_are_registered_on_import():
    for name in ("EfficientNMS_TRT", "EfficientNMS_ONNX_TRT", "BatchedNMS_TRT", "BatchedNMSDynamic_TRT",
                 "NonMaxSuppression", "ROIAlign_TRT", "RoIAlign_TRT", "RoiAlign"):
        assert name in xtrt.ops.REGISTRY
        assert isinstance(xtrt.ops.REGISTRY.get(name), OpHandler)
    assert xtrt.ops.REGISTRY.get("EfficientNMS_TRT").op_type == "EfficientNMS_TRT"
    assert xtrt.ops.REGISTRY.get("Nope_TRT") is None


def test_register_class_function_and_duplicate():
    reg = OpRegistry()

    @reg.register("Scale_TRT", "Scale2_TRT")
    class Scale(OpHandler):
        def forward(self, inputs, attrs):
            return (inputs[0] * attrs["alpha"],)

    @reg.register("Neg_TRT")
    def neg(inputs, attrs):
        return -inputs[0]

    assert reg.names() == ["Neg_TRT", "Scale2_TRT", "Scale_TRT"]
    assert reg.get("Scale2_TRT") is reg.get("Scale_TRT")
    assert reg.get("Scale_TRT").forward([torch.ones(2)], {"alpha": 3.0})[0].tolist() == [3.0, 3.0]
    (out,) = reg.get("Neg_TRT").forward([torch.ones(1)], {})
    assert out.item() == -1.0
    with pytest.raises(UnsupportedOpError, match="has no shape inference"):
        reg.get("Neg_TRT").infer([[1]], [1], {})
    with pytest.raises(XtrtError, match="a handler for op 'Scale_TRT' is already registered"):
        reg.register("Scale_TRT")(neg)
    assert reg.get("Scale_TRT") is not None and "Neg_TRT" in reg


def test_load_plugin_file(tmp_path):
    path = tmp_path / "my_ops.py"
    path.write_text(textwrap.dedent("""
        import xtrt.ops

        @xtrt.ops.REGISTRY.register("TestDouble_TRT")
        class Double(xtrt.ops.OpHandler):
            def forward(self, inputs, attrs):
                return (inputs[0] * 2,)
    """))
    try:
        xtrt.ops.REGISTRY.load_plugin(str(path))
        xtrt.ops.REGISTRY.load_plugin(str(path))  # same file again: no-op, not a duplicate
        assert xtrt.ops.REGISTRY.get("TestDouble_TRT").forward([torch.ones(1)], {})[0].item() == 2.0
    finally:
        xtrt.ops.REGISTRY.unregister("TestDouble_TRT")


def test_bad_plugin_files_name_the_file_and_roll_back(tmp_path):
    missing = tmp_path / "nope.py"
    with pytest.raises(XtrtError, match=r"plugin file '.*nope\.py' does not exist"):
        xtrt.ops.REGISTRY.load_plugin(str(missing))
    bad = tmp_path / "bad_ops.py"
    bad.write_text(textwrap.dedent("""
        import xtrt.ops

        @xtrt.ops.REGISTRY.register("TestHalfway_TRT")
        def halfway(inputs, attrs):
            return inputs[0]

        raise RuntimeError("boom")
    """))
    with pytest.raises(XtrtError, match=r"could not load plugin file '.*bad_ops\.py': RuntimeError: boom") as ei:
        xtrt.ops.REGISTRY.load_plugin(str(bad))
    assert "fix the error in that file" in str(ei.value)
    assert "TestHalfway_TRT" not in xtrt.ops.REGISTRY
    dup = tmp_path / "dup_ops.py"
    dup.write_text("import xtrt.ops\nxtrt.ops.REGISTRY.register('EfficientNMS_TRT')(lambda i, a: i)\n")
    with pytest.raises(XtrtError, match=r"dup_ops\.py': a handler for op 'EfficientNMS_TRT' is already registered"):
        xtrt.ops.REGISTRY.load_plugin(str(dup))


def test_node_attrs_are_plain_python():
    node = helper.make_node("EfficientNMS_TRT", ["b", "s"], ["n"], score_threshold=0.25, max_output_boxes=100,
                            plugin_version="1", ints=[1, 2], names=["a", "b"])
    attrs = node_attrs(node)
    assert attrs["max_output_boxes"] == 100 and isinstance(attrs["max_output_boxes"], int)
    assert attrs["score_threshold"] == pytest.approx(0.25)
    assert attrs["plugin_version"] == "1" and attrs["names"] == ["a", "b"] and attrs["ints"] == [1, 2]


def test_unknown_op_error_text():
    err = unknown_op_error("Foo_TRT", "foo_0")
    assert isinstance(err, UnsupportedOpError)
    assert str(err) == ("no handler for op 'Foo_TRT' (node 'foo_0') (fix: register one with "
                        "@xtrt.ops.REGISTRY.register('Foo_TRT') in a .py file and pass --plugin my_ops.py)")
    assert "\n" not in str(err)
