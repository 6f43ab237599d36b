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

__all__ = ["QuantJob", "MIN_HELD_OUT"]

log = logging.getLogger(__name__)

#: below this many held-out images the report says what the figures were judged on
MIN_HELD_OUT = 30


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
        out_dir = _output_dir(cfg)
        from xtrt.quant.outputs import claim_output_dir

        claim = claim_output_dir(out_dir)
        return cls(cfg=cfg, model_path=model_path, output_dir=out_dir, stage=claim.stage,
                   plugins=plugins, calibration_files=cal, heldout_files=held or list(cal),
                   judged_on_calibration=not held, progress=progress, _claim=claim)

    def bar(self, text: str) -> str | None:
        """A progress-bar title, or None when progress is off."""
        return text if self.progress else None

    def release(self) -> None:
        """Give the output folder back (after commit or failure): staging removed, lock freed."""
        if self._claim is not None:
            self._claim.release()
            self._claim = None


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
    cal, rest = split_files(files, n_cal, None, seed=cfg.calibration.seed,
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
    elif len(held) < MIN_HELD_OUT:
        log.warning("only %d held-out images: figures judged on so few are noisy (add images or "
                    "set evaluation.data)", len(held))
    return cal, held
