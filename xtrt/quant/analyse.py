"""Analysis stage: where INT8 hurts.  Graph-wise noise (ONNX Runtime, or PPQ), layer-wise noise with one layer in
INT8 (ONNX Runtime from cached cuts, or PPQ), per-layer cosine and ranges on the exported model,
and the worst layer's activations for the scatter plot.  Runs on the first few calibration batches
(``analysis.analysis_steps`` / ``layerwise_steps``), so its cost does not grow with the data."""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Analysis", "analyse", "worst_layer_values"]

log = logging.getLogger(__name__)


@dataclass
class Analysis:
    layers: list[dict] = field(default_factory=list)       # worst first
    layerwise: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> str | None:
        return self.layers[0]["name"] if self.layers else None

    def ranking(self) -> list[str]:
        """Layers in the order the fallback tries them (layer-wise noise, else worst first)."""
        return [k for k, _ in sorted(self.layerwise.items(), key=lambda kv: -kv[1])] or \
            [r["name"] for r in self.layers]


def _worst_first(r: dict) -> float:
    v = r["layerwise_noise_ratio"] if r["layerwise_noise_ratio"] is not None else r["noise_ratio"]
    return -(v if v is not None else r.get("noise_ratio_ort") or 0.0)


def analyse(cfg, prepared, calibrated, source, *, need_layerwise: bool,
            progress: bool = True) -> Analysis:
    """Run the analyses ``cfg.analysis`` asks for on the first batches of ``source``."""
    from xtrt.backend import ppq as ppq_backend

    a = cfg.analysis
    cal, placement = calibrated.result, calibrated.placement
    steps = max(a.analysis_steps, a.layerwise_steps)
    head = [b.feeds for b in itertools.islice(iter(source), steps)]
    ana_batches = head[:a.analysis_steps]
    graphwise = ppq_backend.graphwise_error(cal, ana_batches, device=cfg.device,
                                            steps=a.analysis_steps, progress=progress) \
        if a.graphwise and a.graphwise_engine == "ppq" else {}
    layerwise: dict[str, float] = {}
    if need_layerwise:
        if a.layerwise_engine == "ort":
            from xtrt.quant.sensitivity import layerwise_sensitivity
            layerwise = layerwise_sensitivity(prepared.body, cal, placement,
                                              head[:a.layerwise_steps], device=cfg.device,
                                              progress="layer-wise analysis" if progress else None)
        else:
            layerwise = ppq_backend.layerwise_error(cal, ana_batches, device=cfg.device,
                                                    steps=a.layerwise_steps, progress=progress)
    per_layer = {}
    if a.graphwise:
        from xtrt.quant.sensitivity import layer_statistics
        per_layer = layer_statistics(prepared.body, cal, placement, ana_batches, device=cfg.device)
        if a.graphwise_engine == "ort":     # the same noise, on the exported model, already summed
            graphwise = {k: r["noise_ratio_ort"] for k, r in per_layer.items()
                         if r.get("noise_ratio_ort") is not None}
    op_types = {n.name: n.op_type for n in prepared.model.graph.node}
    names = list(dict.fromkeys([*graphwise, *per_layer, *layerwise]))
    layers = sorted(({"name": k, "op_type": op_types.get(k, "?"), "noise_ratio": graphwise.get(k),
                      "layerwise_noise_ratio": layerwise.get(k), **per_layer.get(k, {})}
                     for k in names), key=_worst_first)
    return Analysis(layers, layerwise)


def worst_layer_values(prepared, qmodel, layer: str | None, batches, device: str):
    """``(ref, test, title)``: the FP32 and INT8 values of ``layer``'s output on ``batches``
    (for the scatter plot), or None; both models run side by side in one session
    (:func:`xtrt.quant.reduce.paired_model`)."""
    from onnx import helper

    from xtrt.model.split import runnable_body
    from xtrt.quant.reduce import paired_model
    from xtrt.quant.reuse import session_options
    from xtrt.runtime.session import make_session

    node = next((n for n in prepared.model.graph.node if n.name == layer), None)
    if node is None or not batches:
        return None
    out, q_out = node.output[0], "xtrt_q/" + node.output[0]
    both = paired_model(runnable_body(prepared.model), runnable_body(qmodel), "xtrt_q/")
    both.graph.output.extend([helper.make_empty_tensor_value_info(out),
                              helper.make_empty_tensor_value_info(q_out)])
    sess = make_session(both, device, **session_options(device))
    got = [sess.run([out, q_out], b.feeds) for b in batches]
    return (np.concatenate([g[0].reshape(-1) for g in got]),
            np.concatenate([g[1].reshape(-1) for g in got]), f"{layer} output ({node.op_type})")
