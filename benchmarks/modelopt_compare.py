"""Same-data comparison of NVIDIA ModelOpt INT8 (``calibration_method="max"``) with xtrt on YOLOv8n 640.

    cd /work/main && PYTHONPATH=$PWD python benchmarks/modelopt_compare.py \\
        --modelopt-python /work/venv-modelopt/bin/python \\
        --calib /tmp/xtrt-bench-fidelity/calib --heldout /tmp/xtrt-bench-fidelity/heldout_yolo \\
        [--model data/yolov8n_e2e.onnx] [--work /tmp/mo_cmp] [--methods minmax,mse]

What it does, every model scored by xtrt's own evaluator on the same images:

1. xtrt prepares the model (``prepare_model``: fixed 640, symbolic batch, opset 13, NMS tail cut
   off); the prepared FP32 body goes to ``WORK/body.onnx`` and the calibration images, through
   xtrt's letterbox preprocessing, to ``WORK/calib.npy`` (N, 3, 640, 640 float32).
2. ModelOpt quantizes ``body.onnx`` (int8, max, ``high_precision_dtype="fp32"``, CPU calibration
   EP) in **its own virtual environment** (``--modelopt-python``; ModelOpt pins onnx~=1.21): this
   file runs itself there through ``subprocess`` with the hidden ``_modelopt`` sub-command, which
   imports nothing from xtrt.
3. xtrt calibrates (``calibration.method`` = each of ``--methods``, ORT statistics + PPQ scale rule)
   and writes its all-INT8 Q/DQ body with ``export_qdq``.
4. Every body (FP32, ModelOpt, xtrt per method) gets the original EfficientNMS_TRT tail re-attached
   the same way (:func:`with_tail`) and runs through ``SplitRunner``; ``evaluate`` gives mAP50-95 /
   mAP50 against the FP32 model's own detections.  The raw body outputs (box rows and score rows of
   the YOLO head) are compared with FP32: max abs error and SQNR over all held-out images.
5. The activation input scale of a few sensitive Convs: ModelOpt's QuantizeLinear scale vs xtrt's
   ``act_scales``.

Prints markdown tables.  A benchmark script: nothing under ``tests/`` imports it.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENSITIVE = ["/model.2/cv1/conv/Conv", "/model.1/conv/Conv", "/model.2/cv2/conv/Conv",
             "/model.0/conv/Conv", "/model.3/conv/Conv"]
SIZE = 640
BATCH = 4


# -- the part that runs in ModelOpt's venv --------------------------------------------------------

def _modelopt_worker(body: str, calib: str, out: str, method: str) -> None:
    import numpy as np
    from modelopt.onnx.quantization import quantize

    t0 = time.perf_counter()
    quantize(onnx_path=body, quantize_mode="int8", calibration_data=np.load(calib),
             calibration_method=method, calibration_eps=["cpu"], high_precision_dtype="fp32",
             output_path=out, log_level="WARNING")
    print(f"modelopt_seconds {time.perf_counter() - t0:.2f}")


def run_modelopt(python: str, body: Path, calib: Path, out: Path, method: str = "max") -> float:
    """Quantize ``body`` with ModelOpt in the interpreter ``python``; returns its quantize() seconds."""
    proc = subprocess.run([python, str(Path(__file__).resolve()), "_modelopt", str(body), str(calib),
                           str(out), method], capture_output=True, text=True, cwd=str(out.parent))
    if proc.returncode != 0 or not out.is_file():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"ModelOpt failed (exit {proc.returncode})")
    secs = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("modelopt_seconds")]
    return float(secs[-1]) if secs else float("nan")


# -- xtrt side ------------------------------------------------------------------------------------

def with_tail(body, prepared):
    """``body`` (a possibly quantized copy of ``prepared.body``) + the prepared model's plugin tail,
    with the source model's outputs, exactly as ``prepare_model`` builds ``prepared.model``."""
    import onnx

    full = onnx.ModelProto()
    full.CopyFrom(body)
    tail = [n for n in prepared.model.graph.node if n.name in set(prepared.tail_nodes)]
    full.graph.node.extend(tail)
    have = {i.name for i in full.graph.initializer}
    tail_inputs = {i for n in tail for i in n.input}
    full.graph.initializer.extend(t for t in prepared.model.graph.initializer
                                  if t.name in tail_inputs and t.name not in have)
    del full.graph.output[:]
    full.graph.output.extend(prepared.model.graph.output)
    domains = {i.domain for i in full.opset_import}
    full.opset_import.extend(i for i in prepared.model.opset_import if i.domain not in domains)
    return full


class _Recorder:
    """Runs a body+tail model through ``SplitRunner`` and hands each batch's body outputs to ``sink``."""

    def __init__(self, model, sink, **session_kwargs):
        from xtrt.runtime.split import SplitRunner

        self.runner = SplitRunner(model, **session_kwargs)
        self.output_names = self.runner.output_names
        self.sink = sink

    def run(self, feeds):
        body = self.runner.run_body(feeds)
        self.sink(body)
        return self.runner.run_tail(feeds, body)


def _act_scale_modelopt(model, node_name: str) -> float | None:
    """Scale of the QuantizeLinear whose DequantizeLinear feeds input 0 of ``node_name``."""
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    prod = {o: n for n in model.graph.node for o in n.output}
    node = next((n for n in model.graph.node if n.name == node_name), None)
    if node is None:
        return None
    dq = prod.get(node.input[0])
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = prod.get(dq.input[0])
    name = q.input[1] if q is not None and q.op_type == "QuantizeLinear" else dq.input[1]
    v = consts.get(name)
    return None if v is None else float(v.reshape(-1)[0])


def _qdq_summary(model) -> str:
    inits = {i.name for i in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}
    acts = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    dqs = [n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    fed = {n.name for n in model.graph.node for i in n.input if i in set(dqs)
           and n.op_type not in ("QuantizeLinear", "DequantizeLinear")}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    int8_convs = sum(1 for n in convs if (p := prod.get(n.input[0])) is not None
                     and p.op_type == "DequantizeLinear")
    return f"{int8_convs}/{len(convs)} Conv, {len(fed)} ops, {len(acts)} act Q"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "data" / "yolov8n_e2e.onnx"))
    ap.add_argument("--calib", default="/tmp/xtrt-bench-fidelity/calib")
    ap.add_argument("--heldout", default="/tmp/xtrt-bench-fidelity/heldout_yolo")
    ap.add_argument("--work", default="/tmp/mo_cmp")
    ap.add_argument("--modelopt-python", default="/work/venv-modelopt/bin/python",
                    help="python of the venv where nvidia-modelopt[onnx] is installed "
                         "(python -m venv /work/venv-modelopt; pip install 'nvidia-modelopt[onnx]')")
    ap.add_argument("--methods", default="minmax,mse", help="xtrt calibration methods")
    ap.add_argument("--optimization", default="basic", choices=["all", "extended", "basic", "disable"],
                    help="ONNX Runtime graph optimisation level for every evaluated model ('basic', "
                         "compare.py's: DequantizeLinear + float op, WeightBiasQuantization off; "
                         "'all' fuses Q/DQ into ORT's saturating CPU QLinear kernels)")
    args = ap.parse_args(argv)

    import numpy as np
    import onnx

    sys.path.insert(0, str(ROOT))
    from xtrt.config import Config, PreprocessConfig
    from xtrt.data.images import list_files
    from xtrt.data.preprocess import build_preprocess
    from xtrt.data.source import BatchSource
    from xtrt.model.load import dims_of, load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.export import export_qdq
    from xtrt.quant.calibrate import calibrate
    from xtrt.analysis.task import infer_task
    from xtrt.quant.placement import plan_placement
    from xtrt.quant.verify import evaluate, metric_value, prepare_eval

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src = load_model(args.model)
    pm = prepare_model(src, [BATCH, 3, SIZE, SIZE])
    pre = build_preprocess(PreprocessConfig(preset="letterbox", size=[SIZE, SIZE]))
    cal = list(BatchSource(list_files(args.calib), pm.input_name, (3, SIZE, SIZE), pre, BATCH))
    ev = list(BatchSource(list_files(args.heldout), pm.input_name, (3, SIZE, SIZE), pre, BATCH))
    body_path, calib_path = work / "body.onnx", work / "calib.npy"
    onnx.save(pm.body, str(body_path))
    np.save(calib_path, np.concatenate([b.feeds[pm.input_name] for b in cal]).astype(np.float32))
    n_cal, n_ev = sum(b.size for b in cal), sum(b.size for b in ev)

    models: dict[str, tuple] = {}   # label -> (body ModelProto, seconds)
    models["FP32 body (sanity)"] = (pm.body, 0.0)
    mo_path = work / "body_modelopt_max.onnx"
    t0 = time.perf_counter()
    mo_inner = run_modelopt(args.modelopt_python, body_path, calib_path, mo_path)
    print(f"ModelOpt: quantize() {mo_inner:.1f} s, subprocess {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    mo_body = onnx.load(str(mo_path))
    models["ModelOpt 0.47 int8 max, fp32"] = (mo_body, mo_inner)

    cfg = Config()
    task, layout = infer_task([dims_of(o) for o in pm.model.graph.output], cfg.evaluation.task,
                              pm.input_shape[2:4])
    cals = {}
    for method in [m for m in args.methods.split(",") if m]:
        cfg = Config()
        cfg.calibration.method = method
        pl = plan_placement(pm.model, plugin_tail=pm.tail_nodes)
        t0 = time.perf_counter()
        c = calibrate(cfg, pm, pl, cal, progress=False).result
        pl.quantize = [n for n in pl.quantize if n in set(c.quantized_ops)]
        qbody = export_qdq(pm.body, c, pl)
        models[f"xtrt {method} (all INT8)"] = (qbody, time.perf_counter() - t0)
        cals[method] = c

    # FP32 reference: final outputs for the evaluator, body outputs for the raw comparison
    ref_body: list[dict] = []
    ref_runner = _Recorder(with_tail(pm.body, pm), ref_body.append, optimization=args.optimization)
    ed = prepare_eval(ref_runner, ev, task, layout, conf=cfg.evaluation.conf_threshold,
                      iou=cfg.evaluation.iou_threshold)
    body_names = list(ref_body[0])

    rows = []
    for label, (body, secs) in models.items():
        acc = {n: [0.0, 0.0, 0.0] for n in body_names}   # signal power, noise power, max abs
        it = iter(ref_body)

        def sink(outs, acc=acc, it=it):
            ref = next(it)
            for n in body_names:
                r, q = ref[n].astype(np.float64), outs[n].astype(np.float64)
                acc[n][0] += float((r ** 2).sum())
                acc[n][1] += float(((r - q) ** 2).sum())
                acc[n][2] = max(acc[n][2], float(np.abs(r - q).max()))

        t0 = time.perf_counter()
        runner = _Recorder(with_tail(body, pm), sink, optimization=args.optimization)
        e = evaluate(runner.run, ed)
        t_eval = time.perf_counter() - t0
        raw = {n: (v[2], 10 * np.log10(v[0] / v[1]) if v[1] > 0 else float("inf"))
               for n, v in acc.items()}
        rows.append((label, secs, e, raw, t_eval, _qdq_summary(body)))
        print(f"{label}: {e.task} ({t_eval:.1f} s)", file=sys.stderr)

    print(f"\nYOLOv8n 640 ({Path(args.model).name}), {n_cal} calibration images, {n_ev} held-out "
          f"images, ONNX Runtime CPU (optimization={args.optimization}); mAP is against the FP32 "
          f"model's own detections at conf {cfg.evaluation.conf_threshold}, "
          f"IoU {cfg.evaluation.iou_threshold}.\n")
    hdr = ["model", "quantize s", "INT8 placement", "mAP50-95 vs FP32", "mAP50 vs FP32",
           "detections / ref boxes", "final outputs worst SQNR dB"]
    for n in body_names:
        hdr += [f"{n} max abs", f"{n} SQNR dB"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for label, secs, e, raw, _, qdq in rows:
        t = e.task
        sq = metric_value(e, "sqnr")
        cells = [label, f"{secs:.1f}", qdq, f"{t['map50_95']:.3f}", f"{t['map50']:.3f}",
                 f"{t['detections']} / {t['reference_boxes']}",
                 "inf" if sq is None or not np.isfinite(sq) else f"{sq:.1f}"]
        for n in body_names:
            cells += [f"{raw[n][0]:.4g}", "inf" if not np.isfinite(raw[n][1]) else f"{raw[n][1]:.1f}"]
        print("| " + " | ".join(cells) + " |")

    print("\nActivation input scale (symmetric INT8; amax = 127 x scale) of the sensitive Convs:\n")
    meths = list(cals)
    hdr = ["Conv", "ModelOpt max"] + [f"xtrt {m}" for m in meths] + \
          [f"ModelOpt / xtrt {meths[0]}"] if meths else ["Conv", "ModelOpt max"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for node in SENSITIVE:
        mo = _act_scale_modelopt(mo_body, node)
        xs = [cals[m].act_scales.get((node, 0)) for m in meths]
        cells = [node, "-" if mo is None else f"{mo:.5g}"] + \
                ["-" if s is None else f"{s:.5g}" for s in xs]
        if meths:
            cells.append("-" if mo is None or not xs[0] else f"{mo / xs[0]:.3f}")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_modelopt":
        _modelopt_worker(*sys.argv[2:6])
        sys.exit(0)
    sys.exit(main())
