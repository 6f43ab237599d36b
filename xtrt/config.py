"""Typed configuration for ``xtrt.quant`` (and the preprocessing part shared with ``xtrt.profile``).

Loaded from YAML, overridden with ``--set a.b=value``, validated once: unknown keys are rejected
with a "did you mean", values are checked against their type and allowed choices, and paths are
resolved relative to the config file.
"""
from __future__ import annotations

import re
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from xtrt.errors import ConfigError

__all__ = [
    "Config", "InputConfig", "PreprocessConfig", "CalibrationConfig", "LsqConfig",
    "EqualizationConfig", "AdaroundConfig", "BiasCorrectionConfig",
    "QuantizationConfig", "EvaluationConfig", "TargetConfig", "AnalysisConfig",
    "load_config", "config_from_dict", "apply_overrides", "config_to_dict",
]


@dataclass
class InputConfig:
    name: Optional[str] = None          # default: the model's first input
    shape: Optional[list[int]] = None   # [N, C, H, W]; N is the calibration batch


@dataclass
class PreprocessConfig:
    preset: Literal["letterbox", "resize_crop", "plugin"] = "letterbox"
    size: Optional[list[int]] = None    # letterbox target [h, w] (default: model input)
    pad_value: int = 114
    short_side: Optional[int] = None    # resize_crop (default: crop * 256/224)
    crop: Optional[list[int]] = None    # resize_crop [h, w] (default: model input)
    color: Literal["rgb", "bgr"] = "rgb"
    scale: float = 1 / 255.0
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    plugin: Optional[str] = None        # my_pre.py:func  (preset: plugin)


@dataclass
class CalibrationConfig:
    data: Optional[str] = None          # folder, glob or .npy/.npz
    steps: int = 8                      # batches
    batch_size: int = 4
    # entropy: TensorRT's entropy calibration (KL over every clip of a 2048-bin |x| histogram).
    # auto: compute percentile, minmax, kl and mse from the same ONNX Runtime statistics, export
    # each, keep the one whose exported model scores best on the held-out images (task metric,
    # then SQNR).
    # Not set: quantization.effort decides (xtrt.quant.techniques.EFFORTS)
    method: Optional[Literal["auto", "percentile", "kl", "mse", "minmax", "entropy"]] = None
    # auto scores its candidates on the first N selection images only (null: all of them).
    # Measured (benchmarks/techniques.md): 32 cuts the search ~2-3x but flipped the choice on
    # ddddocr (mse -> minmax) and YOLOv8n (minmax -> mse), so all of them by default
    search_images: Optional[int] = None
    # ort: statistics on ONNX Runtime (FP32 activations, fast), scales by PPQ's rules;
    # ppq: PPQ's own runtime calibration (its torch executor, activations seen with INT8 weights)
    engine: Literal["ort", "ppq"] = "ort"
    # shuffle: false uses the files in sorted order (the first steps*batch_size calibrate, the
    # rest are held out); true shuffles the file list first with random.Random(seed), so the
    # calibration / held-out split is a random draw that seed makes repeatable. seed also seeds
    # LSQ's and AdaRound's random choice of training batches. Nothing else in a run is random;
    # a seed that drives none of these is a config error.
    shuffle: bool = False
    seed: Optional[int] = None          # default 0 when shuffle is true


# Optimisation passes (PPQ's, run by xtrt.quant.techniques).  ``enabled`` / ``steps`` left unset
# (null) take the value of quantization.effort; anything set here wins over the effort preset.
@dataclass
class LsqConfig:
    enabled: Optional[bool] = None
    steps: Optional[int] = None         # training steps per block
    lr: float = 1e-5
    block_size: int = 4
    batches: int = 2                    # calibration batches the pass trains on (measured: 2)
    # all: weights, biases and every scale (PPQ's LSQ); activation_scales: only the activation
    # scales (weights, biases and weight scales stay: what AdaRound's rounding needs kept)
    train: Literal["all", "activation_scales"] = "all"
    after_adaround: bool = False        # run after AdaRound instead of before it


@dataclass
class EqualizationConfig:               # cross-layer equalization, before calibration
    enabled: Optional[bool] = None
    iterations: int = 10
    threshold: float = 0.5              # PPQ's value_threshold (0, 0.5 or 2 recommended)
    opt_level: Literal[1, 2] = 2        # 1: cross Relu/pooling; 2: also Add/Sub
    including_bias: bool = False


@dataclass
class AdaroundConfig:                   # block-wise reconstruction of the weight rounding
    enabled: Optional[bool] = None
    steps: Optional[int] = None
    lr: float = 1e-3
    gamma: float = 1.0
    block_size: int = 4
    batches: int = 8                    # all calibration batches up to 8 (2 over-fit: techniques.md)


@dataclass
class BiasCorrectionConfig:
    enabled: Optional[bool] = None
    block_size: int = 1
    batches: int = 2


@dataclass
class QuantizationConfig:
    exclude_nodes: list[str] = field(default_factory=list)     # exact names or /regex/
    exclude_op_types: list[str] = field(default_factory=list)
    keep_decode_fp32: bool = True       # find a detection decode tail and keep it in float
    # fast | default | best: which calibration method and optimisation passes run when they are
    # not set explicitly (xtrt.quant.techniques.EFFORTS, measured in benchmarks/techniques.md)
    effort: Literal["fast", "default", "best"] = "default"
    # per activation, the calibration method with the smallest error of the consuming layer's output
    per_tensor: Optional[bool] = None
    equalization: EqualizationConfig = field(default_factory=EqualizationConfig)
    bias_correction: BiasCorrectionConfig = field(default_factory=BiasCorrectionConfig)
    lsq: LsqConfig = field(default_factory=LsqConfig)
    adaround: AdaroundConfig = field(default_factory=AdaroundConfig)


@dataclass
class EvaluationConfig:
    data: Optional[str] = None          # held-out images (default: calibration folder, unused files)
    count: int = 16
    batch_size: int = 4
    task: Literal["auto", "classification", "detection", "generic"] = "auto"
    labels: Optional[str] = None        # folder-per-class root or CSV file,label
    annotations: Optional[str] = None   # COCO annotation JSON
    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    rtol: float = 1e-2
    atol: float = 1e-3
    # share of the held-out images used for choices (auto's method, the fallback); the rest is the
    # test part the report's figures come from.  0: choices and report on the same images (said so)
    selection_share: float = 0.5
    min_held_out: int = 30              # fewer held-out images than this: the report warns


@dataclass
class TargetConfig:
    metric: Literal["top1", "map50_95", "sqnr"] = "top1"
    max_drop: float = 0.01              # top1 / map50_95: reach 1 - max_drop (agreement with FP32)
    min_value: Optional[float] = None   # or an absolute floor; sqnr: dB (default 30)

    def goal(self) -> float:
        if self.min_value is not None:
            return float(self.min_value)
        return 30.0 if self.metric == "sqnr" else 1.0 - self.max_drop


@dataclass
class AnalysisConfig:
    graphwise: bool = True
    # graph-wise noise per layer (error accumulated through the graph, all layers INT8): ort: the
    # exported Q/DQ model against FP32 on ONNX Runtime (the per-layer statistics' pass, no pass of
    # its own); ppq: PPQ's graphwise_error_analyse on its torch executor (a pass of its own)
    graphwise_engine: Literal["ort", "ppq"] = "ort"
    layerwise: bool = False
    # build the written model with the TensorRT-RTX builder (when installed) and report the
    # engine's structure: Int8 convolutions, Float layers outside them (not TensorRT 10, no latency)
    trt_rtx: bool = True
    # ort: one ONNX Runtime session with a switch per layer, on the exported Q/DQ semantics;
    # ppq: PPQ's layerwise_error_analyse on its torch executor (same ranking, slower on CPU)
    layerwise_engine: Literal["ort", "ppq"] = "ort"
    target: Optional[TargetConfig] = None
    max_trials: int = 6
    layers_per_trial: int = 2
    # ranked: every trial adds the next layers of the ranking (EfficientNet-Lite0: 0.98 top-1
    # agreement with 42 layers float); greedy: a trial's layers stay float only if the metric (or,
    # when it holds, the output SQNR) improved (YOLOv8n 640: 0.874 mAP vs FP32 with 12 layers,
    # where ranked stalls near 0.82) - see benchmarks/README.md
    # bisect: the fewest leading layers of the ranking that meet the target (galloping 1, 2, 4,
    # ... then bisection), then each of them tried back in INT8 (xtrt.analysis.fallback.run_bisect)
    fallback_strategy: Literal["ranked", "greedy", "bisect"] = "ranked"
    # the order the fallback tries layers in (xtrt.quant.fallback): int8_alone (layer-wise noise
    # with only that layer INT8), float_alone (the all-INT8 model's noise with only that layer
    # float), greedy (float_alone re-ranked after each choice, rerank_steps x rerank_candidates)
    fallback_ranking: Literal["int8_alone", "float_alone", "greedy"] = "int8_alone"
    rerank_steps: int = 6
    rerank_candidates: int = 8
    ranking_batches: int = 2            # selection batches the float_alone / greedy ranking uses
    analysis_steps: int = 4             # batches used by graph-wise analysis
    layerwise_steps: int = 1            # batches for layer-wise (one forward per layer and batch)


@dataclass
class ExportConfig:
    # fp16: everything outside the Q/DQ pairs is FP16 in the ONNX (TensorRT 11 / TensorRT-RTX
    # build strongly typed: float32 tensors run FP32), except nodes kept FP32 for a measured reason.
    # Default by measurement (benchmarks/README.md): FP16 vs FP32 export -0.14 dB (EfficientNet-
    # Lite0) and -0.06 / +0.03 dB (YOLOv8n boxes / scores); TensorRT-RTX: YOLOv8n's 3 Float layers
    # outside the Int8 convolutions -> 0
    float_precision: Literal["fp16", "fp32"] = "fp16"
    # the FP16 export's Q/DQ: 19 writes them at opset 19 with float16 scales and no Casts around
    # them (as ModelOpt does); 13 keeps the Q/DQ's opset with float32 scales and a Cast on each
    # side, for parsers older than TensorRT 10 (opset 9-20).  Default by measurement
    # (benchmarks/corpus.md): TensorRT-RTX builds 0 Float layers outside the Int8 layers on all 8
    # corpus models at 19, where Casts leave 1-2 on 5 of them (xtrt.quant.fp16)
    fp16_qdq_opset: Literal[13, 19] = 19


@dataclass
class Config:
    model: str = ""
    output_dir: Optional[str] = None    # default: <config dir>/xtrt_out/<model stem>
    device: Literal["cpu", "cuda"] = "cpu"
    workers: Optional[int] = None       # image decode threads (default: cores, at most 8; 1: serial)
    plugins: list[str] = field(default_factory=list)
    input: InputConfig = field(default_factory=InputConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    base_dir: str = field(default=".", metadata={"internal": True})

    def path(self, value: Optional[str]) -> Optional[Path]:
        """Resolve a path from the config relative to the config file's folder."""
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


_POSITIVE = {"steps", "workers", "batch_size", "count", "max_trials", "layers_per_trial", "rerank_steps",
             "rerank_candidates", "ranking_batches", "analysis_steps",
             "layerwise_steps", "iterations", "batches",
             "block_size"}


_FLOAT_LITERAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")

def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not allowed",
                              f"use one of: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if isinstance(value, (str, int, float)) and args and args[0] is str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}", "write it as [a, b, ...]")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of keys, got {value!r}",
                              f"write {where}: {{key: value}}")
        return _build(tp, value, where + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}", "use true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}", "use a whole number")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
            value = float(value)     # PyYAML (YAML 1.1) reads 1e-4, with no dot, as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}", "use a number like 0.01")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}", "quote the value")
        return str(value)
    return value


def _build(cls, data: dict, prefix: str = ""):
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else \
                f"allowed keys here: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{key}'", hint)
        conv = _convert(value, hints[key], prefix + key)
        if key in _POSITIVE and isinstance(conv, int) and conv < 1:
            raise ConfigError(f"{prefix}{key}: must be >= 1, got {conv}", "use a positive number")
        kwargs[key] = conv
    return cls(**kwargs)


def config_from_dict(data: dict, base_dir: str | Path = ".") -> Config:
    """Build and validate a :class:`Config` from a plain mapping."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a YAML mapping (key: value lines)",
                          "see data/*.yaml for examples")
    cfg = _build(Config, data)
    cfg.base_dir = str(base_dir)
    _check(cfg)
    return cfg


def _check(cfg: Config) -> None:
    if not cfg.model:
        raise ConfigError("config has no 'model'", "add model: path/to/model.onnx")
    if cfg.calibration.engine == "ppq" and cfg.calibration.method == "entropy":
        raise ConfigError("calibration.method: entropy runs on xtrt's statistics, not on PPQ's "
                          "engine (calibration.engine: ppq)",
                          "set calibration.engine: ort, or another method (kl is PPQ's own)")
    if cfg.preprocess.preset == "plugin" and not cfg.preprocess.plugin:
        raise ConfigError("preprocess.preset is 'plugin' but preprocess.plugin is not set",
                          "set preprocess.plugin: my_pre.py:function")
    if cfg.input.shape is not None and (len(cfg.input.shape) < 2 or
                                        any(d < 1 for d in cfg.input.shape)):
        raise ConfigError(f"input.shape: {cfg.input.shape} is not a valid shape",
                          "write it as [N, C, H, W] with positive sizes")
    for name in ("size", "crop"):
        v = getattr(cfg.preprocess, name)
        if v is not None and (len(v) != 2 or min(v) < 1):
            raise ConfigError(f"preprocess.{name}: {v} is not [height, width]",
                              f"write preprocess.{name}: [640, 640]")
    for name in ("mean", "std"):
        v = getattr(cfg.preprocess, name)
        if v is not None and len(v) not in (1, 3):
            raise ConfigError(f"preprocess.{name}: needs 1 or 3 values, got {len(v)}",
                              f"write preprocess.{name}: [0.5, 0.5, 0.5]")
        if v is not None and not all(math.isfinite(x) for x in v):
            raise ConfigError(f"preprocess.{name}: {v} holds a value that is not finite",
                              f"give finite numbers, e.g. preprocess.{name}: [0.5, 0.5, 0.5]")
    std = cfg.preprocess.std or []
    if any(x == 0 for x in std):
        raise ConfigError(f"preprocess.std: {std} holds a 0 (dividing by it makes every input "
                          "NaN/Inf)", "give the per-channel standard deviations, e.g. "
                          "preprocess.std: [0.229, 0.224, 0.225], or leave std out")
    if cfg.preprocess.scale == 0 or not math.isfinite(cfg.preprocess.scale):
        raise ConfigError(f"preprocess.scale: {cfg.preprocess.scale} makes every input constant",
                          "use a finite non-zero scale, e.g. preprocess.scale: 0.0039215686 (1/255)")
    cal = cfg.calibration
    if cal.seed is not None and not cal.shuffle and not _random_passes(cfg):
        raise ConfigError("calibration.seed is set but nothing in this run is random "
                          "(calibration.shuffle is false, LSQ and AdaRound are off), so it has "
                          "no effect",
                          "set calibration.shuffle: true to draw the calibration files at random "
                          "with that seed, or remove calibration.seed")
    if not 0 <= cfg.evaluation.selection_share < 1:
        raise ConfigError(f"evaluation.selection_share: {cfg.evaluation.selection_share} is not "
                          "in [0, 1)", "use e.g. 0.5 (half the held-out images for choices)")
    if cfg.analysis.target is not None and not 0 <= cfg.analysis.target.max_drop < 1e3:
        raise ConfigError("analysis.target.max_drop must be >= 0", "use e.g. 0.01")


def _random_passes(cfg: Config) -> bool:
    """Whether LSQ or AdaRound run (they pick training batches at random: calibration.seed)."""
    from xtrt.quant.techniques import resolve  # the effort preset decides unset passes

    q = resolve(cfg).quantization
    return bool(q.lsq.enabled or q.adaround.enabled)


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not key=value",
                              "write it as --set calibration.steps=64")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section", "check the key path")
            node = nxt
        node[parts[-1]] = _parse_scalar(text)
    return data


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config file, apply overrides, validate."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist", "check the --config path")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {p.name} is not valid YAML{where}",
                          "fix the indentation/syntax there") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(p)!r}: {exc}", "check the file") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p.name} must be a mapping of keys",
                          "see data/*.yaml for examples")
    data = apply_overrides(data, overrides)
    return config_from_dict(data, base_dir=p.resolve().parent)


def config_to_dict(cfg: Config) -> dict:
    """The resolved config as a plain mapping (for quant_cfg.json / resolved_config.yaml)."""
    d = dataclasses.asdict(cfg)
    d.pop("base_dir", None)
    return d
