"""Thin wrapper with the original script's name: ``python tools/quant/profile_onnx.py MODEL.onnx ...``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from xtrt.profile.__main__ import entry  # noqa: E402

if __name__ == "__main__":
    entry()
