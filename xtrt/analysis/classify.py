"""Classification metrics (top-k accuracy, FP32/INT8 agreement) and label loading.

Labels come from one of:
  * an ImageNet-style root folder with one sub-folder per class; class ids are the sorted
    sub-folder names' positions (what torchvision's ``ImageFolder`` does);
  * a mapping from class-folder name to class id, for images that live in class folders whose
    sorted order is not the id order: a dict, a ``.json``/``.yaml`` file ``{folder: id}``, or a
    text file with one class per line, either ``folder id`` or ``folder anything...`` (then the
    line number, from 0, is the id: the ``LOC_synset_mapping.txt`` format);
  * a ``.csv`` file with a header and columns ``file,label``; ``file`` is a path relative to the
    CSV's folder or a bare file name, ``label`` an integer class id.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from xtrt.errors import DataError

__all__ = ["topk_accuracy", "top1_agreement", "load_labels"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


def _logits_2d(logits: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(logits)
    if a.ndim < 2:
        raise DataError(f"{what}: expected logits of shape [N, C], got shape {tuple(a.shape)}",
                        hint="pass the classifier output with its batch axis")
    return a.reshape(a.shape[0], -1)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Share (0..1) of samples whose label is among the k highest logits.

    Args:
        logits: ``[N, C]`` scores (trailing singleton axes such as ``[N, C, 1, 1]`` are flattened).
        labels: ``[N]`` integer class ids in ``0..C-1``.
        k: the k values; a k larger than C counts as C.

    Returns:
        ``{"top1": float, "top5": float, ...}``; 0.0 for every k when N is 0.
    """
    a = _logits_2d(logits, "topk_accuracy")
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != a.shape[0]:
        raise DataError(f"topk_accuracy: {a.shape[0]} logit rows but {y.shape[0]} labels",
                        hint="give one label per image, in the order of the images")
    if y.size and (y.min() < 0 or y.max() >= a.shape[1]):
        raise DataError(f"labels must lie in 0..{a.shape[1] - 1} for a {a.shape[1]}-class output; "
                        f"got {int(y.min())}..{int(y.max())}",
                        hint="check the label file's class ids against the model's classes")
    out: dict[str, float] = {}
    if a.shape[0] == 0:
        return {f"top{kk}": 0.0 for kk in k}
    order = np.argsort(-a, axis=1, kind="stable")
    for kk in k:
        top = order[:, :max(1, min(int(kk), a.shape[1]))]
        out[f"top{kk}"] = float(np.mean(np.any(top == y[:, None], axis=1)))
    return out


def top1_agreement(ref_logits: np.ndarray, test_logits: np.ndarray) -> tuple[int, int]:
    """How many samples get the same arg-max class from both models: ``(agree_count, total)``."""
    r = _logits_2d(ref_logits, "top1_agreement (FP32)")
    t = _logits_2d(test_logits, "top1_agreement (quantized)")
    if r.shape != t.shape:
        raise DataError(f"top1_agreement: FP32 logits {tuple(r.shape)} vs quantized {tuple(t.shape)}",
                        hint="compare the same images through both models")
    return int(np.count_nonzero(np.argmax(r, 1) == np.argmax(t, 1))), int(r.shape[0])


def _read_mapping_file(path: Path) -> dict[str, int]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read label mapping {path}: {e.strerror}",
                        hint="check the path of the label mapping file") from e
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            raw = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml
            raw = yaml.safe_load(text)
        else:
            raw = {}
            for i, line in enumerate(ln for ln in text.splitlines() if ln.strip()):
                parts = line.replace(",", " ").split()
                if len(parts) == 2 and parts[1].isdigit():
                    raw[parts[0]] = int(parts[1])
                else:
                    raw[parts[0]] = i
    except ValueError as e:
        raise DataError(f"label mapping {path} is not valid {suffix.lstrip('.') or 'text'}: {e}",
                        hint="write it as {folder: class_id}") from e
    if not isinstance(raw, Mapping):
        raise DataError(f"label mapping {path} must map class-folder names to class ids",
                        hint="write it as {folder: class_id}")
    return _check_mapping(raw, str(path))


def _check_mapping(raw: Mapping, where: str) -> dict[str, int]:
    out = {}
    for k, v in raw.items():
        try:
            out[str(k)] = int(v)
        except (TypeError, ValueError):
            raise DataError(f"label mapping {where}: class id {v!r} of {k!r} is not an integer",
                            hint="map each class-folder name to an integer class id") from None
    return out


def _labels_from_folders(root: Path, image_paths: Sequence[PathLike]) -> np.ndarray:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"label folder {root} has no class sub-folders",
                        hint="put images in one sub-folder per class, or give a CSV with file,label")
    ids = {c: i for i, c in enumerate(classes)}
    root_r = root.resolve()
    labels = []
    for p in image_paths:
        try:
            rel = Path(p).resolve().relative_to(root_r)
        except ValueError:
            raise DataError(f"no label for image {p}: it is not inside the class folders of {root}",
                            hint="use images from the labelled folder tree") from None
        if len(rel.parts) < 2 or rel.parts[0] not in ids:
            raise DataError(f"no label for image {p}: it is not in a class sub-folder of {root}",
                            hint="move it into the sub-folder of its class")
        labels.append(ids[rel.parts[0]])
    log.debug("labels from %d class folders under %s", len(classes), root)
    return np.asarray(labels, dtype=np.int64)


def _labels_from_mapping(mapping: Mapping[str, int], where: str,
                         image_paths: Sequence[PathLike]) -> np.ndarray:
    labels = []
    for p in image_paths:
        folder = Path(p).parent.name
        if folder not in mapping:
            raise DataError(f"no label for image {p}: its folder {folder!r} is not in the label mapping {where}",
                            hint="add the folder to the mapping or remove the image")
        labels.append(mapping[folder])
    return np.asarray(labels, dtype=np.int64)


def _labels_from_csv(path: Path, image_paths: Sequence[PathLike]) -> np.ndarray:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = [(c or "").strip() for c in (reader.fieldnames or [])]
    except OSError as e:
        raise DataError(f"cannot read label file {path}: {e.strerror}",
                        hint="check the path of the label CSV") from e
    if "file" not in fields or "label" not in fields:
        raise DataError(f"label file {path} needs a header with columns file,label; it has {fields}",
                        hint="add the header line 'file,label'")
    by_path: dict[Path, int] = {}
    by_name: dict[str, set[int]] = {}
    base = path.parent.resolve()
    for line_no, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v.strip() if isinstance(v, str) else "") for k, v in row.items()}
        name, value = row["file"], row["label"]
        try:
            label = int(value)
        except ValueError:
            raise DataError(f"label file {path}, line {line_no}: label {value!r} of {name!r} is not an integer",
                            hint="give integer class ids in the label column") from None
        by_path[(base / name).resolve()] = label
        by_name.setdefault(Path(name).name, set()).add(label)
    labels = []
    for p in image_paths:
        label = by_path.get(Path(p).resolve())
        if label is None:
            found = by_name.get(Path(p).name)
            if found is None:
                raise DataError(f"no label for image {p} in {path}",
                                hint="add a line 'file,label' for it, or remove the image")
            if len(found) > 1:
                raise DataError(f"label for image {p} is ambiguous in {path}: file name "
                                f"{Path(p).name!r} has labels {sorted(found)}",
                                hint="write paths relative to the CSV instead of bare file names")
            label = next(iter(found))
        labels.append(label)
    return np.asarray(labels, dtype=np.int64)


def load_labels(spec: PathLike | Mapping[str, int], image_paths: Sequence[PathLike]) -> np.ndarray:
    """Class id of each image, as ``int64 [len(image_paths)]``.

    Args:
        spec: a root folder of class sub-folders, a ``.csv`` file (``file,label``), a mapping file
            (``.json``/``.yaml``/``.txt``) or a dict from class-folder name to id; see the module
            docstring for the formats.
        image_paths: the images, in the order of the logits they will be compared with.

    Raises:
        DataError: the spec cannot be read, or an image has no label (the message names it).
    """
    if isinstance(spec, Mapping):
        return _labels_from_mapping(_check_mapping(spec, "(dict)"), "(dict)", image_paths)
    path = Path(spec)
    if path.is_dir():
        return _labels_from_folders(path, image_paths)
    if not path.exists():
        raise DataError(f"label source {path} does not exist",
                        hint="give a class-folder root, a file,label CSV or a folder->id mapping file")
    if path.suffix.lower() == ".csv":
        return _labels_from_csv(path, image_paths)
    return _labels_from_mapping(_read_mapping_file(path), str(path), image_paths)
