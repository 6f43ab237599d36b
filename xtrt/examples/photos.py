"""Assemble a folder of real photographs for examples, slow tests and benchmarks.

Sources (both installed at run time, never committed except the CC0 skimage photos under data/):
* scikit-image's sample photos (CC0 / public domain): 7 images;
* Debian's opencv-doc sample photos (``apt-get download opencv-doc``, unpacked with ``dpkg -x``):
  about 40 natural photos.  Calibration patterns (chessboards, stereo pairs) are left out.

``python -m xtrt.examples.photos DEST [--opencv-doc DIR]`` copies them into DEST.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from xtrt.errors import DataError

__all__ = ["SKIMAGE_PHOTOS", "OPENCV_PHOTOS", "OPENCV_TEXT", "skimage_photos", "opencv_doc_dir",
           "collect_photos", "collect_text_images"]

SKIMAGE_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
                  "hubble_deep_field.jpg", "rocket.jpg")
OPENCV_PHOTOS = (
    "aero1.jpg", "aero3.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "basketball2.png",
    "board.jpg", "building.jpg", "butterfly.jpg", "chicky_512.png", "fruits.jpg", "HappyFish.jpg",
    "home.jpg", "leuvenA.jpg", "leuvenB.jpg", "messi5.jpg", "orange.jpg", "squirrel_cls.jpg",
    "smarties.png", "starry_night.jpg", "stuff.jpg", "rubberwhale1.png", "graf1.png",
    "Blender_Suzanne1.jpg", "ela_original.jpg", "licenseplate_motion.jpg", "lena.jpg",
    "pic1.png", "pic3.png", "pic5.png", "blox.jpg", "box_in_scene.png", "cards.png",
    "ellipses.jpg", "notes.png", "text_defocus.jpg", "aloeL.jpg", "Blender_Suzanne2.jpg",
    "ela_modified.jpg", "graf3.png", "rubberwhale2.png",
)
_OPENCV_SUB = "usr/share/doc/opencv-doc/examples/data"
# photos of text for OCR models: opencv-doc's scene-text samples (examples/text) and text photos
OPENCV_TEXT = (
    "text/scenetext01.jpg", "text/scenetext02.jpg", "text/scenetext03.jpg", "text/scenetext04.jpg",
    "text/scenetext05.jpg", "text/scenetext06.jpg", "text/scenetext_word01.jpg",
    "text/scenetext_word02.jpg", "text/scenetext_word03.jpg", "text/scenetext_word04.jpg",
    "text/scenetext_segmented_word01.jpg", "text/scenetext_segmented_word02.jpg",
    "text/scenetext_segmented_word03.jpg", "text/scenetext_segmented_word04.jpg",
    "text/scenetext_segmented_word05.jpg", "text/scenetext_char01.jpg", "text/scenetext_char02.jpg",
    "text/scenetext_char03.jpg", "data/text_defocus.jpg", "data/text_motion.jpg",
    "data/imageTextN.png", "data/imageTextR.png", "data/notes.png", "data/licenseplate_motion.jpg",
)


def skimage_photos() -> list[Path]:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-image is not installed", "pip install scikit-image==0.26.0")
    root = Path(list(spec.submodule_search_locations)[0]) / "data"
    return [root / n for n in SKIMAGE_PHOTOS if (root / n).is_file()]


def opencv_doc_dir(search: Sequence[str | Path] = ("/tmp/xtrt-opencv-doc", "/"),
                   download: bool = False) -> Path | None:
    """The opencv-doc sample-data folder, if unpacked somewhere (optionally download it)."""
    for base in search:
        d = Path(base) / _OPENCV_SUB
        if d.is_dir():
            return d
    if not download:
        return None
    target = Path(search[0])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, check=True,
                           capture_output=True, timeout=300)
            deb = next(Path(tmp).glob("opencv-doc_*.deb"))
            subprocess.run(["dpkg", "-x", str(deb), str(target)], check=True,
                           capture_output=True, timeout=300)
        except (OSError, subprocess.SubprocessError, StopIteration):
            return None
    d = target / _OPENCV_SUB
    return d if d.is_dir() else None


def collect_photos(dest: str | Path, *, opencv_doc: bool = True, download: bool = False) -> list[Path]:
    """Copy the available photos into ``dest`` (skimage first, then opencv-doc); returns the copies."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    srcs = list(skimage_photos())
    if opencv_doc:
        d = opencv_doc_dir(download=download)
        if d is not None:
            srcs += [d / n for n in OPENCV_PHOTOS if (d / n).is_file()]
    out = []
    for s in srcs:
        t = dest / s.name
        if not t.exists():
            shutil.copyfile(s, t)
        out.append(t)
    return out


def collect_text_images(dest: str | Path, *, download: bool = False) -> list[Path]:
    """Copy opencv-doc's photos of text (scene text, word crops) into ``dest``; returns the copies.

    Empty when opencv-doc is not available (and ``download`` is off or fails).
    """
    d = opencv_doc_dir(download=download)
    if d is None:
        return []
    root = d.parent  # .../examples
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for rel in OPENCV_TEXT:
        src = root / rel
        if src.is_file():
            t = dest / src.name
            if not t.exists():
                shutil.copyfile(src, t)
            out.append(t)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xtrt.examples.photos",
                                description="Copy real sample photos into a folder.")
    p.add_argument("dest")
    p.add_argument("--no-opencv-doc", action="store_true")
    p.add_argument("--download", action="store_true", help="apt-get download opencv-doc if needed")
    a = p.parse_args(argv)
    files = collect_photos(a.dest, opencv_doc=not a.no_opencv_doc, download=a.download)
    print(f"{len(files)} photos in {a.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
