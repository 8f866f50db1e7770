"""Experiment tracking: the numbers of ``metrics.jsonl``, also in TensorBoard and W&B, as open_clip_train logs them.

``TrainConfig.track.log_to`` names the trackers (``tiers train --log-to tensorboard,wandb``):

- ``tensorboard``: event files in ``RUN/tensorboard/``, one scalar ``train/<metric>`` per number of each
  metrics line, at its step. ``tensorboard --logdir STUDY_DIR`` shows every run of a study. A resumed
  run purges the steps after its checkpoint (``purge_step``), as ``metrics.jsonl`` is trimmed.
- ``wandb``: one W&B run per training run (``project``, ``group`` = the study, ``name`` = the cell), in
  ``RUN/wandb/``, **offline** by default: nothing leaves the machine until ``wandb sync``. The run id is
  derived from the run directory and config hash, so a resumed run continues the same W&B run.

A study cell is one tracked run, grouped by its study: the study runner passes each cell's config through
:func:`study_cell` (the study's name, the cell's name) before training it; a ``[train.track]`` table in
the study file that names ``group`` or ``name`` itself wins.

Only rank 0 tracks. The trackers are imported only when asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

from curate.core.errors import InputError

log = logging.getLogger(__name__)

TENSORBOARD = "tensorboard"
WANDB = "wandb"
_NOT_SCALARS = ("step",)


def study_cell(cfg, study: str, cell: str):
    """The study runner's hook: ``cfg`` (a TrainConfig) as one tracked run named ``cell`` in the group
    ``study``, unless the config names them already. Unchanged when it tracks nothing; never changes the
    run's identity (``cfg.hash()`` leaves tracking out)."""
    track = cfg.track
    if not track.log_to:
        return cfg
    track = dataclasses.replace(track, group=track.group or study or "", name=track.name or cell)
    return dataclasses.replace(cfg, track=track)


class Tracker:
    """Sends each metrics line to the trackers ``cfg.track.log_to`` names; a no-op when it names none."""

    def __init__(self, cfg, out: Path, start_step: int = 0, rank: int = 0):
        self.tb = self.wandb = None
        track = cfg.track
        if rank != 0 or not track.log_to:
            return
        name = track.name or Path(out).resolve().name
        if TENSORBOARD in track.log_to:
            self.tb = _tensorboard(Path(out) / TENSORBOARD, start_step)
        if WANDB in track.log_to:
            self.wandb = _wandb(cfg, Path(out), name)

    def log(self, rec: dict) -> None:
        step = int(rec["step"])
        scalars = {k: float(v) for k, v in rec.items() if k not in _NOT_SCALARS and isinstance(v, int | float)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _tensorboard(logdir: Path, start_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError("--log-to tensorboard needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter(str(logdir), purge_step=start_step or None)


def _wandb(cfg, out: Path, name: str):
    try:
        import wandb
    except ImportError:
        raise InputError("--log-to wandb needs the wandb package (pip install wandb)") from None
    track = cfg.track
    run_id = hashlib.sha256(f"{out.resolve()}:{cfg.hash()}".encode()).hexdigest()[:16]
    verbose = logging.getLogger("tiers").isEnabledFor(logging.DEBUG)
    settings = wandb.Settings(silent=not verbose, console="off", disable_git=True, save_code=False)
    return wandb.init(
        project=track.project,
        group=track.group or None,
        name=name,
        id=run_id,
        resume="allow",
        dir=os.fspath(out),
        mode=track.wandb_mode,
        config=cfg.to_dict(),
        settings=settings,
    )
