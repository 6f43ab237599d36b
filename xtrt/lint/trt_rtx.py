"""Parse and build an ONNX model with the TensorRT-RTX builder (no GPU needed) and read the engine.

TensorRT-RTX 1.7 builds ahead of time for a chosen compute capability (here SM89) on a machine
without a GPU.  Its parser is TensorRT's ONNX parser, so it judges *acceptance* (int32 bias
DequantizeLinear, unsupported ops) and, from the DETAILED build log, *structure*: which layers
exist, their input/output datatypes, and which ONNX nodes were fused into each.  It is not
TensorRT 10 (its compiler, Myelin with JIT kernels, differs): label every figure from here
"TensorRT-RTX 1.7 AOT build, SM89" and never as a TensorRT number.  It cannot run engines here, so
it says nothing about latency.

Plugin-terminated models (``EfficientNMS_TRT`` ...) fail to parse ("Plugin not found": its registry
holds only ``ROIAlign_TRT``).  ``build_body_only=True`` cuts the graph before the plugin nodes
(:func:`xtrt.model.split.split_model`) and builds the body; the report says so.
"""
from __future__ import annotations

import importlib.util
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from xtrt.errors import ModelError, XtrtError

__all__ = ["LABEL", "TrtLayer", "BuildReport", "trt_rtx_available", "build_with_trt_rtx",
           "parse_layers", "conv_int8_table", "engine_judge", "engine_summary", "explain_islands"]

log = logging.getLogger(__name__)

LABEL = "TensorRT-RTX 1.7 AOT build, SM89"
_PIP_HINT = ("pip install tensorrt-rtx-cu13-libs==1.7.1.116 "
             "tensorrt-rtx-cu13-bindings==1.7.1.116")
CONV_LAYER_TYPES = {"convolution", "correlation", "deconvolution", "caskconvolution",
                    "caskdeconvolution"}


@dataclass
class TrtLayer:
    """One engine layer from the build log's ``Layers:`` message."""

    name: str
    layer_type: str
    input_types: list[str] = field(default_factory=list)
    constant_types: list[str] = field(default_factory=list)
    output_types: list[str] = field(default_factory=list)
    onnx_nodes: list[str] = field(default_factory=list)
    tactic: str = ""

    @property
    def is_convolution(self) -> bool:
        t = self.layer_type.lower()
        return t in CONV_LAYER_TYPES or "convolution" in t

    @property
    def int8_input(self) -> bool:
        return bool(self.input_types) and self.input_types[0] == "Int8"


@dataclass
class BuildReport:
    """What the TensorRT-RTX builder made of a model.

    Attributes:
        label: always :data:`LABEL` (say it next to any number taken from here).
        parsed: the ONNX parser accepted the model; ``parse_errors`` holds its messages otherwise.
        built: an engine was serialized; ``build_errors`` holds error-level log messages.
        body_only: the model was cut before its plugin nodes and only the body was built.
        plugin_nodes: the plugin node labels cut off (with ``body_only``).
        layers: the engine's layers (empty when the build failed).
        engine_bytes, seconds: engine size, parse+build time.
        log: every builder/parser message at WARNING or above.
    """

    label: str = LABEL
    parsed: bool = False
    built: bool = False
    body_only: bool = False
    plugin_nodes: list[str] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)
    build_errors: list[str] = field(default_factory=list)
    layers: list[TrtLayer] = field(default_factory=list)
    engine_bytes: int = 0
    seconds: float = 0.0
    log: list[str] = field(default_factory=list)
    node_types: dict[str, str] = field(default_factory=dict)   # ONNX node -> op type

    @property
    def ok(self) -> bool:
        return self.parsed and self.built

    @property
    def convolutions(self) -> list[TrtLayer]:
        return [layer for layer in self.layers if layer.is_convolution]

    @property
    def int8_convolutions(self) -> int:
        """Convolution layers whose (first) input is Int8."""
        return sum(1 for layer in self.convolutions if layer.int8_input)

    @property
    def int8_layers(self) -> list[TrtLayer]:
        """Convolution and GEMM layers whose (first) input is Int8."""
        return [layer for layer in self.layers if layer.int8_input and (
            layer.is_convolution or layer.layer_type.lower() in ("gemm", "matrixmultiply"))]

    @property
    def fp32_islands(self) -> list[TrtLayer]:
        """Layers running Float in and Float out outside the Int8 convolutions/GEMMs: what a
        strongly-typed build runs in FP32.  A layer made only of an Int8 layer's own ONNX nodes
        (its split epilogue) and of Q/DQ/Cast nodes is not counted, nor one with no ONNX node
        (:attr:`copy_layers`)."""
        glue = {"QuantizeLinear", "DequantizeLinear", "Cast", "Identity"}
        int8 = self.int8_layers
        int8_nodes = {n for layer in int8 for n in layer.onnx_nodes}

        def own(layer):
            rest = {n for n in layer.onnx_nodes if self.node_types.get(n) not in glue}
            return bool(layer.onnx_nodes) and rest <= int8_nodes
        return [layer for layer in self.layers
                if layer not in int8 and layer.onnx_nodes and "Float" in layer.input_types
                and "Float" in layer.output_types and not own(layer)]

    @property
    def copy_layers(self) -> list[TrtLayer]:
        """Kernels that carry no ONNX node (copies, reformats), shape calls excluded."""
        return [layer for layer in self.layers if not layer.onnx_nodes
                and (layer.input_types or layer.output_types)]

    @property
    def half_layers(self) -> list[TrtLayer]:
        """Layers with a Half input or output."""
        return [layer for layer in self.layers
                if "Half" in layer.input_types or "Half" in layer.output_types]

    def as_dict(self) -> dict:
        """JSON-ready figures: acceptance, layer counts, Int8 convolutions, FP32 islands, Half
        layers, and the ONNX nodes fused into each engine layer."""
        return {"label": self.label, "accepted": self.ok, "parsed": self.parsed,
                "built": self.built, "body_only": self.body_only,
                "plugin_nodes": list(self.plugin_nodes),
                "errors": (self.parse_errors + self.build_errors)[:5],
                "layers": len(self.layers), "convolutions": len(self.convolutions),
                "int8_convolutions": self.int8_convolutions,
                "fp32_islands": [{"layer": x.name, "type": x.layer_type,
                                  "onnx_nodes": x.onnx_nodes} for x in self.fp32_islands],
                "half_layers": len(self.half_layers),
                "copy_layers": len(self.copy_layers),
                "layer_types": self.layer_types(),
                "engine_layers": [{"layer": x.name, "type": x.layer_type,
                                   "in": x.input_types, "out": x.output_types,
                                   "onnx_nodes": x.onnx_nodes} for x in self.layers],
                "note": "structure and acceptance only: not TensorRT 10, no latency"}

    def layer_types(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.layer_type] = out.get(layer.layer_type, 0) + 1
        return out

    def summary(self) -> str:
        """One line: acceptance, layer counts, Int8 convolutions, and the label."""
        scope = " (body before plugin nodes " + ", ".join(self.plugin_nodes) + ")" \
            if self.body_only and self.plugin_nodes else ""
        if not self.parsed:
            first = self.parse_errors[0] if self.parse_errors else "unknown parse error"
            return f"{self.label}{scope}: parse FAILED: {first}"
        if not self.built:
            first = self.build_errors[0] if self.build_errors else "no engine"
            return f"{self.label}{scope}: build FAILED: {first}"
        convs = self.convolutions
        return (f"{self.label}{scope}: built in {self.seconds:.1f}s, {len(self.layers)} layers, "
                f"{self.int8_convolutions}/{len(convs)} convolutions take Int8, "
                f"{len(self.fp32_islands)} Float layers outside them, "
                f"{len(self.half_layers)} Half layers, engine {self.engine_bytes / 1e6:.1f} MB")


def trt_rtx_available() -> bool:
    return importlib.util.find_spec("tensorrt_rtx_bindings") is not None


def _import_trt():
    if not trt_rtx_available():
        raise XtrtError("the TensorRT-RTX builder (tensorrt_rtx_bindings) is not installed",
                        _PIP_HINT)
    import tensorrt_rtx_bindings as trt

    return trt


# ---- parsing the "Layers:" message ------------------------------------------------------------

def _section(text: str, key: str) -> str:
    """The bracketed text after ``key: [`` (brackets balanced)."""
    start = text.find(key + ": [")
    if start < 0:
        return ""
    i = start + len(key) + 3
    depth = 1
    j = i
    while j < len(text) and depth:
        if text[j] == "[":
            depth += 1
        elif text[j] == "]":
            depth -= 1
        j += 1
    return text[i:j - 1]


_DTYPE = re.compile(r"Datatype: ([A-Za-z0-9]+)")
_ONNX = re.compile(r"\[ONNX Layer: ([^\]]*)\]")


def parse_layers(message: str) -> list[TrtLayer]:
    """Parse the build log's ``Layers:`` message (DETAILED profiling verbosity) into layers."""
    layers = []
    for line in message.splitlines():
        line = line.strip()
        if not line.startswith("Name: ") or "LayerType: " not in line:
            continue  # header, blank lines, "I/O Tensors:" entries
        name = line[len("Name: "):line.find(", LayerType: ")]
        ltype = re.search(r"LayerType: ([^,]*)", line).group(1).strip()
        tactic = re.search(r"TacticName: ([^,]*)", line)
        meta = line[line.find("Metadata:"):] if "Metadata:" in line else ""
        layers.append(TrtLayer(
            name=name, layer_type=ltype,
            input_types=_DTYPE.findall(_section(line, "Inputs")),
            constant_types=_DTYPE.findall(_section(line, "Constants")),
            output_types=_DTYPE.findall(_section(line, "Outputs")),
            onnx_nodes=_ONNX.findall(meta),
            tactic=tactic.group(1).strip() if tactic else ""))
    return layers


# ---- building ---------------------------------------------------------------------------------

def _model_bytes(model, build_body_only: bool | None) -> tuple[bytes, list[str]]:
    import onnx

    if build_body_only is None:          # auto: the body when the model has plugin nodes
        from xtrt.model.split import find_plugin_nodes

        proto = model if hasattr(model, "graph") else (
            onnx.load_from_string(bytes(model)) if isinstance(model, (bytes, bytearray))
            else __import__("xtrt.model.load", fromlist=["load_model"]).load_model(model))
        return _model_bytes(proto, bool(find_plugin_nodes(proto)))
    if isinstance(model, (bytes, bytearray)):
        if not build_body_only:
            return bytes(model), []
        proto = onnx.load_from_string(bytes(model))
    elif isinstance(model, (str, Path)):
        from xtrt.model.load import load_model

        if not build_body_only:
            proto = load_model(model)
            return proto.SerializeToString(), []
        proto = load_model(model)
    elif hasattr(model, "graph"):
        proto = model
    else:
        raise ModelError(f"cannot build {type(model).__name__}", "pass a path, bytes or ModelProto")
    plugins: list[str] = []
    if build_body_only:
        from xtrt.model.split import node_label, split_model

        plan = split_model(proto)
        plugins = [node_label(n) for n in plan.plugin_nodes]
        proto = plan.body
    return proto.SerializeToString(), plugins


def _profile_shapes(net, shapes: dict, max_batch: int, opt_batch: int):
    out = {}
    for i in range(net.num_inputs):
        tensor = net.get_input(i)
        dims = list(tensor.shape)
        if tensor.name in shapes:
            out[tensor.name] = tuple(tuple(int(d) for d in s) for s in shapes[tensor.name])
            continue
        if all(d >= 0 for d in dims):
            continue
        if any(d < 0 for d in dims[1:]):
            raise ModelError(f"input {tensor.name!r} has dynamic dimensions {dims} besides the batch",
                             "pass shapes={name: (min, opt, max)} or fix the input shape")
        lo, opt, hi = ([1] + dims[1:], [opt_batch] + dims[1:], [max_batch] + dims[1:])
        out[tensor.name] = (tuple(lo), tuple(opt), tuple(hi))
    return out


def build_with_trt_rtx(model, *, build_body_only: bool | None = False, max_batch: int = 4,
                       opt_batch: int = 1, shapes: dict | None = None) -> BuildReport:
    """Parse and build ``model`` with the TensorRT-RTX builder for SM89 and describe the engine.

    Args:
        model: path, serialized bytes, or ``onnx.ModelProto``.
        build_body_only: cut the graph before plugin nodes (EfficientNMS_TRT ...) and build the
            body; None: do so when the model has plugin nodes (the report says so).
        max_batch, opt_batch: optimization profile for a dynamic batch axis (min 1).
        shapes: explicit ``{input: (min, opt, max)}`` profiles for other dynamic inputs.

    Returns:
        A :class:`BuildReport`; parse and build failures are recorded in it, not raised.

    Raises:
        XtrtError: ``tensorrt_rtx_bindings`` is not installed.
    """
    trt = _import_trt()
    data, plugins = _model_bytes(model, build_body_only)
    report = BuildReport(body_only=bool(plugins) or bool(build_body_only), plugin_nodes=plugins)
    import onnx

    report.node_types = {n.name: n.op_type for n in onnx.load_from_string(data).graph.node}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[object, str]] = []

        def log(self, severity, msg) -> None:  # called by the builder
            self.messages.append((severity, msg))

    logger = _Logger()
    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    report.parsed = bool(parser.parse(data))
    if not report.parsed:
        report.parse_errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or \
            [m for s, m in logger.messages if s in (trt.ILogger.Severity.ERROR,
                                                    trt.ILogger.Severity.INTERNAL_ERROR)]
    else:
        config = builder.create_builder_config()
        config.num_compute_capabilities = 1
        config.set_compute_capability(trt.ComputeCapability.SM89, 0)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        profiles = _profile_shapes(network, shapes or {}, max_batch, opt_batch)
        if profiles:
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in profiles.items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        report.built = engine is not None
        if engine is not None:
            report.engine_bytes = int(engine.nbytes)
        layer_msgs = [m for _, m in logger.messages if m.startswith("Layers:")]
        if layer_msgs:
            report.layers = parse_layers(layer_msgs[-1])
        report.build_errors = [m for s, m in logger.messages
                               if s in (trt.ILogger.Severity.ERROR,
                                        trt.ILogger.Severity.INTERNAL_ERROR)]
    report.seconds = time.perf_counter() - t0
    report.log = [m for s, m in logger.messages
                  if s in (trt.ILogger.Severity.WARNING, trt.ILogger.Severity.ERROR,
                           trt.ILogger.Severity.INTERNAL_ERROR)]
    log.debug("%s", report.summary())
    return report


def conv_int8_table(report: BuildReport) -> Sequence[dict]:
    """Rows (layer, type, input/output datatypes, ONNX nodes) for each convolution layer."""
    return [{"layer": c.name, "type": c.layer_type, "input": ",".join(c.input_types),
             "output": ",".join(c.output_types), "onnx_nodes": ", ".join(c.onnx_nodes)}
            for c in report.convolutions]


_GLUE = {"QuantizeLinear", "DequantizeLinear", "Cast", "Identity"}


def explain_islands(judged: dict, reasons: Mapping[str, str], model=None) -> dict:
    """Give each of ``judged``'s ``fp32_islands`` (an :func:`engine_judge` dict) the reasons the
    run recorded (``reasons``: ONNX node -> why it is float).  An island is explained when every
    ONNX node it computes has a reason, Q/DQ/Cast glue (op types from ``model``) and the nodes of
    the Int8 layers it shares aside; else its ``reason`` is None and ``unexplained`` lists the
    nodes without one.  ``unexplained_fp32_islands`` counts those islands.  Returns ``judged``."""
    types = {n.name: n.op_type for n in model.graph.node} if model is not None else {}
    int8 = {n for x in judged.get("engine_layers") or [] if x.get("in", [None])[:1] == ["Int8"]
            for n in x.get("onnx_nodes", [])}
    islands = judged.get("fp32_islands") or []
    for isl in islands:
        nodes = [n for n in isl.get("onnx_nodes", []) if types.get(n) not in _GLUE]
        own = [n for n in nodes if n not in int8] or nodes
        isl["unexplained"] = [n for n in own if n not in reasons]
        why = [f"{n}: {reasons[n]}" for n in own if n in reasons]
        isl["reason"] = "; ".join(dict.fromkeys(why)) if why and not isl["unexplained"] else None
    judged["unexplained_fp32_islands"] = sum(1 for isl in islands if not isl["reason"])
    return judged


def engine_summary(judged: dict) -> dict:
    """The figures of an :func:`engine_judge` dict without its per-layer list (for a contrast
    build, e.g. the FP32 export next to the written FP16 one)."""
    keep = ("label", "accepted", "errors", "layers", "convolutions", "int8_convolutions",
            "fp32_islands", "unexplained_fp32_islands", "half_layers", "copy_layers")
    return {k: judged[k] for k in keep if k in judged}


def engine_judge(model, **kwargs) -> dict:
    """The TensorRT-RTX build of ``model`` as a JSON-ready dict (:meth:`BuildReport.as_dict`), for
    the quant report; plugin-terminated models are built by their body (``body_only`` says so).
    ``{"label": LABEL, "available": False}`` when the builder is not installed."""
    if not trt_rtx_available():
        return {"label": LABEL, "available": False, "install": _PIP_HINT}
    kwargs.setdefault("build_body_only", None)
    return {"available": True, **build_with_trt_rtx(model, **kwargs).as_dict()}
