"""The layout of a ``tiers train`` run directory: the contract between the trainer, which writes it, and
everything that reads a trained model (evaluation, studies, and annotate scoring with a Data Filtering
Network), so none of them needs the trainer's code to find a model::

    RUN/config.json          the TrainConfig, its hash, the tier and manifest (written first)
    RUN/metrics.jsonl        one line per log step
    RUN/checkpoints/step_N/  resumable checkpoints: an open_clip local dir + state.pt
    RUN/model/               the final model, an open_clip local dir
    RUN/summary.json         written last: marks the run done
    RUN/eval.json            evaluation results by task and dataset name

An open_clip local dir is ``open_clip_config.json`` + ``open_clip_pytorch_model.bin`` (a plain state
dict), so ``open_clip.create_model_and_transforms("local-dir:DIR", weights_only=True)`` loads it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from curate.core.errors import InputError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
EVAL = "eval.json"
MODEL = "model"
CHECKPOINTS = "checkpoints"
OPEN_CLIP_CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_pytorch_model.bin"
STATE = "state.pt"
_STEP = re.compile(r"^step_(\d{6,})$")


def step_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def all_steps(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, dir)`` of every complete checkpoint under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP.match(p.name)
        if m and (p / STATE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest(root: str | os.PathLike) -> Path | None:
    steps = all_steps(root)
    return steps[-1][1] if steps else None


def is_model_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / OPEN_CLIP_CONFIG).is_file() and (p / WEIGHTS).is_file()


def model_dir(path: str | os.PathLike) -> Path:
    """The open_clip local dir behind a run dir (its final model, else its newest checkpoint), a model
    dir, a checkpoint dir, or a file in one. Raises :class:`InputError` when there is none."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if is_model_dir(p):
        return p
    if is_model_dir(p / MODEL):
        return p / MODEL
    ckpt = latest(p / CHECKPOINTS)
    if ckpt is not None:
        return ckpt
    raise InputError("no trained model here (expected a `tiers train` run, its model/ or a checkpoint)", path=str(p))
