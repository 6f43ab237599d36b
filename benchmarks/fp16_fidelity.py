"""SQNR of the FP32 and the FP16 Q/DQ export against the FP32 source, per body output.

    python benchmarks/fp16_fidelity.py --config c.yaml --source m.onnx --fp32 q32.onnx \
        --fp16 q16.onnx [--count 16]

The body (the graph before any plugin node, e.g. YOLO's raw head before EfficientNMS_TRT) is
compared, on images from ``evaluation.data`` (else ``calibration.data``) preprocessed as the config
says; ONNX Runtime CPU with Q/DQ fusions off (see xtrt.quant.precision.qdq_exact_evaluator).
"""
from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    from xtrt.config import load_config
    from xtrt.data.images import decode_image, list_files
    from xtrt.data.preprocess import build_preprocess
    from xtrt.model.load import load_model
    from xtrt.model.split import runnable_body
    from xtrt.runtime.session import make_session

    p = argparse.ArgumentParser()
    for k in ("--config", "--source", "--fp32", "--fp16"):
        p.add_argument(k, required=True)
    p.add_argument("--count", type=int, default=16)
    a = p.parse_args()
    cfg = load_config(a.config)
    shape = cfg.input.shape
    pre = build_preprocess(cfg.preprocess, tuple(shape[2:4]))
    files = list_files(str(cfg.path(cfg.evaluation.data or cfg.calibration.data)))[-a.count:]
    sess = {k: make_session(runnable_body(load_model(v)), "cpu", optimization="basic")
            for k, v in (("src", a.source), ("fp32", a.fp32), ("fp16", a.fp16))}
    name = sess["src"].get_inputs()[0].name
    outs = [o.name for o in sess["src"].get_outputs()]
    sig = {o: 0.0 for o in outs}
    noise = {k: {o: 0.0 for o in outs} for k in ("fp32", "fp16")}
    for f in files:
        x = pre(decode_image(f))
        x = (x[0] if isinstance(x, tuple) else x)[None].astype(np.float32)
        ref = dict(zip(outs, sess["src"].run(outs, {name: x})))
        for o in outs:
            sig[o] += float(np.sum(ref[o].astype(np.float64) ** 2))
        for k in ("fp32", "fp16"):      # body outputs matched by position
            got = dict(zip(outs, sess[k].run(None, {name: x})))
            for o in outs:
                noise[k][o] += float(np.sum((got[o].astype(np.float64) - ref[o]) ** 2))
    for o in outs:
        d = {k: 10 * np.log10(sig[o] / max(noise[k][o], 1e-30)) for k in noise}
        print(f"{o}: FP32 export {d['fp32']:.2f} dB, FP16 export {d['fp16']:.2f} dB, "
              f"delta {d['fp16'] - d['fp32']:+.2f} dB ({len(files)} images)")


if __name__ == "__main__":
    main()
