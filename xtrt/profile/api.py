"""``profile_model``: profile a model's whole pipeline and write the run folder.

Run folder (staged and swapped in whole by :class:`xtrt.outdir.OutputDir`)::

    OUT/profile.json        versioned results (SCHEMA_VERSION)
    OUT/sweep.png           throughput and latency vs batch size
    OUT/stages.png          time per stage, per batch size
    OUT/trace.json          Chrome/Perfetto trace of the headline batch
    OUT/tb/RUN/bsB.*.pt.trace.json   tensorboard --logdir OUT/tb (PyTorch Profiler plugin)
    OUT/ort/RUN.json        ONNX Runtime's own per-node profile (--backend ort)
    OUT/README.md           how to open each
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from xtrt.errors import DataError, XtrtError
from xtrt.outdir import OutputDir
from xtrt.profile.sweep import ModelProfile, profile_batches
from xtrt.profile.verdict import Verdict

__all__ = ["ProfileOptions", "ProfileResult", "profile_model", "SCHEMA_VERSION"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

#: what a run folder holds; a folder an older xtrt (without a manifest) wrote may hold these
PROFILE_OUTPUTS = ("profile.json", "sweep.png", "stages.png", "trace.json", "tb", "ort",
                   "README.md")


@dataclass
class ProfileOptions:
    """What to profile and how (the CLI's arguments, typed)."""

    model: Path
    images: str | None = None            # folder/glob of photos; None: synthetic tensors
    config: Path | None = None
    overrides: list[str] = field(default_factory=list)
    device: str | None = None            # None: the config's device, else cpu
    backend: str = "ort"                 # ort | ppq
    batches: list[int] | None = None     # None: the model's fixed batch, or [1, 8]
    steps: int = 20                      # active (measured, traced) steps per batch size
    warmup: int = 3
    compare: Path | None = None
    out: Path | None = None              # None: xtrt_out/<model stem>/profile
    imgsz: list[int] | None = None
    preprocess_plugin: str | None = None
    plugins: list[str] = field(default_factory=list)   # op-handler files (xtrt.ops), e.g. my_ops.py
    int8: bool = False                   # ppq: the INT8-simulating executor
    threads: int | None = None
    workers: int | None = None           # decode/preprocess threads for the N-worker row (None: cores)
    max_images: int = 64
    trace: bool = True                   # False: the same loop without the profiler (baseline)
    write: bool = True                   # False: measure only, write nothing


@dataclass
class ProfileResult:
    out_dir: Path | None
    models: list[ModelProfile]
    verdict: Verdict                     # headline: the model at its largest batch size
    inputs: dict
    notes: list[str]
    seconds: float

    def to_json(self, opts: ProfileOptions) -> dict:
        from xtrt import __version__

        cmd = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()}
        return {"schema_version": SCHEMA_VERSION, "tool": "xtrt.profile", "xtrt_version": __version__,
                "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "options": cmd, "device": self.verdict.device, "inputs": self.inputs,
                "verdict": self.verdict.as_dict(), "notes": self.notes,
                "workers": self.models[0].as_dict()["workers"],
                "models": [m.as_dict() for m in self.models], "seconds": self.seconds,
                "files": {"tensorboard_logdir": "tb", "trace": "trace.json", "sweep_png": "sweep.png",
                          "stages_png": "stages.png", "readme": "README.md"}}


def _load_cfg(opts: ProfileOptions):
    if opts.config is None:
        if opts.overrides:
            raise XtrtError("--set needs --config", "give --config my_model.yaml")
        return None
    from xtrt.config import load_config

    return load_config(opts.config, [f"model={opts.model}", *opts.overrides])


def _feed_for(model, opts: ProfileOptions, cfg, files, notes: list[str]):
    from xtrt.profile.inputs import choose_preprocess, plan_input
    from xtrt.profile.stages import ImageFeed, SyntheticFeed

    pre_size = None
    if cfg is not None:
        pre_size = cfg.preprocess.size or cfg.preprocess.crop
    plan = plan_input(model, name=cfg.input.name if cfg else None,
                      shape=cfg.input.shape if cfg else None, imgsz=opts.imgsz,
                      preprocess_size=pre_size)
    if files is None:
        return plan, SyntheticFeed(plan.name, plan.sample_shape, plan.dtype), None
    fn, desc, note, pre = choose_preprocess(cfg.preprocess if cfg else None, opts.preprocess_plugin,
                                            plan, cfg.base_dir if cfg else None)
    if note and note not in notes:
        notes.append(note)
    feed = ImageFeed(files, fn, plan.name, plan.sample_shape, plan.dtype)
    feed.pre_config = pre            # for the GPU decode row (xtrt.runtime.feed_gpu)
    return plan, feed, desc


def _profile_one(path: Path, label: str, opts: ProfileOptions, cfg, files, device: str,
                 batches: list[int], work: Path, notes: list[str], inputs: dict) -> ModelProfile:
    from xtrt.model.load import load_model
    from xtrt.profile.backends import DeviceMemory, make_backend
    from xtrt.profile.inputs import check_batches, extra_feeds_for
    from xtrt.profile.stages import make_postprocess

    model = load_model(path)
    plan, feed, pre_desc = _feed_for(model, opts, cfg, files, notes)
    check_batches(plan, batches, str(path))
    inputs.setdefault("shape", [None, *plan.sample_shape])
    inputs.setdefault("preprocess", pre_desc)
    if plan.others:
        notes.append(f"{path.name}: inputs {', '.join(o[0] for o in plan.others)} fed with ones")
    ort_dir = work / "ort"
    ort_dir.mkdir(parents=True, exist_ok=True)
    calib = None
    if opts.int8 and opts.backend == "ppq":
        calib = [{plan.name: feed.batch(4) if feed.synthetic else feed.preprocess(feed.decode(4))}
                 for _ in range(4)]
        notes.append(f"{path.name}: INT8-simulating PPQ executor calibrated on 16 "
                     f"{'synthetic samples' if feed.synthetic else 'photos (cycled)'}")
    memory = DeviceMemory(device)
    backend = make_backend(opts.backend, model, device, threads=opts.threads, int8=opts.int8,
                           calib_batches=calib, input_shape=[max(batches), *plan.sample_shape],
                           profile_prefix=str(ort_dir / label) if opts.trace else None)
    if backend.tail is not None:
        post_kind = f"plugin tail ({', '.join(sorted({n.op_type for n in backend.plugin_nodes}))})"
        post = None
    else:
        post = make_postprocess(backend.output_shapes)
        post_kind = post.kind
    results = profile_batches(
        backend, feed, post, batches, run_name=label, tb_dir=work / "tb", steps=opts.steps,
        warmup=opts.warmup, trace=opts.trace, device=device,
        extra_feeds=(lambda b: extra_feeds_for(plan, b)) if plan.others else None,
        memory=memory, progress=log.info)
    for r in results:  # paths relative to the run folder
        if r.trace:
            r.trace = os.path.relpath(r.trace, work)
        if r.ort_profile:
            final = ort_dir / f"{label}.json"
            if Path(r.ort_profile).exists():
                os.replace(r.ort_profile, final)
            r.ort_profile = os.path.relpath(final, work)
    mp = ModelProfile(label, str(path), opts.backend, device, post_kind,
                      [n.name for n in getattr(backend, "plugin_nodes", [])], results)
    _workers_rows(mp, backend, feed, post, opts, device, plan, notes)
    return mp


def _workers_rows(mp: ModelProfile, backend, feed, post, opts: ProfileOptions, device: str,
                  plan, notes: list[str] | None = None) -> None:
    """The feed table at the headline batch (photos only): "as you run it today (1 thread)",
    "N workers", on CUDA "N workers + pinned/async" and "GPU decode" where it can run; a row that
    cannot run is named in a note with the reason."""
    from xtrt.data.source import default_workers
    from xtrt.profile.inputs import extra_feeds_for
    from xtrt.profile.verdict import ROW_NAMES, feed_line, workers_line
    from xtrt.profile.workers import measure_row, row_from_result
    from xtrt.runtime.feed_gpu import device_preprocess, gpu_decode_unavailable

    notes = [] if notes is None else notes
    n = default_workers() if opts.workers is None else int(opts.workers)
    if feed.synthetic or n <= 1:
        return
    head = max(mp.batches, key=lambda r: r.batch)
    rows = [row_from_result(head, 1, device)]
    kinds = ["workers"]
    pre = getattr(feed, "pre_config", None)
    if device == "cuda":
        kinds.append("pinned")
        why = "no preprocessing config" if pre is None else gpu_decode_unavailable(device, pre)
        if why is None:
            kinds.append("gpu_decode")
        else:
            notes.append(f"{mp.run_name}: no '{ROW_NAMES['gpu_decode'].format(n=n)}' row: {why}")
    else:
        notes.append(f"{mp.run_name}: the pinned/async and GPU decode rows need --device cuda "
                     "(on the CPU nothing is copied to a device)")
    extra = (lambda b: extra_feeds_for(plan, b)) if plan.others else None
    for kind in kinds:
        dpre = device_preprocess(pre, plan.hw) if kind == "gpu_decode" else None
        try:
            rows.append(measure_row(kind, backend, feed, post, head.batch, workers=n,
                                    steps=opts.steps, warmup=opts.warmup, device=device,
                                    extra_feeds=extra, device_pre=dpre, progress=log.info))
        except XtrtError:
            raise
        except Exception as exc:   # a CUDA-only row (pinned/async, GPU decode) that cannot run
            if kind == "workers":  # here is named in a note; the rest of the profile stands
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            notes.append(f"{mp.run_name}: the '{ROW_NAMES[kind].format(n=n)}' row failed: "
                         f"{type(exc).__name__}: {first}")
            log.debug("feed row %s failed", kind, exc_info=True)
    mp.workers = rows
    mp.workers_line = workers_line(rows[0], rows[1])
    mp.feed_line = feed_line(rows)


def _run_names(model: Path, compare: Path | None) -> tuple[str, str | None]:
    a = model.stem
    if compare is None:
        return a, None
    b = compare.stem
    return a, (b if b != a else f"{b}-compare")


def _out_dir(opts: ProfileOptions) -> Path:
    return Path(opts.out) if opts.out else Path("xtrt_out") / Path(opts.model).stem / "profile"


def profile_model(opts: ProfileOptions) -> ProfileResult:
    """Profile ``opts.model`` (and ``opts.compare``) over ``opts.batches``; write the run folder."""
    t0 = time.perf_counter()
    if opts.steps < 1 or opts.warmup < 0:
        raise XtrtError(f"--steps must be >= 1 (got {opts.steps})", "use e.g. --steps 20")
    if not opts.write:
        with tempfile.TemporaryDirectory(prefix="xtrt-profile-") as tmp:
            return _profile(opts, Path(tmp), None, t0)
    # the run folder is checked, locked and staged before any work (xtrt.outdir)
    with OutputDir(_out_dir(opts), "xtrt.profile", adopt=PROFILE_OUTPUTS, option="--out") as od:
        result = _profile(opts, od.staging, od.path, t0)
        od.commit()
    return result


def _profile(opts: ProfileOptions, work: Path, out: Path | None, t0: float) -> ProfileResult:
    from xtrt.data.images import IMAGE_SUFFIXES, list_files
    from xtrt.model.load import load_model
    from xtrt.profile.stages import check_images

    load_model(opts.model)  # a missing/corrupt model fails before anything else
    if opts.compare is not None:
        load_model(opts.compare)
    cfg = _load_cfg(opts)
    device = opts.device or (cfg.device if cfg else "cpu")
    plugin_files = [str(cfg.path(p)) for p in cfg.plugins] if cfg else []
    if plugin_files or opts.plugins:
        from xtrt.ops import REGISTRY

        for spec in [*plugin_files, *opts.plugins]:
            REGISTRY.load_plugin(spec)
    from xtrt.profile.backends import check_device

    check_device(device, opts.backend)
    notes: list[str] = []
    files = None
    inputs: dict = {"kind": "synthetic"}
    if opts.images:
        try:
            listed = list_files(opts.images, IMAGE_SUFFIXES)
        except DataError as exc:
            raise DataError(exc.message.replace("data path", "--images path"),
                            "give --images a folder of jpg/png photos, or leave it out to use "
                            "synthetic tensors") from exc
        files, skipped = check_images(listed, opts.max_images)
        inputs = {"kind": "images", "source": str(opts.images), "files": len(files),
                  "skipped": [f"{p.name}: {why}" for p, why in skipped]}
        if skipped:
            log.warning("skipped %d unreadable file(s), e.g. %s", len(skipped), skipped[0][0].name)
    else:
        notes.append("no --images: synthetic random tensors of the model's input shape; "
                     "decode and preprocess are not measured")
    name_a, name_b = _run_names(Path(opts.model), opts.compare)
    batches = opts.batches
    if batches is None:
        from xtrt.profile.inputs import plan_input

        m = load_model(opts.model)
        bd = plan_input(m, imgsz=opts.imgsz, name=cfg.input.name if cfg else None,
                        shape=cfg.input.shape if cfg else None,
                        preprocess_size=(cfg.preprocess.size or cfg.preprocess.crop)
                        if cfg else None).batch_dim
        batches = [bd] if isinstance(bd, int) and bd > 0 else [1, 8]
    models = [_profile_one(Path(opts.model), name_a, opts, cfg, files, device, batches, work,
                           notes, inputs)]
    if opts.compare is not None:
        models.append(_profile_one(Path(opts.compare), name_b, opts, cfg, files, device,
                                   batches, work, notes, inputs))
    head = max(models[0].batches, key=lambda r: r.batch)
    result = ProfileResult(out, models, head.verdict, inputs, notes, time.perf_counter() - t0)
    if out is not None:
        _write_outputs(result, opts, work, head)
    return result


def _write_outputs(result: ProfileResult, opts: ProfileOptions, work: Path, head) -> None:
    from xtrt.profile.plots import plot_stages, plot_sweep
    from xtrt.profile.readme import run_readme

    title = " vs ".join(m.run_name for m in result.models)
    title += f" ({opts.backend}, {result.verdict.device}, {result.inputs.get('kind')} inputs)"
    plot_sweep(result.models, work / "sweep.png", title)
    plot_stages(result.models, work / "stages.png", title)
    if head.trace:
        shutil.copyfile(work / head.trace, work / "trace.json")
    data = result.to_json(opts)
    (work / "profile.json").write_text(json.dumps(data, indent=2))
    (work / "README.md").write_text(run_readme(result, head))
