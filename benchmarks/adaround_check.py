"""What PPQ 0.6.6's AdaroundPass does to a model, and whether xtrt's export follows it.

    python benchmarks/adaround_check.py [--model tiny|mtcnn_onet|effnet|...] \\
        [--steps 100,500] [--lr 1e-3] [--scale-tune ppq,off] [--device cpu|cuda]

For each (steps, lr, weight-scale tuning) it calibrates the model (minmax, xtrt's ORT
statistics), runs AdaRound through ``xtrt.backend.ppq.optimize`` and prints one line:

* how many per-channel weight scales the pass moved away from TensorRT's ``max|w| / 127`` and by
  how much (PPQ's ``AdaroundPass.finetune`` first calls ``tune_block_weight_scale``: 900 Adam
  steps at the pass's own ``lr`` on every weight scale, minimising the weight MSE of the whole
  tensor; its result is never withdrawn, even when the block's output error went up);
* the exported Q/DQ model against PPQ's simulation (max |difference| / max |simulation|, ORT
  with graph optimizations off, first calibration batch);
* the SQNR of PPQ's simulation against FP32 on the other calibration batches, before and
  after the pass (real models: also the exported model on the bench's selection part).

``--scale-tune off`` replaces ``AdaroundPass.tune_block_weight_scale`` by a no-op for the run
(the weight scales stay ``max|w| / 127``, as xtrt sets them).  Since branch ada xtrt's own pass
(``xtrt.backend.ppq._optim._hard_checked_adaround``) never tunes the scales and withdraws blocks
whose hard rounding is worse, so ``ppq`` and ``off`` run the same pass; the line also gives
the batches trained on and the blocks withdrawn.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(np.mean((ref - out) ** 2))
    return float(10 * np.log10(float(np.mean(ref ** 2)) / max(noise, 1e-30)))


@contextlib.contextmanager
def _scale_tune(mode: str):
    """``ppq``: PPQ as it is; ``off``: AdaroundPass.tune_block_weight_scale does nothing."""
    if mode == "ppq":
        yield
        return
    from xtrt.backend import ppq as B

    B._ppq()
    from ppq.quantization.optim import legacy

    saved = legacy.AdaroundPass.tune_block_weight_scale
    legacy.AdaroundPass.tune_block_weight_scale = lambda self, block, *a, **k: None
    try:
        yield
    finally:
        legacy.AdaroundPass.tune_block_weight_scale = saved


def _tiny():
    """(prepared, placement, batches, None) of the tests' tiny classifier on random inputs."""
    from tests.conftest import make_classifier
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.placement import plan_placement

    tmp = Path(tempfile.mkdtemp(prefix="adaround-check-"))
    prep = prepare_model(load_model(make_classifier(tmp / "tiny.onnx", hw=(16, 16))),
                         [4, 3, 16, 16], None)
    rng = np.random.default_rng(0)
    batches = [{prep.input_name: rng.normal(0, 1, (4, 3, 16, 16)).astype(np.float32)}
               for _ in range(4)]
    return prep, plan_placement(prep.model), batches, None


def _real(key: str, work: Path, local: dict | None = None):
    import _bench

    bench = _bench.load_bench(key, work, local)
    cfg = bench.config(["calibration.method=minmax"])
    prep, placement = _bench.prepare(bench, cfg)
    src = _bench.batches(bench, cfg, prep, bench.cal, cfg.calibration.batch_size)
    return prep, placement, [b.feeds for b in src], (bench, cfg)


def _calibrated(prep, placement, batches, device, method):
    from xtrt.backend import ppq as B
    from xtrt.quant.calibrate import placed_activations
    from xtrt.quant.observe import collect_histograms, collect_ranges

    t = placed_activations(prep.model, placement)
    if method in ("kl", "mse"):
        st = {"act_hists": collect_histograms(prep.body, t, batches, method=method, device=device)}
    else:
        st = {"act_ranges": collect_ranges(prep.body, t, batches, method=method, device=device)}
    return B.calibrate(prep.model, batches, method=method, device=device, progress=False,
                       fp32_ops=list(placement.keep_float), **st)


def _sim_sqnr(cal, prep, batches, device: str = "cpu") -> float:
    from xtrt.backend import ppq as B
    from xtrt.runtime.session import make_session

    ref = make_session(prep.model, "cpu")
    vals = []
    for f in batches:
        vals.append(_sqnr(ref.run(None, f)[0], B.simulate(cal, f, device=device)[0]))
    return float(np.mean(vals))


def check(prep, placement, batches, *, steps: int, lr: float, mode: str, device: str,
          train_batches: int, block_size: int, method: str = "minmax") -> dict:
    """One AdaRound run; returns the figures of the module docstring."""
    from xtrt.backend import ppq as B
    from xtrt.quant.export import export_qdq
    from xtrt.runtime.session import make_session

    cal = _calibrated(prep, placement, batches, device, method)
    held = batches[train_batches:] or batches[-1:]
    before_scales = {k: v[0].copy() for k, v in cal.weight_scales.items()}
    before_w = {k: v.copy() for k, v in cal.weights.items()}
    sq0 = _sim_sqnr(cal, prep, held, device)
    import random

    import torch

    random.seed(0)          # PPQ picks training batches with the global random module
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with _scale_tune(mode):
        rec = B.optimize(cal, batches, device=device, progress=False,
                         adaround={"steps": steps, "lr": lr, "batches": train_batches,
                                   "block_size": block_size})["adaround"]
    secs = time.perf_counter() - t0
    moved, worst = 0, 0.0
    for k, s0 in before_scales.items():
        s1 = cal.weight_scales[k][0]
        rel = np.abs(s1 - s0) / np.maximum(s0, 1e-12)
        moved += int((rel > 1e-3).sum())
        worst = max(worst, float(rel.max()))
    channels = sum(v.size for v in before_scales.values())
    changed_w = sum(int((np.abs(cal.weights[k] - w) > 0).sum()) for k, w in before_w.items()
                    if k in cal.weights)
    q = export_qdq(prep.model, cal, placement)
    f = batches[0]
    out = make_session(q, "cpu", optimization="disable").run(None, f)[0]
    sim = B.simulate(cal, f, device=device)[0]
    return {"method": method, "steps": steps, "lr": lr, "scale_tune": mode, "seconds": round(secs, 1),
            "scales_moved": f"{moved}/{channels}", "worst_scale_change": round(worst, 3),
            "weights_changed": changed_w, "trained_on": rec.get("batches"),
            "blocks_withdrawn": f"{rec.get('withdrawn')}/{rec.get('blocks')}",
            "export_vs_sim": float(np.abs(out - sim).max() / max(np.abs(sim).max(), 1e-12)),
            "sim_sqnr_before_db": round(sq0, 2), "sim_sqnr_after_db": round(_sim_sqnr(cal, prep, held, device), 2),
            "cal": cal, "qmodel": q}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="tiny, or a benchmarks/_bench.py key")
    p.add_argument("--work", default="/tmp/xtrt-bench")
    p.add_argument("--steps", default="100,500")
    p.add_argument("--lr", default="1e-3")
    p.add_argument("--scale-tune", default="ppq,off")
    p.add_argument("--batches", type=int, default=2, help="calibration batches AdaRound trains on")
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--method", default="minmax", choices=["minmax", "percentile", "kl", "mse"])
    p.add_argument("--score", help="real models: score the export on these parts of the bench "
                   "too (selection, test or selection,test)")
    p.add_argument("--photos", help="a local photo folder (as techniques.py --photos)")
    p.add_argument("--effnet-model", help="with --photos: EfficientNet-Lite0 ONNX (opset 13)")
    p.add_argument("--yolo-model", help="with --photos: the YOLOv8n e2e ONNX")
    a = p.parse_args(argv)
    local = ({"photos": a.photos, "models": {"effnet": a.effnet_model, "yolo": a.yolo_model}}
             if a.photos else None)
    prep, placement, batches, real = _tiny() if a.model == "tiny" else \
        _real(a.model, Path(a.work), local)
    evs = {}
    if real is not None and a.score:
        import _bench

        bench = real[0]
        evs = {part: _bench.evaluator(bench, bench.sel if part == "selection" else bench.test, part)
               for part in a.score.split(",")}
    for lr in [float(x) for x in a.lr.split(",")]:
        for steps in [int(x) for x in a.steps.split(",")]:
            for mode in a.scale_tune.split(","):
                r = check(prep, placement, batches, steps=steps, lr=lr, mode=mode,
                          device=a.device, train_batches=a.batches, block_size=a.block_size,
                          method=a.method)
                cal, q = r.pop("cal"), r.pop("qmodel")
                for part, ev in evs.items():
                    import _bench

                    r[part] = _bench.fidelity_text(_bench.score(ev, q))
                print(a.model, r, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
