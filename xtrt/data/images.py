"""Finding and decoding image files."""
from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from xtrt.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "TENSOR_SUFFIXES", "list_files", "decode_image"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
TENSOR_SUFFIXES = (".npy", ".npz")


def list_files(spec: str | Path | Iterable[str | Path],
               suffixes: tuple[str, ...] = IMAGE_SUFFIXES + TENSOR_SUFFIXES) -> list[Path]:
    """Files named by ``spec``: a folder (searched recursively), a glob, one file, or a list of these.

    The order is deterministic (sorted by path).  Raises DataError when the spec names nothing.
    """
    if isinstance(spec, (list, tuple)):
        out: list[Path] = []
        for item in spec:
            out.extend(list_files(item, suffixes))
        return sorted(dict.fromkeys(out))
    text = str(spec)
    p = Path(text).expanduser()
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes]
    elif p.is_file():
        files = [p]
    elif any(c in text for c in "*?["):
        files = [Path(f) for f in glob.glob(text, recursive=True)
                 if Path(f).is_file() and Path(f).suffix.lower() in suffixes]
    else:
        raise DataError(f"data path {text!r} does not exist",
                        "point calibration.data at a folder, a glob or a .npy/.npz file")
    files = sorted(files)
    if not files:
        raise DataError(f"no images or tensors found in {text!r} (looked for {', '.join(suffixes)})",
                        "put jpg/png/bmp/webp images or .npy/.npz tensors there, or fix the path")
    return files


def decode_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an RGB uint8 array [H, W, 3].

    Grayscale, palette, 16-bit and RGBA images are converted (alpha composited on black).
    Raises DataError if the file cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im)
            if im.mode == "I;16" or im.mode == "I":
                arr = np.asarray(im, dtype=np.float64)
                arr = (arr / max(arr.max(), 1) * 255).astype(np.uint8)
                return np.repeat(arr[:, :, None], 3, axis=2)
            return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except Image.DecompressionBombError as exc:  # a header claiming ~20000x20000 pixels
        raise DataError(f"cannot decode image {str(path)!r}: it claims more pixels than PIL's "
                        f"limit ({exc})", "remove the file or downscale it") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot decode image {str(path)!r}: {exc}",
                        "remove the file or replace it with a valid image") from exc
