"""``xtrt.quant``: config in, quantized.onnx + quant_cfg.json + report out.

prepare -> data -> placement -> calibrate (PPQ) -> export -> verify (ORT) -> analysis/fallback
-> write outputs.  Every file is written into a staging folder inside ``output_dir`` and moved into
place only when the whole run succeeded.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from xtrt.config import Config
from xtrt.errors import DataError

__all__ = ["QuantResult", "run_quant"]

log = logging.getLogger(__name__)


@dataclass
class QuantResult:
    """What a run produced: final file paths, the report document, and timings."""

    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    seconds: float = 0.0


def _files(cfg: Config):
    from xtrt.data.images import list_files
    from xtrt.data.source import split_files

    if not cfg.calibration.data:
        raise DataError("config has no calibration.data", "set calibration.data: path/to/images")
    files = list_files(str(cfg.path(cfg.calibration.data)))
    n_cal = cfg.calibration.steps * cfg.calibration.batch_size
    cal, rest = split_files(files, n_cal, None, seed=cfg.calibration.seed,
                            shuffle=cfg.calibration.shuffle)
    if cfg.evaluation.data:
        ev_all = list_files(str(cfg.path(cfg.evaluation.data)))
        cal_set = set(cal)
        ev = [f for f in ev_all if f not in cal_set][:cfg.evaluation.count]
    else:
        ev = rest[:cfg.evaluation.count]
    return cal, ev


def run_quant(cfg: Config, *, progress: bool = True) -> QuantResult:
    """Run the whole quantization job described by ``cfg``; see the module docstring."""
    from xtrt.analysis.fallback import run_fallback
    from xtrt.analysis.task import infer_task
    from xtrt.quant.outputs import check_output_dir, write_outputs
    from xtrt.backend import ppq as ppq_backend
    from xtrt.data.preprocess import build_preprocess
    from xtrt.data.source import BatchSource
    from xtrt.model.load import dims_of, load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant import export as ex
    from xtrt.quant.placement import plan_placement
    from xtrt.quant.verify import evaluate, metric_value, prepare_eval
    from xtrt.runtime.split import SplitRunner

    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 3)

    out_dir = Path(cfg.output_dir) if cfg.output_dir and Path(cfg.output_dir).is_absolute() else (
        cfg.path(cfg.output_dir) if cfg.output_dir else
        Path(cfg.base_dir) / "xtrt_out" / Path(cfg.model).stem)
    out_dir = out_dir.resolve()
    if cfg.device == "cuda":
        from xtrt.runtime.session import providers_for
        providers_for("cuda")
    import xtrt.ops as ops

    for plugin in cfg.plugins:
        ops.REGISTRY.load_plugin(str(cfg.path(plugin)))

    # 1. model
    t0 = time.perf_counter()
    model_path = cfg.path(cfg.model)
    source = load_model(model_path)
    prepared = prepare_model(source, cfg.input.shape, cfg.input.name)
    lap("prepare", t0)
    log.info("prepared %s: %s", model_path.name, "; ".join(prepared.steps))

    # 2. data
    t0 = time.perf_counter()
    cal_files, ev_files = _files(cfg)
    pre = build_preprocess(cfg.preprocess, tuple(prepared.input_shape[2:4]))
    sample = tuple(prepared.input_shape[1:])
    cal_src = BatchSource(cal_files, prepared.input_name, sample, pre, cfg.calibration.batch_size,
                          progress="calibration data" if progress else None,
                          other_inputs=prepared.other_inputs)
    cal_batches = list(cal_src)
    lap("calibration_data", t0)

    # 3. placement + calibration
    t0 = time.perf_counter()
    placement = plan_placement(prepared.model, exclude_nodes=cfg.quantization.exclude_nodes,
                               exclude_op_types=cfg.quantization.exclude_op_types,
                               keep_decode_fp32=cfg.quantization.keep_decode_fp32,
                               plugin_tail=prepared.tail_nodes)
    lsq = None
    if cfg.quantization.lsq.enabled:
        lsq = {"steps": cfg.quantization.lsq.steps, "lr": cfg.quantization.lsq.lr,
               "block_size": cfg.quantization.lsq.block_size}
    cal, engine, stats = _calibrate(cfg, prepared, placement, cal_batches, lsq, progress)
    lap("calibrate", t0)
    placement.quantize = [n for n in placement.quantize if n in set(cal.quantized_ops)]

    # 4. export (in memory) + verify
    t0 = time.perf_counter()
    qmodel = ex.export_qdq(prepared.model, cal, placement)
    qmodel_all_int8 = qmodel
    lap("export", t0)
    t0 = time.perf_counter()
    ref_runner = SplitRunner(prepared.reference or source, device=cfg.device)
    task, layout = infer_task([dims_of(o) for o in prepared.model.graph.output],
                              cfg.evaluation.task, prepared.input_shape[2:4])
    ev_batches = []
    if ev_files:
        ev_src = BatchSource(ev_files, prepared.input_name, sample, pre, cfg.evaluation.batch_size,
                             progress="held-out data" if progress else None,
                             other_inputs=prepared.other_inputs)
        ev_batches = list(ev_src)
    else:
        log.warning("no held-out images left for verification; verifying on the calibration "
                    "images (set evaluation.data or add images)")
        ev_batches = cal_batches
    labels = None
    if cfg.evaluation.labels and task == "classification":
        from xtrt.analysis.classify import load_labels
        labels = load_labels(str(cfg.path(cfg.evaluation.labels)),
                             [p for b in ev_batches for p in b.paths])
    ed = prepare_eval(ref_runner, ev_batches, task, layout, labels=labels,
                      annotations=str(cfg.path(cfg.evaluation.annotations))
                      if cfg.evaluation.annotations else None,
                      conf=cfg.evaluation.conf_threshold, iou=cfg.evaluation.iou_threshold)

    def eval_model(model) -> "object":
        runner = SplitRunner(model, device=cfg.device)
        return evaluate(runner.run, ed, rtol=cfg.evaluation.rtol, atol=cfg.evaluation.atol)

    search = None
    if stats:
        t1 = time.perf_counter()
        search = _method_search(cal, stats, prepared, placement, eval_model, ex)
        lap("method_search", t1)
        qmodel = ex.export_qdq(prepared.model, cal, placement)
        qmodel_all_int8 = qmodel
    ev_int8 = eval_model(qmodel)
    n_out = len(prepared.output_names)
    ev_sim = evaluate(lambda feeds: ppq_backend.simulate(cal, feeds, device=cfg.device)[:n_out],
                      ed, rtol=cfg.evaluation.rtol, atol=cfg.evaluation.atol)
    lap("verify", t0)

    # 5. analysis + fallback
    t0 = time.perf_counter()
    ana_batches = [b.feeds for b in cal_batches[:cfg.analysis.analysis_steps]]
    graphwise = ppq_backend.graphwise_error(cal, ana_batches, device=cfg.device,
                                            steps=cfg.analysis.analysis_steps,
                                            progress=progress) \
        if cfg.analysis.graphwise else {}
    target = cfg.analysis.target
    layerwise = {}
    if cfg.analysis.layerwise or target is not None:
        if cfg.analysis.layerwise_engine == "ort":
            from xtrt.quant.sensitivity import layerwise_sensitivity
            lw_batches = [b.feeds for b in cal_batches[:cfg.analysis.layerwise_steps]]
            layerwise = layerwise_sensitivity(prepared.body, cal, placement, lw_batches,
                                              device=cfg.device,
                                              progress="layer-wise analysis" if progress else None)
        else:
            layerwise = ppq_backend.layerwise_error(cal, ana_batches, device=cfg.device,
                                                    steps=cfg.analysis.layerwise_steps,
                                                    progress=progress)
    per_layer = {}
    if cfg.analysis.graphwise:
        from xtrt.quant.sensitivity import layer_statistics
        per_layer = layer_statistics(prepared.body, cal, placement, ana_batches, device=cfg.device)
    lap("analysis", t0)
    op_types = {n.name: n.op_type for n in prepared.model.graph.node}
    names = list(dict.fromkeys([*graphwise, *per_layer, *layerwise]))

    def worst_first(r):
        v = r["layerwise_noise_ratio"] if r["layerwise_noise_ratio"] is not None else r["noise_ratio"]
        return -(v if v is not None else r.get("noise_ratio_ort") or 0.0)

    layers = sorted(({"name": k, "op_type": op_types.get(k, "?"), "noise_ratio": graphwise.get(k),
                      "layerwise_noise_ratio": layerwise.get(k), **per_layer.get(k, {})}
                     for k in names), key=worst_first)
    fallback = None
    chosen_eval = ev_int8
    if target is not None:
        t0 = time.perf_counter()
        metric = target.metric
        goal = target.goal()
        first = (metric_value(ev_int8, metric), metric_value(ev_int8, "sqnr"))
        ranking = [k for k, _ in sorted(layerwise.items(), key=lambda kv: -kv[1])] or \
            [r["name"] for r in layers]
        cache: dict[tuple, object] = {}

        def trial(fp32_layers: list[str]):
            keep = [n for n in placement.quantize if n not in set(fp32_layers)]
            from xtrt.quant.placement import Placement
            p = Placement(quantize=keep, keep_float=dict(placement.keep_float),
                          decode_tail=placement.decode_tail)
            for n in fp32_layers:
                p.keep_float[n] = "automatic fallback (most sensitive layer)"
            ev_t = eval_model(ex.export_qdq(prepared.model, cal, p))
            cache[tuple(fp32_layers)] = (p, ev_t)
            # the output SQNR breaks ties of a coarse task metric (greedy strategy)
            return metric_value(ev_t, metric), metric_value(ev_t, "sqnr")

        fallback = run_fallback(ranking, trial, target=goal,
                                max_trials=cfg.analysis.max_trials,
                                per_trial=cfg.analysis.layers_per_trial, first_value=first,
                                sensitivity=layerwise,
                                strategy=cfg.analysis.fallback_strategy)
        chosen_layers = tuple(fallback.fp32_layers)
        if chosen_layers:
            placement, chosen_eval = cache[chosen_layers]
            qmodel = ex.export_qdq(prepared.model, cal, placement)
        lap("fallback", t0)

    # 6. write outputs (staged)
    stage = check_output_dir(out_dir)
    try:
        files = write_outputs(stage, out_dir, cfg, prepared, cal, placement, qmodel, chosen_eval,
                               ev_sim, layers, fallback, timings, ed,
                               qmodel_all_int8, engine, search)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    res = files
    res.seconds = time.perf_counter() - t_start
    return res


def _calibrate(cfg, prepared, placement, cal_batches, lsq, progress):
    """Calibrate; returns (result, engine description, statistics per method for 'auto')."""
    from xtrt.backend import ppq as ppq_backend
    from xtrt.quant.observe import FAST_METHODS, collect_histograms, collect_ranges

    method = cfg.calibration.method
    use_ort = cfg.calibration.engine == "ort" and lsq is None
    if not use_ort:
        cal = ppq_backend.calibrate(prepared.model, [b.feeds for b in cal_batches],
                                    device=cfg.device,
                                    method="percentile" if method == "auto" else method,
                                    fp32_ops=list(placement.keep_float), lsq=lsq, progress=progress)
        return cal, "ppq", {}
    # statistics on ONNX Runtime, scales by PPQ's own rules (xtrt.quant.observe)
    tensors = _placed_activations(prepared.model, placement)
    feeds = [b.feeds for b in cal_batches]
    bar = "calibration statistics" if progress else None
    methods = FAST_METHODS if method == "auto" else (method,)
    stats: dict[str, dict] = {}
    for m in methods:
        if m in ("percentile", "minmax"):
            stats[m] = {"ranges": collect_ranges(prepared.body, tensors, feeds, method=m,
                                                 device=cfg.device, progress=bar)}
        else:
            stats[m] = {"hists": collect_histograms(prepared.body, tensors, feeds, method=m,
                                                    device=cfg.device, progress=bar)}
    first = methods[0]
    cal = ppq_backend.calibrate(prepared.model, feeds, device=cfg.device, method=first,
                                fp32_ops=list(placement.keep_float), lsq=None, progress=progress,
                                act_ranges=stats[first].get("ranges"),
                                act_hists=stats[first].get("hists"))
    return cal, "onnxruntime statistics + PPQ scale rule", (stats if method == "auto" else {})


def _method_search(cal, stats, prepared, placement, eval_model, ex) -> dict:
    """Export and evaluate every calibration method; leave ``cal`` on the best one."""
    from xtrt.backend import ppq as ppq_backend
    from xtrt.quant.verify import metric_value

    rows = []
    for m, st in stats.items():
        ppq_backend.rescale(cal, m, ranges=st.get("ranges"), hists=st.get("hists"))
        ev = eval_model(ex.export_qdq(prepared.model, cal, placement))
        task = ev.task.get("top1_agreement", ev.task.get("map50_95"))
        rows.append({"method": m, "task_metric": task, "sqnr_db": metric_value(ev, "sqnr")})
        log.info("calibration method %s: task metric %s, worst output SQNR %.2f dB", m, task,
                 rows[-1]["sqnr_db"] if rows[-1]["sqnr_db"] is not None else float("nan"))

    def key(r):
        t = r["task_metric"] if r["task_metric"] is not None else float("-inf")
        q = r["sqnr_db"] if r["sqnr_db"] is not None else float("-inf")
        return (t, q)

    best = max(rows, key=key)["method"]
    ppq_backend.rescale(cal, best, ranges=stats[best].get("ranges"), hists=stats[best].get("hists"))
    return {"candidates": rows, "chosen": best,
            "judged_on": "held-out images (task metric, then worst output SQNR)"}


def _placed_activations(model, placement) -> list[str]:
    """The activation tensors feeding the placed nodes (what calibration must measure)."""
    inits = {i.name for i in model.graph.initializer}
    placed = set(placement.quantize)
    return list(dict.fromkeys(t for n in model.graph.node if n.name in placed
                              for t in n.input if t and t not in inits))
