"""Checkpoints that survive ``kill -9``: one directory per step, written aside and renamed into place.

``RUN/checkpoints/step_000120/`` holds the model as an open_clip local dir (so any checkpoint loads
like a finished model) plus ``state.pt``: the step, the optimiser state, every rank's RNG states,
every loader slot's next ``(group, offset)`` and the run's counters. All of it is tensors and plain
Python values, so it loads with ``torch.load(weights_only=True)``. A directory is renamed into place
only when complete, so the newest ``step_*`` is always whole; the learning rate is a function of
the step, so there is no scheduler state to lose.
"""

from __future__ import annotations

import os
import random
import shutil
import uuid
from pathlib import Path

import torch

from curate.core import rundir
from curate.core.rundir import all_steps, step_dir
from train import models

STATE_FILE = rundir.STATE


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(root: str | os.PathLike, step: int, model, model_cfg: dict, state: dict, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` and keep only the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        models.save_dir(model, model_cfg, tmp, extra={"step": step})
        torch.save(state, tmp / STATE_FILE)
        if final.exists():  # a step redone after a resume from an older checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for _, old in all_steps(root)[: -max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: str | os.PathLike, device="cpu") -> tuple[dict, dict]:
    """``(model state dict, train state)`` of a checkpoint directory, loaded with ``weights_only=True``."""
    path = Path(path)
    weights = torch.load(path / models.WEIGHTS_FILE, map_location=device, weights_only=True)
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    return weights, state


def remove_stale(root: str | os.PathLike) -> None:
    """Drop half-written checkpoint directories left by a killed run."""
    root = Path(root)
    if root.is_dir():
        for p in root.glob(".step_*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
