"""How long calibration and PPQ's graph-wise / layer-wise analysis take, per model, on this machine.

    python benchmarks/analysis_speed.py [--photos DIR] [--steps 2]

Prints a markdown table.  Models: YOLOv8n (nudenet 320n.onnx, 320x320) and EfficientNet-Lite0
(TorchScript export, 224x224), each prepared by xtrt; calibration on 16 photos.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def _time(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", default=None)
    p.add_argument("--steps", type=int, default=2, help="batches for graph/layer-wise analysis")
    a = p.parse_args(argv)

    import xtrt.backend.ppq as ppq_backend
    from xtrt.config import PreprocessConfig
    from xtrt.data.images import list_files
    from xtrt.data.preprocess import build_preprocess
    from xtrt.data.source import BatchSource
    from xtrt.examples.photos import collect_photos
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.observe import collect_ranges
    from xtrt.quant.placement import plan_placement
    from xtrt.quant.sensitivity import layerwise_sensitivity

    tmp = Path(tempfile.mkdtemp(prefix="xtrt-bench-"))
    photos = Path(a.photos) if a.photos else tmp / "photos"
    if not a.photos:
        collect_photos(photos, download=True)
    files = list_files(photos)[:16]
    models = []
    from xtrt.examples.yolo_e2e import locate_nudenet_model
    models.append(("YOLOv8n 320", locate_nudenet_model(), [4, 3, 320, 320],
                   PreprocessConfig(preset="letterbox", size=[320, 320])))
    from xtrt.examples.effnet import effnet_available, export_effnet_lite0
    if effnet_available():
        models.append(("EfficientNet-Lite0 224", export_effnet_lite0(tmp / "effnet.onnx"),
                       [4, 3, 224, 224],
                       PreprocessConfig(preset="resize_crop", short_side=256, crop=[224, 224],
                                        mean=[0.5] * 3, std=[0.5] * 3)))
    rows = []
    for name, path, shape, pre_cfg in models:
        pm = prepare_model(load_model(path), shape)
        pre = build_preprocess(pre_cfg)
        batches = [b.feeds for b in BatchSource(files, pm.input_name, tuple(shape[1:]), pre, shape[0])]
        pl = plan_placement(pm.model, plugin_tail=pm.tail_nodes)
        inits = {i.name for i in pm.model.graph.initializer}
        byn = {n.name: n for n in pm.model.graph.node}
        tensors = list(dict.fromkeys(t for n in pl.quantize for t in byn[n].input
                                     if t and t not in inits))
        _, t_ppq = _time(lambda: ppq_backend.calibrate(pm.model, batches, fp32_ops=list(pl.keep_float)))
        cal, t_ort = _time(lambda: ppq_backend.calibrate(
            pm.model, batches, fp32_ops=list(pl.keep_float),
            act_ranges=collect_ranges(pm.body, tensors, batches)))
        ana = batches[:a.steps]
        _, t_gw = _time(lambda: ppq_backend.graphwise_error(cal, ana, steps=a.steps))
        _, t_lw = _time(lambda: ppq_backend.layerwise_error(cal, ana, steps=a.steps))
        pl.quantize = [n for n in pl.quantize if n in set(cal.quantized_ops)]
        _, t_xlw = _time(lambda: layerwise_sensitivity(pm.model, cal, pl, ana))
        rows.append((name, len(pm.model.graph.node), len(cal.quantized_ops), t_ppq, t_ort, t_gw, t_lw,
                     t_xlw))
    print(f"| model | ops | INT8 layers | calibrate, PPQ engine s | calibrate, ORT statistics s "
          f"| graph-wise ({a.steps} batches of 4) s | layer-wise, PPQ ({a.steps} batches of 4) s "
          f"| layer-wise, xtrt ORT ({a.steps} batches of 4) s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} "
              f"| {r[7]:.1f} |")
    print(f"\n16 calibration photos, batch 4, percentile, CPU ({__import__('os').cpu_count()} cores).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
