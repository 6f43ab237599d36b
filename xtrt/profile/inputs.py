"""What the profiled model is fed: its input shape, the preprocessing, and the feeds."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from xtrt.errors import ConfigError, DataError, ModelError

__all__ = ["InputPlan", "plan_input", "choose_preprocess", "extra_feeds_for", "check_batches"]

log = logging.getLogger(__name__)


@dataclass
class InputPlan:
    """The model input fed from images (or synthetic tensors) and the model's other inputs."""

    name: str
    sample_shape: tuple[int, ...]      # without batch
    batch_dim: int | str | None        # fixed batch, or symbolic/None for dynamic
    dtype: np.dtype
    others: list[tuple[str, list, np.dtype]] = field(default_factory=list)

    @property
    def hw(self) -> tuple[int, int] | None:
        return tuple(self.sample_shape[-2:]) if len(self.sample_shape) == 3 else None


def _np_dtype(elem_type: int) -> np.dtype:
    import onnx

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:  # undefined element type: assume float
        return np.dtype(np.float32)


def plan_input(model, *, name: str | None = None, shape: Sequence[int] | None = None,
               imgsz: Sequence[int] | None = None, preprocess_size: Sequence[int] | None = None
               ) -> InputPlan:
    """Resolve the fed input's per-sample shape from the model, ``--imgsz`` and the config."""
    from xtrt.model.load import input_infos

    infos = input_infos(model)
    if not infos:
        raise ModelError("the model has no inputs", "re-export it with an image input")
    names = [i[0] for i in infos]
    if name is None:
        name = names[0]
    elif name not in names:
        raise ConfigError(f"input.name {name!r} is not an input of the model",
                          f"use one of: {', '.join(names)}")
    _, dims, elem = next(i for i in infos if i[0] == name)
    dims = list(dims)
    if shape is not None:
        if len(shape) != len(dims):
            raise ModelError(f"input.shape {list(shape)} has {len(shape)} dims, input {name!r} has "
                             f"{len(dims)} ({dims})", "give input.shape as [N, C, H, W]")
        for i, (d, s) in enumerate(zip(dims, shape)):
            if i and isinstance(d, int) and d != s:
                raise ModelError(f"input.shape {list(shape)} does not fit input {name!r} {dims}",
                                 "match the model's static dims")
            if i:
                dims[i] = int(s)
    if len(dims) == 4:
        if not isinstance(dims[1], int):
            dims[1] = 3
        hw = imgsz or (preprocess_size if not all(isinstance(d, int) for d in dims[2:]) else None)
        if hw is not None:
            hw = list(hw) * 2 if len(hw) == 1 else list(hw)
            for i, v in zip((2, 3), hw):
                if isinstance(dims[i], int) and dims[i] != v:
                    raise ModelError(f"--imgsz {v} does not fit input {name!r} with fixed size {dims}",
                                     f"use --imgsz {dims[2]},{dims[3]} or leave it out")
                dims[i] = int(v)
    missing = [i for i, d in enumerate(dims[1:], 1) if not isinstance(d, int)]
    if missing:
        raise ConfigError(f"model input {name!r} has a dynamic size {dims}",
                          "give --imgsz 640 (or 320,480), or input.shape: [1, 3, 640, 640] in --config")
    others = [(n, list(d), _np_dtype(e)) for n, d, e in infos if n != name]
    return InputPlan(name, tuple(int(d) for d in dims[1:]), dims[0], _np_dtype(elem), others)


def check_batches(plan: InputPlan, batches: Sequence[int], model_path: str) -> None:
    """A model with a fixed batch runs only that batch size."""
    if isinstance(plan.batch_dim, int) and plan.batch_dim > 0:
        bad = [b for b in batches if b != plan.batch_dim]
        if bad:
            raise ModelError(f"{Path(model_path).name}: input {plan.name!r} has a fixed batch size of "
                             f"{plan.batch_dim}; --batch {bad[0]} cannot run",
                             f"use --batch {plan.batch_dim}, or export the model with a dynamic batch axis")


def extra_feeds_for(plan: InputPlan, batch: int) -> dict[str, np.ndarray]:
    """Synthetic values for the model's inputs other than the image input (ones)."""
    out = {}
    for n, dims, dt in plan.others:
        shape = [batch if i == 0 and not isinstance(d, int) else (d if isinstance(d, int) else 1)
                 for i, d in enumerate(dims)]
        out[n] = np.ones(shape, dtype=dt)
    return out


def choose_preprocess(cfg_pre, plugin: str | None, plan: InputPlan, base_dir: str | None = None):
    """(preprocess callable, description, note or None, the PreprocessConfig) from the config, a
    plugin or a heuristic."""
    from xtrt.config import PreprocessConfig
    from xtrt.data.preprocess import build_preprocess

    note = None
    if plugin:  # --preprocess-plugin: a CLI path, relative to the working directory
        pre, base_dir = PreprocessConfig(preset="plugin", plugin=plugin), None
    elif cfg_pre is not None:  # preprocess.plugin: relative to the config file, as in xtrt.quant
        pre = cfg_pre
    else:
        if plan.hw is None:
            raise DataError(f"images cannot feed input {plan.name!r} of shape {list(plan.sample_shape)}",
                            "leave out --images to profile on synthetic tensors")
        pre = PreprocessConfig(preset="letterbox", size=list(plan.hw))
        note = (f"no --config: letterbox to {plan.hw[0]}x{plan.hw[1]}, RGB, /255 (YOLO style); "
                "give --config (preprocess:) or --preprocess-plugin for other preprocessing")
    desc = pre.preset if pre.preset != "plugin" else f"plugin {pre.plugin}"
    return build_preprocess(pre, plan.hw, base_dir=base_dir), desc, note, pre
