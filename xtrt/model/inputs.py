"""Which graph input is the image, and what the other inputs of a multi-input model take.

xtrt calibrates with images or tensors: images feed exactly one input (the image input, a 4-D
float tensor whose shape ``input.shape`` sets); every other input needs its own data, which only
``.npy``/``.npz`` calibration files can give (an ``.npz`` holds one array per input name).  Those
inputs must have static non-batch dims.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from xtrt.errors import ModelError

__all__ = ["choose_image_input", "other_inputs", "random_feeds"]

_FLOAT_TYPES = (1, 10, 11, 16)   # onnx FLOAT, FLOAT16, DOUBLE, BFLOAT16


def choose_image_input(infos: Sequence[tuple], input_name: str | None) -> str:
    """The image input's name: ``input_name`` when given (checked), the only input, or the
    only 4-D float input of a multi-input model."""
    names = [i[0] for i in infos]
    if input_name is not None:
        if input_name not in names:
            raise ModelError(f"the model has no input named {input_name!r}",
                             f"use one of {names} for input.name")
        chosen = input_name
    elif len(infos) == 1:
        chosen = infos[0][0]
    else:
        images = [i[0] for i in infos if len(i[1]) == 4 and i[2] in _FLOAT_TYPES]
        if len(images) != 1:
            raise ModelError(f"the model has {len(infos)} inputs ({names}) and "
                             f"{'no' if not images else len(images)} 4-D float image input(s)",
                             "set input.name to the input that images (or the arrays) feed")
        chosen = images[0]
    elem = next(i[2] for i in infos if i[0] == chosen)
    if elem not in _FLOAT_TYPES:
        from onnx import helper

        raise ModelError(f"input {chosen!r} is {helper.tensor_dtype_to_np_dtype(elem)}; xtrt "
                         "calibrates a float image input (INT8 quantizes float activations)",
                         "re-export the model with a float32 image input"
                         + (", or set input.name to the float image input" if len(infos) > 1
                            else ""))
    return chosen


def other_inputs(infos: Sequence[tuple], image: str) -> dict[str, tuple[list[int], str]]:
    """name -> (per-sample dims, numpy dtype name) of every input besides ``image``."""
    from onnx import helper

    out: dict[str, tuple[list[int], str]] = {}
    for name, dims, elem in infos:
        if name == image:
            continue
        rest = list(dims[1:])
        if any(not isinstance(d, int) or d <= 0 for d in rest):
            raise ModelError(f"input {name!r} (besides the image input {image!r}) has dynamic "
                             f"dims {list(dims)}", "re-export the model with static non-batch "
                             f"dims for {name!r}")
        out[name] = (rest, np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name)
    return out


def random_feeds(image: str, shape: Sequence[int], others: dict[str, tuple[list[int], str]],
                 batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds for every input at ``batch`` (default ``shape[0]``): uniform [0, 1) floats,
    integers 0 or 1, False/True for bool inputs."""
    rng = np.random.default_rng(seed)
    n = int(shape[0] if batch is None else batch)
    feeds = {image: rng.random((n, *shape[1:]), dtype=np.float32)}
    for name, (dims, dtype) in others.items():
        dt = np.dtype(dtype)
        if np.issubdtype(dt, np.floating):
            feeds[name] = rng.random((n, *dims)).astype(dt)
        else:
            feeds[name] = rng.integers(0, 2, (n, *dims)).astype(dt)
    return feeds
