"""Where YOLOv8n 640's all-INT8 error comes from: Q/DQ sites made float by group, stage or kind.

    python benchmarks/yolo_error_sites.py [--part selection|test] [--what groups,stages,weights,mix]
                                          [--json rows.jsonl]

Data and scorer: ``benchmarks/_bench.py``'s YOLOv8n 640 split (32 calibration photos; the held-out
photos + vtest.avi frames as selection / test parts), mAP50-95 against the FP32 model's boxes at
conf 0.05 (EfficientNMS_TRT tail re-attached), 95 % bootstrap interval.  The model under study is
xtrt's all-INT8 export with ``calibration.method: minmax`` (the default's method); a *site* is an
activation's QuantizeLinear/DequantizeLinear pair or a layer's weight DequantizeLinear
(``error_sources._sites``), and a site made float gets the FP32 tensor back
(``error_sources.with_float``).

* ``ceiling``: every site float, then xtrt's FP16 export step (what the metric gives a model with
  no INT8 at all), and only the input site INT8 (the least any INT8 first layer costs).
* ``groups``: all INT8; only the input site float; all weights float (activations INT8); all
  activations float (weights INT8); the head (``model.22``) float; activations INT8 only where
  they feed a given op type (Conv, Concat, Split, Add, MaxPool, Resize), everything else float.
* ``stages``: only the activations feeding the convolutions of backbone stage ``k`` INT8
  (everything else float), k = input, 0 .. 9.
* ``weights``: only the weights of stage ``k`` INT8, k = 0 .. 22.
* ``mix``: the minmax export with the activation scales of another method's export (mse,
  percentile, kl, entropy) on the conv inputs outside the head, the rest minmax.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402
import techniques  # noqa: E402
from error_sources import _sites, with_float  # noqa: E402

FAST = "quantization.effort=fast"


def _stage(name: str) -> int:
    m = re.search(r"model\.(\d+)", name)
    return int(m.group(1)) if m else -1


def _export(bench, work: Path, method: str):
    return techniques.export_variant(bench, [FAST, f"calibration.method={method}"], None,
                                     cache=work / "variants")[0]


class Study:
    def __init__(self, bench, ev, work: Path, out):
        import onnx
        from onnx import numpy_helper

        self.bench, self.ev, self.work, self.out = bench, ev, work, out
        self.q = _export(bench, work, "minmax")
        self.fp32 = {t.name: numpy_helper.to_array(t)
                     for t in onnx.load(str(bench.model)).graph.initializer}
        self.sites = _sites(self.q)
        g = self.q.graph
        cons: dict[str, list[int]] = {}       # tensor -> indices of the nodes reading it
        for k, n in enumerate(g.node):
            for i in n.input:
                cons.setdefault(i, []).append(k)
        qof = {n.input[0]: k for k, n in enumerate(g.node) if n.op_type == "QuantizeLinear"}
        self.pair: dict[str, list[int]] = {}  # activation -> its Q and DQ node indices
        self.readers: dict[str, list] = {}    # activation -> nodes reading its DQ
        for kind, t in self.sites:
            if kind == "act":
                dqs = [d for d in cons.get(g.node[qof[t]].output[0], [])
                       if g.node[d].op_type == "DequantizeLinear"]
                self.pair[t] = [qof[t], *dqs]
                self.readers[t] = [g.node[c] for d in dqs for c in cons.get(g.node[d].output[0], [])]

    def acts(self, pred=lambda t: True):
        return [s for s in self.sites if s[0] == "act" and pred(s[1])]

    def conv_inputs(self, pred=lambda t: True):
        return self.acts(lambda t: pred(t) and any(c.op_type == "Conv" for c in self.readers[t]))

    def score(self, label: str, model, n: int) -> None:
        t0 = time.perf_counter()
        f = _bench.score(self.ev, model)
        row = {"label": label, "sites": n, "map50_95": f.get("map50_95"), "map_ci": f.get("map_ci"),
               "reference_boxes": f.get("reference_boxes"), "images": f.get("images"),
               "s": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        if self.out:
            self.out.write(json.dumps(row) + "\n")
            self.out.flush()

    def int8_only(self, label: str, keep) -> None:
        """Only the sites ``keep`` INT8, every other site float."""
        self.score(label, with_float(self.q, self.fp32, set(self.sites) - set(keep)), len(keep))

    def floated(self, label: str, sites) -> None:
        """All INT8 but ``sites``."""
        self.score(label, with_float(self.q, self.fp32, set(sites)), len(sites))


def ceiling(st: Study) -> None:
    import itertools

    from xtrt.quant.precision import apply_float_precision

    cfg = st.bench.config()
    prepared, _ = _bench.prepare(st.bench, cfg)
    src = _bench.batches(st.bench, cfg, prepared, st.bench.cal, cfg.calibration.batch_size)
    fp = with_float(st.q, st.fp32, set(st.sites))
    fp16, _ = apply_float_precision(fp, "fp16", [b.feeds for b in itertools.islice(iter(src), 2)],
                                    plugin_nodes=prepared.tail_nodes, device="cpu",
                                    qdq_opset=cfg.export.fp16_qdq_opset)
    st.score("no INT8 site, FP16 export", fp16, 0)
    inp = st.q.graph.input[0].name
    st.int8_only("only the input site INT8", st.acts(lambda t: t == inp))


def groups(st: Study) -> None:
    inp = st.q.graph.input[0].name
    st.floated("all INT8", [])
    st.floated("input site float", st.acts(lambda t: t == inp))
    st.floated("all weights float (activations INT8)", [s for s in st.sites if s[0] == "weight"])
    st.floated("all activations float (weights INT8)", st.acts())
    st.floated("head (model.22) float", [s for s in st.sites if _stage(s[1]) == 22])
    kinds = sorted({c.op_type for r in st.readers.values() for c in r})
    for k in kinds:
        st.int8_only(f"only activations read by {k} INT8",
                     st.acts(lambda t, k=k: any(c.op_type == k for c in st.readers[t])))


def stages(st: Study) -> None:
    for k in range(-1, 10):
        keep = st.conv_inputs(lambda t, k=k: _stage(t) == k)
        if keep:
            convs = sorted({c.name for _, t in keep for c in st.readers[t] if c.op_type == "Conv"})
            st.int8_only(f"only the conv inputs of stage {k if k >= 0 else 'input'} INT8 "
                         f"({', '.join(convs)})", keep)


def weights(st: Study) -> None:
    w = [s for s in st.sites if s[0] == "weight"]
    for k in range(0, 23):
        keep = [s for s in w if _stage(s[1]) == k]
        if keep:
            st.int8_only(f"only the weights of stage {k} INT8 ({len(keep)} layers)", keep)


def mix(st: Study) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    targets = [t for _, t in st.conv_inputs(lambda t: _stage(t) != 22)]
    for method in ("mse", "percentile", "kl", "entropy"):
        other = _export(st.bench, st.work, method)
        inits = {t.name: t for t in other.graph.initializer}
        scale = {n.input[0]: float(numpy_helper.to_array(inits[n.input[1]]))
                 for n in other.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in targets}
        m = onnx.ModelProto()
        m.CopyFrom(st.q)
        g = m.graph
        for t, value in scale.items():
            name = f"{t}_scale_{method}"
            g.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
            for k in st.pair[t]:
                g.node[k].input[1] = name
        st.score(f"conv inputs outside the head on {method} scales, the rest minmax", m,
                 len(scale))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", default="test", choices=["selection", "test"])
    p.add_argument("--what", default="ceiling,groups,stages,weights,mix")
    p.add_argument("--work", default="/tmp/xtrt-bench")
    p.add_argument("--json")
    a = p.parse_args(argv)
    work = Path(a.work)
    bench = _bench.load_bench("yolo", work)
    ev = _bench.evaluator(bench, bench.sel if a.part == "selection" else bench.test, a.part)
    with open(a.json, "a") if a.json else contextlib.nullcontext() as out:
        st = Study(bench, ev, work, out)
        for what in a.what.split(","):
            {"ceiling": ceiling, "groups": groups, "stages": stages, "weights": weights, "mix": mix}[what.strip()](st)
    ev.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
