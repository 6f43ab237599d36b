"""Does the FP16 export drift from the FP32 export?  Decided on every held-out image of a bench.

    python benchmarks/fp16_drift.py --model ppocr_cls [--work /tmp/xtrt-bench] [--json out.json]

The model xtrt writes for the bench's ``xtrt-default`` row (``benchmarks/_bench.py``: calibration
images, cached Q/DQ export of ``techniques.export_variant``), as its FP32 export and as its FP16
export at opset 19 (float16 Q/DQ scales) and at opset 13 (Casts around the Q/DQ), is run on the
bench's held-out images (selection + test: the figure decides a property of the export, nothing
is chosen on it) with ONNX Runtime CPU, Q/DQ fusions off.  Against the FP32 source, per export:

* the worst output SQNR (as the corpus table), and the SQNR of the pre-Softmax logits when the
  model ends in a Softmax (a saturated Softmax hides or magnifies logit noise);
* top-1 agreement (Wilson 95 % interval);
* the FP16 - FP32 export SQNR difference with a paired bootstrap 95 % interval over images;
* the resolution: how far the FP32 export's figures move when its input is scaled by 1 + 1e-5
  (xtrt.quant.precision.RESOLUTION_EPS), INT8 rounding flips alone;
* ``fp32_fp16_scales``: the FP32 export with its activation scales rounded to float16 values, as
  the opset-19 export stores them (the INT8 rounding that changes, without FP16 arithmetic).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402

ROUNDS = 1000


def _logit_tensor(model) -> str | None:
    """The input of the Softmax that writes the first graph output (through Identity/Cast), if
    the model ends in one: the logits."""
    producer = {o: n for n in model.graph.node for o in n.output}
    n = producer.get(model.graph.output[0].name)
    while n is not None and n.op_type in ("Identity", "Cast"):
        n = producer.get(n.input[0])
    return n.input[0] if n is not None and n.op_type == "Softmax" else None


def _fp16_valued_scales(qmodel):
    """The FP32 export with every activation Q/DQ scale rounded to its float16 value (stored
    float32), as the opset-19 FP16 export writes them: INT8 rounding moves, no FP16 arithmetic."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    inits = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] not in inits \
                and n.input[1] in inits:
            a = numpy_helper.to_array(inits[n.input[1]])
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(
                a.astype(np.float16).astype(np.float32), n.input[1]))
    return m


def _run_all(model, names, feeds_list, scale: float = 1.0) -> dict[str, np.ndarray]:
    from xtrt.model.split import with_outputs
    from xtrt.runtime.session import make_session

    sess = make_session(with_outputs(model, names), "cpu", optimization="basic")
    got = {n: [] for n in names}
    for feeds in feeds_list:
        f = {k: (v * scale).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
             for k, v in feeds.items()}
        for n, v in zip(names, sess.run(names, f)):
            got[n].append(np.asarray(v, np.float64))
    return {n: np.concatenate(v) for n, v in got.items()}


def _per_image(ref: np.ndarray, got: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signal and noise power per image (first axis)."""
    r, g = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    return (r ** 2).sum(1), ((g - r) ** 2).sum(1)


def _db(sig, noise) -> float:
    return float(10 * np.log10(sig.sum() / max(noise.sum(), 1e-30)))


def _paired_ci(sig, n_a, n_b, rng) -> list[float]:
    """95 % bootstrap interval of SQNR(b) - SQNR(a), images resampled jointly."""
    idx = rng.integers(0, len(sig), (ROUNDS, len(sig)))
    d = [_db(sig[i], n_b[i]) - _db(sig[i], n_a[i]) for i in idx]
    return [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]


def measure(key: str, work: Path) -> dict:
    """The figures above for bench ``key``."""
    from techniques import export_variant

    from xtrt.model.load import load_model
    from xtrt.quant.precision import RESOLUTION_EPS, apply_float_precision

    bench = _bench.load_bench(key, work)
    cfg = bench.config()
    prepared, _ = _bench.prepare(bench, cfg)
    qmodel, _ = export_variant(bench, ["quantization.effort=default"], cache=work / "variants")
    cal = [b.feeds for b in itertools.islice(iter(_bench.batches(
        bench, cfg, prepared, bench.cal, cfg.calibration.batch_size)), 2)]
    models = {"fp32": qmodel, "fp32_fp16_scales": _fp16_valued_scales(qmodel)}
    for opset in (19, 13):
        models[f"fp16_opset{opset}"], _ = apply_float_precision(qmodel, "fp16", cal,
                                                                qdq_opset=opset)
    files = list(bench.sel) + list(bench.test)
    feeds = [b.feeds for b in _bench.batches(bench, cfg, prepared, files, bench.shape[0])]
    source = prepared.reference if prepared.reference is not None else load_model(bench.model)
    outs = [o.name for o in source.graph.output]
    logits = _logit_tensor(source)
    names = outs + ([logits] if logits else [])
    ref = _run_all(source, names, feeds)
    runs = {k: _run_all(m, names, feeds) for k, m in models.items()}
    runs["fp32_eps"] = _run_all(qmodel, names, feeds, 1 + RESOLUTION_EPS)
    rng = np.random.default_rng(0)
    res: dict = {"model": bench.label, "images": len(ref[outs[0]]), "logits": logits,
                 "held_out": f"{len(bench.sel)} selection + {len(bench.test)} test images",
                 "exports": {}}
    for name in names:
        sig, _ = _per_image(ref[name], ref[name])
        noise = {k: _per_image(ref[name], v[name])[1] for k, v in runs.items()}
        row = {k: round(_db(sig, n), 3) for k, n in noise.items()}
        row["resolution_db"] = round(abs(row["fp32_eps"] - row["fp32"]), 3)
        for k in models:
            if k != "fp32":
                row[f"{k}_minus_fp32"] = round(row[k] - row["fp32"], 3)
                row[f"{k}_minus_fp32_ci"] = [round(x, 3) for x in
                                             _paired_ci(sig, noise["fp32"], noise[k], rng)]
        res["exports"][name] = row
    if ref[outs[0]].ndim == 2:                        # a classifier: top-1 agreement
        top = np.argmax(ref[outs[0]], 1)
        res["top1"] = {}
        for k, v in runs.items():
            agree = int((np.argmax(v[outs[0]], 1) == top).sum())
            res["top1"][k] = {"agree": agree, "total": len(top),
                              "ci": [round(x, 3) for x in _bench.wilson(agree, len(top))]}
        res["top1"]["fp16_opset19_vs_fp32_export"] = int(
            (np.argmax(runs["fp16_opset19"][outs[0]], 1) ==
             np.argmax(runs["fp32"][outs[0]], 1)).sum())
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ppocr_cls")
    p.add_argument("--work", default="/tmp/xtrt-bench")
    p.add_argument("--json")
    a = p.parse_args(argv)
    res = measure(a.model, Path(a.work))
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
