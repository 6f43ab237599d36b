"""Every tiny ONNX model the quick tests use, built with onnx.helper (Polygraphy-style).

One function per graph structure; weights are deterministic (seeded); nothing is downloaded.
Each builder returns an ``onnx.ModelProto`` whose graph input is ``input`` [N, 3, 16, 16] (batch
symbolic ``N`` unless said otherwise) and passes ``onnx.checker``.  ``MODELS`` maps a name to
its builder; ``python -m tests.models.make_models DIR`` writes them all.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HW = 16


class _G:
    """A small graph under construction: nodes, initializers, deterministic weights."""

    def __init__(self, seed: int = 0):
        self.nodes: list = []
        self.inits: list = []
        self.rng = np.random.default_rng(seed)
        self._n = 0

    def const(self, name: str, arr) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op: str, inputs, outputs=None, name: str | None = None, **attrs) -> str:
        self._n += 1
        name = name or f"{op.lower()}{self._n}"
        outputs = outputs or [f"{name}_out"]
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))
        return outputs[0]

    def conv(self, x: str, cin: int, cout: int, k: int = 3, *, group: int = 1, stride: int = 1,
             name: str | None = None, relu: bool = True) -> str:
        name = name or f"conv{self._n + 1}"
        w = self.rng.normal(0, (2.0 / (cin // group * k * k)) ** 0.5,
                            (cout, cin // group, k, k)).astype(np.float32)
        b = self.rng.normal(0, 0.05, cout).astype(np.float32)
        y = self.node("Conv", [x, self.const(f"{name}_w", w), self.const(f"{name}_b", b)],
                      name=name, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride] * 2,
                      group=group)
        return self.node("Relu", [y], name=f"{name}_relu") if relu else y

    def head(self, x: str, c: int, classes: int = 10, name: str = "fc") -> str:
        """GlobalAveragePool -> Flatten -> Gemm(transB=1): logits [N, classes]."""
        g = self.node("GlobalAveragePool", [x], name=f"{name}_gap")
        f = self.node("Flatten", [g], name=f"{name}_flatten")
        w = self.rng.normal(0, 0.5, (classes, c)).astype(np.float32)
        b = self.rng.normal(0, 0.1, classes).astype(np.float32)
        return self.node("Gemm", [f, self.const(f"{name}_w", w), self.const(f"{name}_b", b)],
                         ["logits"], name=name, transB=1)

    def model(self, inputs, outputs, *, opset: int = 13, name: str = "tiny") -> onnx.ModelProto:
        def vi(spec):
            n, shape, *dt = spec
            return helper.make_tensor_value_info(n, dt[0] if dt else TensorProto.FLOAT, shape)

        graph = helper.make_graph(self.nodes, name, [vi(i) for i in inputs],
                                  [vi(o) for o in outputs], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def _inp(batch="N", c: int = 3, name: str = "input"):
    return (name, [batch, c, HW, HW])


def _classifier(g: _G, x: str, c: int, *, opset: int = 13, batch="N", name="tiny",
                classes: int = 10) -> onnx.ModelProto:
    g.head(x, c, classes)
    return g.model([_inp(batch)], [("logits", [batch, classes])], opset=opset, name=name)


# ---- graph structures ------------------------------------------------------------------------

def se_block() -> onnx.ModelProto:
    """Squeeze-and-excitation: ``t`` feeds GlobalAveragePool (quantized) and the Mul that
    rescales it (float), and the Mul's output feeds a Conv."""
    g = _G(1)
    t = g.conv("input", 3, 8, name="stem")
    s = g.node("GlobalAveragePool", [t], name="se_gap")
    s = g.conv(s, 8, 4, 1, name="se_reduce")
    s = g.conv(s, 4, 8, 1, name="se_expand", relu=False)
    s = g.node("Sigmoid", [s], name="se_sigmoid")
    y = g.node("Mul", [t, s], name="se_mul")
    y = g.conv(y, 8, 8, name="project")
    return _classifier(g, y, 8, name="se_block")


def residual_add() -> onnx.ModelProto:
    """``t`` feeds a Conv (quantized) and the residual Add (float)."""
    g = _G(2)
    t = g.conv("input", 3, 8, name="stem")
    u = g.conv(t, 8, 8, name="body1")
    u = g.conv(u, 8, 8, name="body2", relu=False)
    y = g.node("Add", [t, u], name="residual_add")
    y = g.conv(y, 8, 8, name="after")
    return _classifier(g, y, 8, name="residual_add")


def concat_branches() -> onnx.ModelProto:
    """Two quantized branches concatenated, then a quantized Conv on the concatenation."""
    g = _G(3)
    t = g.conv("input", 3, 8, name="stem")
    a = g.conv(t, 8, 4, 1, name="branch_a")
    b = g.conv(t, 8, 4, 3, name="branch_b")
    y = g.node("Concat", [a, b], name="concat", axis=1)
    y = g.conv(y, 8, 8, name="fuse")
    return _classifier(g, y, 8, name="concat_branches")


def gemm(trans_b: int = 1) -> onnx.ModelProto:
    """Conv stem, then Gemm with ``transB`` 0 (weight [K, N]) or 1 (weight [N, K])."""
    g = _G(4)
    t = g.conv("input", 3, 8, name="stem")
    f = g.node("Flatten", [g.node("GlobalAveragePool", [t], name="gap")], name="flatten")
    w = g.rng.normal(0, 0.5, (10, 8) if trans_b else (8, 10)).astype(np.float32)
    # one output channel far larger than the others: a per-channel axis on the wrong dim shows
    w[(3, slice(None)) if trans_b else (slice(None), 3)] *= 30.0
    b = g.rng.normal(0, 0.1, 10).astype(np.float32)
    g.node("Gemm", [f, g.const("fc_w", w), g.const("fc_b", b)], ["logits"], name="fc",
           transB=trans_b)
    return g.model([_inp()], [("logits", ["N", 10])], name=f"gemm_transb{trans_b}")


def softmax_head() -> onnx.ModelProto:
    """Conv stem, GlobalAveragePool, Gemm, then a Softmax writing the graph output ``prob`` (a
    classifier / face-probability head): the last op runs next to a float32 graph output."""
    g = _G(5)
    t = g.conv("input", 3, 8, name="stem")
    f = g.node("Flatten", [g.node("GlobalAveragePool", [t], name="gap")], name="flatten")
    w = g.rng.normal(0, 0.5, (4, 8)).astype(np.float32)
    b = g.rng.normal(0, 0.1, 4).astype(np.float32)
    z = g.node("Gemm", [f, g.const("fc_w", w), g.const("fc_b", b)], name="fc", transB=1)
    g.node("Softmax", [z], ["prob"], name="softmax", axis=1)
    return g.model([_inp()], [("prob", ["N", 4])], name="softmax_head")


def small_channels() -> onnx.ModelProto:
    """Stem (3 image channels), a 6-channel squeeze conv and its expand conv: channel counts
    TensorRT pads in INT8 (fewer than 8, not a multiple of 4)."""
    g = _G(6)
    t = g.conv("input", 3, 8, name="stem")
    s = g.conv(t, 8, 6, 1, name="squeeze6")
    s = g.conv(s, 6, 8, 1, name="expand6")
    y = g.conv(s, 8, 8, name="project")
    return _classifier(g, y, 8, name="small_channels")


def matmul_const() -> onnx.ModelProto:
    """MatMul with a constant [K, N] weight (output channel = axis 1) and a bias Add."""
    g = _G(5)
    t = g.conv("input", 3, 8, name="stem")
    f = g.node("Flatten", [g.node("GlobalAveragePool", [t], name="gap")], name="flatten")
    w = g.rng.normal(0, 0.5, (8, 10)).astype(np.float32)
    w[:, 3] *= 30.0
    m = g.node("MatMul", [f, g.const("fc_w", w)], name="fc")
    g.node("Add", [m, g.const("fc_b", g.rng.normal(0, 0.1, 10).astype(np.float32))],
           ["logits"], name="fc_bias")
    return g.model([_inp()], [("logits", ["N", 10])], name="matmul_const")


def conv_transpose() -> onnx.ModelProto:
    """Strided Conv, ConvTranspose back up (weight [Cin, Cout, k, k]: output channel axis 1)."""
    g = _G(6)
    t = g.conv("input", 3, 8, stride=2, name="down")
    w = g.rng.normal(0, 0.3, (8, 4, 2, 2)).astype(np.float32)
    w[:, 2] *= 20.0
    u = g.node("ConvTranspose", [t, g.const("up_w", w),
                                 g.const("up_b", np.zeros(4, np.float32))],
               name="up", kernel_shape=[2, 2], strides=[2, 2])
    u = g.node("Relu", [u], name="up_relu")
    y = g.conv(u, 4, 8, name="after")
    return _classifier(g, y, 8, name="conv_transpose")


def grouped_depthwise() -> onnx.ModelProto:
    """A grouped Conv (group=2) and a depthwise Conv (group=C)."""
    g = _G(7)
    t = g.conv("input", 3, 8, name="stem")
    t = g.conv(t, 8, 8, group=2, name="grouped")
    t = g.conv(t, 8, 8, group=8, name="depthwise")
    t = g.conv(t, 8, 8, 1, name="pointwise")
    return _classifier(g, t, 8, name="grouped_depthwise")


def avgpool_conv() -> onnx.ModelProto:
    """AveragePool feeding a Conv (PPQ overlaps the Conv's input config with the pool's output)."""
    g = _G(8)
    t = g.conv("input", 3, 8, name="stem")
    p = g.node("AveragePool", [t], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    y = g.conv(p, 8, 8, name="after_pool")
    return _classifier(g, y, 8, name="avgpool_conv")


def new_activations(opset: int = 20) -> onnx.ModelProto:
    """HardSwish (14), Mish (18), Gelu (20, both forms) and LayerNormalization (17) between
    Convs; only the ops that exist at ``opset`` are used."""
    g = _G(9)
    t = g.conv("input", 3, 8, name="stem", relu=False)
    t = g.node("HardSwish", [t], name="hardswish")
    if opset >= 18:
        t = g.conv(t, 8, 8, name="c_mish", relu=False)
        t = g.node("Mish", [t], name="mish")
    if opset >= 20:
        t = g.conv(t, 8, 8, name="c_gelu", relu=False)
        t = g.node("Gelu", [t], name="gelu")
        t = g.node("Gelu", [t], name="gelu_tanh", approximate="tanh")
    if opset >= 17:
        scale = g.const("ln_scale", (1 + 0.1 * g.rng.normal(size=HW)).astype(np.float32))
        bias = g.const("ln_bias", (0.1 * g.rng.normal(size=HW)).astype(np.float32))
        t = g.node("LayerNormalization", [t, scale, bias], name="layernorm", axis=-1)
    if opset >= 21:
        scale = g.const("gn_scale", (1 + 0.1 * g.rng.normal(size=8)).astype(np.float32))
        bias = g.const("gn_bias", (0.1 * g.rng.normal(size=8)).astype(np.float32))
        t = g.node("GroupNormalization", [t, scale, bias], name="groupnorm", num_groups=2)
    t = g.conv(t, 8, 16, name="after")   # 1152 weights: heavy, so no decode-tail misfire
    return _classifier(g, t, 16, opset=opset, name=f"new_activations_{opset}")


def conv_net(opset: int) -> onnx.ModelProto:
    """A small conv net written the way ``opset`` spells its ops: Conv, Clip (min/max inputs),
    MaxPool, Resize (scales), Concat, ReduceMean (axes attribute < 18, input >= 18), Split
    (attribute < 13, input >= 13), Flatten, Gemm."""
    g = _G(10)
    t = g.conv("input", 3, 8, name="stem", relu=False)
    t = g.node("Clip", [t, g.const("clip_lo", np.float32(0)), g.const("clip_hi", np.float32(6))],
               name="relu6")
    p = g.node("MaxPool", [t], name="maxpool", kernel_shape=[2, 2], strides=[2, 2])
    p = g.conv(p, 8, 8, name="mid")
    scales = g.const("up_scales", np.array([1, 1, 2, 2], np.float32))
    roi = "" if opset >= 13 else g.const("up_roi", np.zeros(0, np.float32))  # required at 11-12
    up = g.node("Resize", [p, roi, scales], name="upsample", mode="nearest")
    y = g.node("Concat", [t, up], name="concat", axis=1)
    if opset >= 13:
        a, b = g.node("Split", [y, g.const("split_sizes", np.array([8, 8], np.int64))],
                      ["split_a", "split_b"], name="split", axis=1), "split_b"
    else:
        a, b = g.node("Split", [y], ["split_a", "split_b"], name="split", axis=1,
                      split=[8, 8]), "split_b"
    y = g.node("Add", [a, b], name="add")
    y = g.conv(y, 8, 8, name="last")
    if opset >= 18:
        m = g.node("ReduceMean", [y, g.const("rm_axes", np.array([2, 3], np.int64))],
                   name="pool", keepdims=1)
    else:
        m = g.node("ReduceMean", [y], name="pool", axes=[2, 3], keepdims=1)
    f = g.node("Flatten", [m], name="flatten")
    w = g.rng.normal(0, 0.5, (10, 8)).astype(np.float32)
    g.node("Gemm", [f, g.const("fc_w", w), g.const("fc_b", np.zeros(10, np.float32))],
           ["logits"], name="fc", transB=1)
    return g.model([_inp()], [("logits", ["N", 10])], opset=opset, name=f"conv_net_{opset}")


def multi_input() -> onnx.ModelProto:
    """Two inputs: ``image`` [N, 3, 16, 16] (float) and ``gain`` [N, 8] (float, a per-sample
    channel gain applied after the stem)."""
    g = _G(11)
    t = g.conv("image", 3, 8, name="stem")
    gain = g.node("Unsqueeze", ["gain", g.const("gain_axes", np.array([2, 3], np.int64))],
                  name="gain_4d")
    t = g.node("Mul", [t, gain], name="apply_gain")
    t = g.conv(t, 8, 8, name="after")
    g.head(t, 8)
    return g.model([("image", ["N", 3, HW, HW]), ("gain", ["N", 8])], [("logits", ["N", 10])],
                   name="multi_input")


def multi_output() -> onnx.ModelProto:
    """Three outputs whose order is not alphabetical nor the producers' order: ``logits``,
    ``features`` [N, 8, 16, 16], ``embedding`` [N, 8]."""
    g = _G(12)
    t = g.conv("input", 3, 8, name="stem")
    feat = g.conv(t, 8, 8, name="features_conv", relu=False)
    g.node("Identity", [feat], ["features"], name="features_out")
    emb = g.node("Flatten", [g.node("GlobalAveragePool", [feat], name="emb_gap")], ["embedding"],
                 name="emb_flatten")
    w = g.rng.normal(0, 0.5, (10, 8)).astype(np.float32)
    g.node("Gemm", [emb, g.const("fc_w", w), g.const("fc_b", np.zeros(10, np.float32))],
           ["logits"], name="fc", transB=1)
    return g.model([_inp()], [("logits", ["N", 10]), ("features", ["N", 8, HW, HW]),
                              ("embedding", ["N", 8])], name="multi_output")


def paddle_batch(baked: int = 1) -> onnx.ModelProto:
    """Paddle2ONNX style: input batch ``dim_value: -1`` and a ``Reshape`` whose target
    ``[baked, 8*8*8]`` bakes the export batch in, then MatMul + Add."""
    g = _G(13)
    t = g.conv("input", 3, 8, stride=2, name="stem")
    flat = g.node("Reshape", [t, g.const("flat_shape", np.array([baked, 8 * 8 * 8], np.int64))],
                  name="flatten_reshape")
    w = g.rng.normal(0, 0.05, (8 * 8 * 8, 10)).astype(np.float32)
    m = g.node("MatMul", [flat, g.const("fc_w", w)], name="fc")
    g.node("Add", [m, g.const("fc_b", np.zeros(10, np.float32))], ["logits"], name="fc_bias")
    model = g.model([_inp(batch=1)], [("logits", [1, 10])], name="paddle_batch")
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = -1
    return model


def yolo_head(classes: int = 2) -> onnx.ModelProto:
    """A YOLOv8-like head [N, 4 + C, A]: conv features, box and class convs, Reshape to anchors,
    Sigmoid scores and a box decode (Mul by stride) concatenated: the decode tail."""
    g = _G(14)
    t = g.conv("input", 3, 16, name="stem")
    t = g.conv(t, 16, 32, stride=2, name="neck")   # [N, 32, 8, 8]; 32*16*9 weights: heavy
    box = g.conv(t, 32, 4, 1, name="box_conv", relu=False)
    cls = g.conv(t, 32, classes, 1, name="cls_conv", relu=False)
    box = g.node("Reshape", [box, g.const("box_shape", np.array([0, 4, -1], np.int64))],
                 name="box_reshape")
    cls = g.node("Reshape", [cls, g.const("cls_shape", np.array([0, classes, -1], np.int64))],
                 name="cls_reshape")
    box = g.node("Mul", [box, g.const("stride", np.float32(2.0))], name="box_decode")
    score = g.node("Sigmoid", [cls], name="score_sigmoid")
    g.node("Concat", [box, score], ["output0"], name="head_concat", axis=1)
    return g.model([_inp()], [("output0", ["N", 4 + classes, 64])], name="yolo_head")


def yolo_nms(classes: int = 2) -> onnx.ModelProto:
    """:func:`yolo_head`'s layers, ending in an EfficientNMS_TRT plugin tail (boxes [N, A, 4],
    scores [N, A, C]): four outputs ``num_dets``, ``det_boxes``, ``det_scores``, ``det_classes``."""
    m = yolo_head(classes)
    g = m.graph
    head = [n for n in g.node if n.name == "head_concat"][0]
    g.node.remove(head)
    tr = [helper.make_node("Transpose", ["box_decode_out"], ["boxes"], name="boxes_t", perm=[0, 2, 1]),
          helper.make_node("Transpose", ["score_sigmoid_out"], ["scores"], name="scores_t",
                           perm=[0, 2, 1]),
          helper.make_node("EfficientNMS_TRT", ["boxes", "scores"],
                           ["num_dets", "det_boxes", "det_scores", "det_classes"],
                           name="nms", background_class=-1, box_coding=1, iou_threshold=0.5,
                           max_output_boxes=20, plugin_version="1", score_activation=0,
                           score_threshold=0.25)]
    g.node.extend(tr)
    del g.output[:]
    for name, dt, shape in (("num_dets", TensorProto.INT32, ["N", 1]),
                            ("det_boxes", TensorProto.FLOAT, ["N", 20, 4]),
                            ("det_scores", TensorProto.FLOAT, ["N", 20]),
                            ("det_classes", TensorProto.INT32, ["N", 20])):
        g.output.append(helper.make_tensor_value_info(name, dt, shape))
    return m


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "se_block": se_block,
    "residual_add": residual_add,
    "concat_branches": concat_branches,
    "gemm_transb0": lambda: gemm(0),
    "gemm_transb1": lambda: gemm(1),
    "matmul_const": matmul_const,
    "softmax_head": softmax_head,
    "small_channels": small_channels,
    "conv_transpose": conv_transpose,
    "grouped_depthwise": grouped_depthwise,
    "avgpool_conv": avgpool_conv,
    "hardswish_14": lambda: new_activations(14),
    "new_activations_21": lambda: new_activations(21),
    "multi_input": multi_input,
    "multi_output": multi_output,
    "paddle_batch": paddle_batch,
    "yolo_head": yolo_head,
    "yolo_nms": yolo_nms,
    **{f"conv_net_{v}": (lambda v=v: conv_net(v)) for v in range(11, 22)},
}


def save(model: onnx.ModelProto, path: str | Path, *, external_data: bool = False) -> Path:
    """Save ``model``; with ``external_data`` every initializer goes to ``<name>.data``."""
    path = Path(path)
    if external_data:
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, path)
    return path


def write_all(folder: str | Path) -> dict[str, Path]:
    """Save every model of MODELS into ``folder``; returns name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, fn in MODELS.items():
        out[name] = save(fn(), folder / f"{name}.onnx")
    out["external_data"] = save(residual_add(), folder / "external_data.onnx", external_data=True)
    return out


if __name__ == "__main__":
    for n, p in write_all(sys.argv[1] if len(sys.argv) > 1 else "tiny_models").items():
        print(n, p)
