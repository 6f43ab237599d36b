"""A quantization job: the config with every path resolved and the output folder claimed, built
once before any work, so that bad paths and unwritable folders fail in the first second.

Paths given on the command line (``--plugin``) resolve against the working directory; paths in
the config file resolve against the config file's folder.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from xtrt.config import Config
from xtrt.errors import ConfigError, DataError

__all__ = ["QuantJob", "split_selection_test"]

log = logging.getLogger(__name__)


@dataclass
class QuantJob:
    """Everything a run needs to know before it starts (see the module docstring)."""

    cfg: Config
    model_path: Path
    output_dir: Path
    stage: Path                       # private staging folder inside output_dir
    plugins: list[Path] = field(default_factory=list)
    calibration_files: list[Path] = field(default_factory=list)
    heldout_files: list[Path] = field(default_factory=list)
    #: the part of the held-out files that choices (auto's method, the fallback) are made on;
    #: empty: choices are made on ``heldout_files`` too
    selection_files: list[Path] = field(default_factory=list)
    #: the held-out images are the calibration images (none left over)
    judged_on_calibration: bool = False
    progress: bool = True
    _claim: object = None

    @property
    def device(self) -> str:
        return self.cfg.device

    @classmethod
    def from_config(cls, cfg: Config, *, cli_plugins: Sequence[str] = (), progress: bool = True,
                    cwd: Path | None = None) -> "QuantJob":
        cwd = Path.cwd() if cwd is None else Path(cwd)
        model_path = cfg.path(cfg.model)
        if not model_path.is_file():
            from xtrt.model.load import load_model
            load_model(model_path)          # raises the ModelError with its wording
        plugins = [cfg.path(p) for p in cfg.plugins]
        plugins += [(Path(p) if Path(p).is_absolute() else cwd / p) for p in cli_plugins]
        for p in plugins:
            if not p.is_file():
                raise ConfigError(f"plugin file {str(p)!r} does not exist",
                                  "give --plugin a path relative to the working directory, or "
                                  "plugins: in the config relative to the config file")
        cal, held = _split_files(cfg)
        selection: list[Path] = []
        if held and _makes_choices(cfg):
            selection, held = split_selection_test(held, cfg.evaluation.selection_share)
        out_dir = _output_dir(cfg)
        from xtrt.quant.outputs import claim_output_dir

        claim = claim_output_dir(out_dir)
        return cls(cfg=cfg, model_path=model_path, output_dir=out_dir, stage=claim.stage,
                   plugins=plugins, calibration_files=cal, heldout_files=held or list(cal),
                   selection_files=selection, judged_on_calibration=not held,
                   progress=progress, _claim=claim)

    def bar(self, text: str) -> str | None:
        """A progress-bar title, or None when progress is off."""
        return text if self.progress else None

    def release(self) -> None:
        """Give the output folder back (after commit or failure): staging removed, lock freed."""
        if self._claim is not None:
            self._claim.release()
            self._claim = None


def _makes_choices(cfg: Config) -> bool:
    """Whether the run chooses anything on held-out images (auto's method, a fallback)."""
    from xtrt.quant.calibrate import plan_method

    return plan_method(cfg).searches or cfg.analysis.target is not None


def split_selection_test(files: Sequence[Path], share: float) -> tuple[list[Path], list[Path]]:
    """``(selection, test)``: every k-th file for choices, the rest for the report's figures.

    Interleaved rather than cut in two, so frames of one video or photos of one folder land on
    both sides.  ``share`` 0 (or fewer than 2 files): no selection part.
    """
    files = list(files)
    n_sel = int(round(len(files) * share))
    if share <= 0 or len(files) < 2 or n_sel < 1:
        return [], files
    n_sel = min(n_sel, len(files) - 1)
    picks = {int(i * len(files) / n_sel) for i in range(n_sel)}
    return ([f for i, f in enumerate(files) if i in picks],
            [f for i, f in enumerate(files) if i not in picks])


def _output_dir(cfg: Config) -> Path:
    if cfg.output_dir and Path(cfg.output_dir).is_absolute():
        out = Path(cfg.output_dir)
    elif cfg.output_dir:
        out = cfg.path(cfg.output_dir)
    else:
        out = Path(cfg.base_dir) / "xtrt_out" / Path(cfg.model).stem
    return out.resolve()


def _split_files(cfg: Config) -> tuple[list[Path], list[Path]]:
    """Calibration files and held-out files (disjoint, deterministic; ``seed`` drives ``shuffle``)."""
    from xtrt.data.images import list_files
    from xtrt.data.source import split_files

    if not cfg.calibration.data:
        raise DataError("config has no calibration.data", "set calibration.data: path/to/images")
    files = list_files(str(cfg.path(cfg.calibration.data)))
    n_cal = cfg.calibration.steps * cfg.calibration.batch_size
    cal, rest = split_files(files, n_cal, None, seed=cfg.calibration.seed or 0,
                            shuffle=cfg.calibration.shuffle)
    if cfg.evaluation.data:
        ev_all = list_files(str(cfg.path(cfg.evaluation.data)))
        cal_set = set(cal)
        held = [f for f in ev_all if f not in cal_set][:cfg.evaluation.count]
    else:
        held = rest[:cfg.evaluation.count]
    if not held:
        log.warning("no held-out images left for verification; judging on the %d calibration "
                    "images (set evaluation.data or add images)", len(cal))
    elif len(held) < cfg.evaluation.min_held_out:
        log.warning("only %d held-out images (evaluation.min_held_out: %d): figures judged on so "
                    "few are noisy (add images or set evaluation.data)", len(held),
                    cfg.evaluation.min_held_out)
    return cal, held
