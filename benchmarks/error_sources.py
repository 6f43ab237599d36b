"""Where EfficientNet-Lite0's INT8 error comes from, and what these metrics can reach at all.

    python benchmarks/error_sources.py ceiling [--qdq MODEL.onnx] [--json rows.jsonl]
    python benchmarks/error_sources.py sites --qdq MODEL.onnx [--part selection|test] [--json ...]
    python benchmarks/error_sources.py keep --qdq MODEL.onnx --float 'SITE[,SITE...][;...]' [--part test]

Data: ``benchmarks/_bench.py``'s EfficientNet-Lite0 split (32 calibration photos; 103 selection /
310 test images: 15 photos + vtest.avi frames).  Every model runs on ONNX Runtime CPU with graph
optimisation off (Q/DQ pairs simulated in float, the semantics TensorRT runs; see :func:`_run`
for why not 'basic'), against the FP32 model's logits on the same images: top-1 agreement and
SQNR (all images' logits pooled).

* ``ceiling``: the FP16 export of the FP32 model (xtrt's ``convert_fp16``, nothing kept FP32),
  FP32 with only the input rounded to 8 bits (the photo's own grid, step 2/255 on [-1, 1]) and to
  the input Q/DQ's scale (``--qdq``), and Gaussian noise added to the FP32 logits at 20 / 25 /
  30 / 35 dB (200 draws: the agreement a model with exactly that SQNR and logit-independent noise
  would get); plus how many images have a top-1/top-2 logit margin under 1 / 2 / 3 noise sigmas
  at 20 and 25 dB.
* ``sites``: from the all-INT8 Q/DQ model ``--qdq``, every quantisation site (an activation's
  QuantizeLinear/DequantizeLinear pair, or a layer's weight DequantizeLinear) in two ways:
  ``alone`` = every other site float, only this one INT8; ``removed`` = all INT8 but this one float.
  A weight site made float gets the FP32 model's own weight back (not the rounded one).
* ``keep``: all INT8 but the listed sites float (names as ``sites`` prints them).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402


def _arrays(bench, files, cache: Path) -> np.ndarray:
    if cache.is_file():
        return np.load(cache)
    cfg = bench.config()
    prepared, _ = _bench.prepare(bench, cfg)
    src = _bench.batches(bench, cfg, prepared, files, bench.shape[0])
    x = np.concatenate([next(iter(b.feeds.values())) for b in src])[:len(files)]
    np.save(cache, x)
    return x


def _run(model, x: np.ndarray, batch: int = 4) -> np.ndarray:
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    # no graph optimisation: ORT 1.32's 'basic' level already runs WeightBiasQuantization, which
    # quantises a float Conv/Gemm weight per-tensor when the layer's input comes from a
    # DequantizeLinear (a site made float here would get a per-tensor INT8 weight: 5.7 dB)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        n = len(xb)
        if n < batch:
            xb = np.concatenate([xb, np.repeat(xb[-1:], batch - n, 0)])
        outs.append(sess.run(None, {name: xb})[0][:n].astype(np.float32))
    return np.concatenate(outs).reshape(len(x), -1)


def metrics(ref: np.ndarray, out: np.ndarray) -> dict:
    agree = int((ref.argmax(1) == out.argmax(1)).sum())
    n = len(ref)
    noise = float(np.mean((ref - out) ** 2))
    sq = float(10 * np.log10(float(np.mean(ref ** 2)) / max(noise, 1e-30)))
    lo, hi = _bench.wilson(agree, n)
    return {"agree": agree, "total": n, "top1": agree / n, "top1_ci": [lo, hi], "sqnr_db": sq}


def _text(m: dict) -> str:
    return (f"{m['agree']}/{m['total']} ({m['top1']:.1%} [{m['top1_ci'][0]:.1%}, "
            f"{m['top1_ci'][1]:.1%}]), {m['sqnr_db']:.1f} dB")


def _input_scale(qdq) -> float:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(qdq))
    inp = m.graph.input[0].name
    node = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == inp)
    init = {t.name: t for t in m.graph.initializer}
    return float(numpy_helper.to_array(init[node.input[1]]).reshape(-1)[0])


def ceiling(bench, x: np.ndarray, ref: np.ndarray, qdq, emit) -> None:
    import onnx

    from xtrt.quant.fp16 import convert_fp16

    fp32 = onnx.load(str(bench.model))
    emit("FP16 export of the FP32 model", metrics(ref, _run(convert_fp16(fp32, {}), x)))
    step = 2 / 255
    emit("FP32, input rounded to 8 bits (step 2/255)",
         metrics(ref, _run(fp32, np.round(x / step) * step)))
    if qdq:
        s = _input_scale(qdq)
        xq = np.clip(np.round(x / s), -128, 127) * s
        emit(f"FP32, input at the input Q/DQ's INT8 scale ({s:.5f})", metrics(ref, _run(fp32, xq)))
    rng = np.random.default_rng(0)
    power = float(np.mean(ref ** 2))
    top2 = np.sort(ref, 1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    for db in (20, 25, 30, 35):
        sigma = (power / 10 ** (db / 10)) ** 0.5
        agrees = [int((ref.argmax(1) == (ref + rng.normal(0, sigma, ref.shape)).argmax(1)).sum())
                  for _ in range(200)]
        lo, hi = np.percentile(agrees, [2.5, 97.5])
        small = {k: int((margin < k * sigma * 2 ** 0.5).sum()) for k in (1, 2, 3)}
        emit(f"FP32 logits + Gaussian noise at {db} dB (sigma {sigma:.3f})",
             {"top1": float(np.mean(agrees)) / len(ref), "agree_mean": float(np.mean(agrees)),
              "agree_95": [float(lo), float(hi)], "total": len(ref), "sqnr_db": db,
              "margin_below_k_sigma_diff": small})
    emit("top-1/top-2 logit margin of FP32", {
        "median": float(np.median(margin)), "below_0.25": int((margin < 0.25).sum()),
        "below_0.5": int((margin < 0.5).sum()), "below_1": int((margin < 1).sum()),
        "total": len(ref), "logit_rms": power ** 0.5})


def _sites(qmodel) -> list[tuple[str, str]]:
    """(kind, name): 'act' for an activation QuantizeLinear (by its input tensor), 'weight' for
    a DequantizeLinear of an initializer (by the initializer's FP32 name)."""
    init = {t.name for t in qmodel.graph.initializer}
    out = []
    for n in qmodel.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in init:
            out.append(("act", n.input[0]))
        elif n.op_type == "DequantizeLinear" and n.input[0] in init and \
                n.input[0].endswith("_int8"):
            out.append(("weight", n.input[0][:-len("_int8")]))
    return out


def with_float(qmodel, fp32_inits: dict, floated: set) -> object:
    """A copy of ``qmodel`` with the sites in ``floated`` (``(kind, name)``) float: an activation
    pair bypassed, a weight's DequantizeLinear replaced by the FP32 weight."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    g = m.graph
    rename, drop, add = {}, [], []
    by_out = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if n.op_type == "QuantizeLinear" and ("act", n.input[0]) in floated:
            dq = next(d for d in g.node if d.op_type == "DequantizeLinear" and
                      d.input[0] == n.output[0])
            rename[dq.output[0]] = n.input[0]
            drop += [n, dq]
        elif n.op_type == "DequantizeLinear" and n.input[0].endswith("_int8") and \
                ("weight", n.input[0][:-5]) in floated:
            name = n.input[0][:-5]
            add.append(numpy_helper.from_array(fp32_inits[name], name + "_fp32"))
            rename[n.output[0]] = name + "_fp32"
            drop.append(n)
    del by_out
    keep = [n for n in g.node if all(n is not d for d in drop)]
    for n in keep:
        for i, t in enumerate(n.input):
            if t in rename:
                n.input[i] = rename[t]
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(add)
    return m


def sites(bench, x, ref, qdq, emit, skip=(), alone_only=False) -> None:
    import onnx
    from onnx import numpy_helper

    qmodel = onnx.load(str(qdq))
    fp32_inits = {t.name: numpy_helper.to_array(t)
                  for t in onnx.load(str(bench.model)).graph.initializer}
    all_sites = _sites(qmodel)
    if not skip:
        emit("all INT8", metrics(ref, _run(qmodel, x)))
        emit("all float (every site removed)",
             metrics(ref, _run(with_float(qmodel, fp32_inits, set(all_sites)), x)))
    for s in all_sites:
        if f"{s[0]}:{s[1]}" in skip:
            continue
        t0 = time.perf_counter()
        row = {"kind": s[0], "site": s[1],
               "alone": metrics(ref, _run(with_float(qmodel, fp32_inits, set(all_sites) - {s}), x))}
        if not alone_only:
            row["removed"] = metrics(ref, _run(with_float(qmodel, fp32_inits, {s}), x))
        emit(f"{s[0]}:{s[1]}", {**row, "s": round(time.perf_counter() - t0, 1)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["ceiling", "sites", "keep"])
    ap.add_argument("--qdq", help="the all-INT8 Q/DQ export (FP32 float parts)")
    ap.add_argument("--part", default="selection", choices=["selection", "test", "both"])
    ap.add_argument("--float", default="", help="keep: kind:name sites to make float, comma-separated; ';' between models")
    ap.add_argument("--alone-only", action="store_true", help="sites: skip the 'removed' run")
    ap.add_argument("--resume", action="store_true", help="sites: skip the sites --json has")
    ap.add_argument("--work", default="/tmp/acc-work")
    ap.add_argument("--json", help="append one row per figure")
    a = ap.parse_args(argv)
    work = Path(a.work)
    bench = _bench.load_bench("effnet", work)
    parts = {"selection": [("sel", bench.sel)], "test": [("test", bench.test)],
             "both": [("sel", bench.sel), ("test", bench.test)]}[a.part]
    import onnx

    fp32 = onnx.load(str(bench.model))
    for tag, files in parts:
        x = _arrays(bench, files, work / f"effnet_{tag}_{len(files)}.npy")
        ref = _run(fp32, x)

        def emit(label, m, tag=tag, n=len(files)):
            row = {"what": a.what, "part": tag, "images": n, "label": label, **m}
            print(f"[{tag} {n}] {label}: " + (_text(m) if "agree" in m and "top1_ci" in m
                                              else json.dumps(m)), flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(row) + "\n")

        if a.what == "ceiling":
            ceiling(bench, x, ref, a.qdq, emit)
        elif a.what == "sites":
            done = set()
            if a.resume and a.json and Path(a.json).is_file():
                done = {json.loads(r)["label"] for r in open(a.json) if '"alone"' in r}
            sites(bench, x, ref, a.qdq, emit, done, a.alone_only)
        else:
            qmodel = onnx.load(str(a.qdq))
            inits = {t.name: onnx.numpy_helper.to_array(t) for t in fp32.graph.initializer}
            for group in a.float.split(";"):
                fl = {tuple(s.split(":", 1)) for s in group.split(",") if s}
                emit(f"all INT8 but {len(fl)} site(s) float: {group}",
                     metrics(ref, _run(with_float(qmodel, inits, fl), x)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
