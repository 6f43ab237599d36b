"""Export MTCNN's ONet (face box, 5 landmarks, face probability) from facenet-pytorch's weights.

    pip install --no-deps facenet-pytorch==2.6.0
    python -m xtrt.examples.mtcnn --out build/mtcnn_onet.onnx

facenet-pytorch (MIT) ships ``facenet_pytorch/data/onet.pt``, a state dict; importing the package
needs torchvision, so the network is rebuilt here layer for layer (facenet_pytorch/models/mtcnn.py,
class ONet) and the state dict is loaded into it.  Input ``input`` [N, 3, 48, 48] RGB,
``(x - 127.5) * 0.0078125``; outputs ``box`` [N, 4], ``landmarks`` [N, 10], ``prob`` [N, 2]
(softmax), in the order ONet returns them; the batch axis is dynamic.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from xtrt.errors import XtrtError

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "locate_onet_weights", "build_onet", "export_onet", "main"]

INPUT_NAME = "input"
OUTPUT_NAMES = ("box", "landmarks", "prob")
_PIP_HINT = "pip install --no-deps facenet-pytorch==2.6.0"


def locate_onet_weights() -> Path:
    """Path of facenet-pytorch's ``data/onet.pt`` (found without importing the package)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "data" / "onet.pt"
        if path.is_file():
            return path
    raise XtrtError("facenet-pytorch's MTCNN weights (facenet_pytorch/data/onet.pt) are not "
                    "installed", _PIP_HINT)


def build_onet():
    """The pretrained ONet as a torch module in eval() mode."""
    import torch
    from torch import nn

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.softmax6_1 = nn.Linear(256, 2), nn.Softmax(dim=1)
            self.dense6_2, self.dense6_3 = nn.Linear(256, 4), nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x))
            x = x.permute(0, 3, 2, 1).contiguous()
            x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
            return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))

    net = ONet()
    state = torch.load(str(locate_onet_weights()), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


def export_onet(out: str | Path, *, opset: int = 13) -> Path:
    """Export the pretrained ONet (TorchScript exporter, dynamic batch) to one ONNX file."""
    import onnx
    import torch

    from xtrt.model.load import save_model_atomic

    net = build_onet()
    with tempfile.TemporaryDirectory(prefix="xtrt-onet-") as tmp, torch.no_grad():
        raw = Path(tmp) / "onet.onnx"
        torch.onnx.export(net, (torch.zeros(1, 3, 48, 48),), str(raw), dynamo=False,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *OUTPUT_NAMES)},
                          opset_version=opset, do_constant_folding=True)
        proto = onnx.load(str(raw))
    return save_model_atomic(proto, Path(out))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xtrt.examples.mtcnn --out FILE.onnx [--opset N]``."""
    from xtrt.cli import add_common_args, configure_logging

    p = argparse.ArgumentParser(prog="python -m xtrt.examples.mtcnn",
                                description="Export facenet-pytorch's pretrained MTCNN ONet to ONNX.")
    p.add_argument("--out", required=True, help="destination .onnx file")
    p.add_argument("--opset", type=int, default=13)
    add_common_args(p)
    a = p.parse_args(argv)
    configure_logging(a.verbose, a.quiet)
    path = export_onet(a.out, opset=a.opset)
    print(f"PASSED xtrt.examples.mtcnn: wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def entry() -> None:
    from xtrt.cli import run_main

    sys.exit(run_main(main))


if __name__ == "__main__":
    entry()
