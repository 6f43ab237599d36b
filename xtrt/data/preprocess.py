"""Preprocessing presets: image (RGB uint8 HWC) -> model input (float32 CHW) plus the metadata
needed to map detections back to the original image."""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from xtrt.errors import ConfigError

__all__ = ["PreMeta", "letterbox", "resize_crop", "build_preprocess", "load_callable",
           "call_plugin", "resolve_plugin_spec"]

log = logging.getLogger(__name__)

Preprocess = Callable[[np.ndarray], "tuple[np.ndarray, PreMeta]"]


@dataclass(frozen=True)
class PreMeta:
    """How an image was mapped into the model input: ``x_in = x_orig * scale + pad``."""

    orig_hw: tuple[int, int]
    scale: tuple[float, float] = (1.0, 1.0)  # (sy, sx)
    pad: tuple[float, float] = (0.0, 0.0)    # (top, left)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    if img.shape[0] == h and img.shape[1] == w:
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def letterbox(img: np.ndarray, size: Sequence[int], *, pad_value: int = 114, color: str = "rgb",
              scale: float = 1 / 255.0, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> tuple[np.ndarray, PreMeta]:
    """YOLO-style letterbox: keep aspect ratio, pad to ``size`` (h, w), centre the image."""
    h, w = img.shape[:2]
    th, tw = int(size[0]), int(size[1])
    r = min(th / h, tw / w)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    resized = _resize(img, nh, nw)
    top, left = (th - nh) // 2, (tw - nw) // 2
    canvas = np.full((th, tw, 3), pad_value, dtype=np.uint8)
    canvas[top:top + nh, left:left + nw] = resized
    x = _finish(canvas, color, scale, mean, std)
    return x, PreMeta((h, w), (nh / h, nw / w), (float(top), float(left)))


def resize_crop(img: np.ndarray, short_side: int, crop: Sequence[int], *, color: str = "rgb",
                scale: float = 1 / 255.0, mean: Sequence[float] | None = (0.485, 0.456, 0.406),
                std: Sequence[float] | None = (0.229, 0.224, 0.225)) -> tuple[np.ndarray, PreMeta]:
    """Classifier preprocessing: resize the short side, centre-crop, normalise."""
    h, w = img.shape[:2]
    r = short_side / min(h, w)
    nh, nw = max(int(crop[0]), round(h * r)), max(int(crop[1]), round(w * r))
    resized = _resize(img, nh, nw)
    ch, cw = int(crop[0]), int(crop[1])
    top, left = (nh - ch) // 2, (nw - cw) // 2
    cropped = resized[top:top + ch, left:left + cw]
    x = _finish(cropped, color, scale, mean, std)
    return x, PreMeta((h, w), (nh / h, nw / w), (-float(top), -float(left)))


def _finish(img: np.ndarray, color: str, scale: float, mean, std) -> np.ndarray:
    if color == "bgr":
        img = img[:, :, ::-1]
    x = img.astype(np.float32) * np.float32(scale)
    if mean is not None:
        x -= np.asarray(mean, dtype=np.float32)
    if std is not None:
        x /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_callable(spec: str, what: str = "preprocess plugin") -> Callable:
    """Load ``path/to/file.py:function`` (or ``package.module:function``)."""
    if ":" not in spec:
        raise ConfigError(f"{what} {spec!r} has no function name",
                          "write it as my_pre.py:function_name")
    mod_part, func_name = spec.rsplit(":", 1)
    try:
        if mod_part.endswith(".py"):
            path = Path(mod_part).expanduser()
            if not path.is_file():
                raise ConfigError(f"{what} file {mod_part!r} does not exist", "fix the path")
            mspec = importlib.util.spec_from_file_location(f"xtrt_user_{path.stem}", path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(mod_part)
    except ConfigError:
        raise
    except SystemExit as exc:
        raise ConfigError(f"{what} {mod_part!r} called sys.exit({exc.code!r}) while loading",
                          "remove the sys.exit call from that file") from None
    except Exception as exc:
        raise ConfigError(f"cannot load {what} {mod_part!r}: {type(exc).__name__}: {exc}",
                          "fix the error in that file") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"{what} {mod_part!r} has no function {func_name!r}",
                          f"define def {func_name}(image) in it")
    return func


def call_plugin(func: Callable, spec: str, img: np.ndarray):
    """``func(img)``; an exception or ``sys.exit`` in the user's function becomes one ConfigError."""
    where = f"preprocess plugin {spec}"
    try:
        return func(img)
    except SystemExit as exc:
        raise ConfigError(f"{where} called sys.exit({exc.code!r})",
                          "return the preprocessed array instead of exiting") from None
    except (KeyboardInterrupt, MemoryError, ConfigError):
        raise
    except Exception as exc:
        raise ConfigError(f"{where} raised {type(exc).__name__}: {exc}",
                          "fix that function (run with -v for the traceback)") from exc


def resolve_plugin_spec(spec: str, base_dir: str | Path | None) -> str:
    """``file.py:func`` with a relative file resolved against ``base_dir`` (the config's folder);
    module specs (``pkg.mod:func``), absolute paths and ``base_dir=None`` (CLI: the working
    directory) are returned unchanged."""
    if base_dir is None or ":" not in spec:
        return spec
    file, func = spec.rsplit(":", 1)
    if not file.endswith(".py") or Path(file).expanduser().is_absolute():
        return spec
    return f"{Path(base_dir) / Path(file).expanduser()}:{func}"


def build_preprocess(pre, input_hw: tuple[int, int] | None = None,
                     base_dir: str | Path | None = None) -> Preprocess:
    """Turn a :class:`xtrt.config.PreprocessConfig` into a callable ``img -> (chw, PreMeta)``.

    ``input_hw`` is the model's spatial input size, used when the config gives none;
    ``base_dir`` is the config's folder, against which ``preprocess.plugin`` is resolved.
    """
    preset = pre.preset
    if preset == "letterbox":
        size = tuple(pre.size) if pre.size else input_hw
        if not size:
            raise ConfigError("preprocess.size is required for the letterbox preset on a model "
                              "with a dynamic spatial size", "set preprocess.size: [640, 640]")
        return lambda img: letterbox(img, size, pad_value=pre.pad_value, color=pre.color,
                                     scale=pre.scale, mean=pre.mean, std=pre.std)
    if preset == "resize_crop":
        crop = tuple(pre.crop) if pre.crop else input_hw
        if not crop:
            raise ConfigError("preprocess.crop is required for resize_crop on a dynamic-size model",
                              "set preprocess.crop: [224, 224]")
        short = pre.short_side or int(round(max(crop) * 256 / 224))
        mean = pre.mean if pre.mean is not None else (0.485, 0.456, 0.406)
        std = pre.std if pre.std is not None else (0.229, 0.224, 0.225)
        return lambda img: resize_crop(img, short, crop, color=pre.color, scale=pre.scale,
                                       mean=mean, std=std)
    if preset == "plugin":
        spec = resolve_plugin_spec(pre.plugin, base_dir)
        func = load_callable(spec)

        def run_plugin(img: np.ndarray):
            out = call_plugin(func, spec, img)
            if isinstance(out, tuple):
                arr, meta = out
            else:
                arr, meta = out, PreMeta(img.shape[:2])
            return np.ascontiguousarray(np.asarray(arr, dtype=np.float32)), meta
        return run_plugin
    raise ConfigError(f"unknown preprocess preset {preset!r}",
                      "use one of: letterbox, resize_crop, plugin")
