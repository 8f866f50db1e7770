"""A planned study run, typed: everything that decides one run's result, and the hash it is kept under.

``pipelines.study`` plans runs (tiers x budgets x seeds x variants) as :class:`PlannedRun` values;
the study adapters in :mod:`train.api` train and evaluate one. The trainer's part is a complete
:class:`~train.config.TrainConfig` (model, budget and seed already in it), so nothing is merged or
guessed at run time, and a bad ``[train]`` table fails when the study is planned, before any run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from train.config import TrainConfig


@dataclass(frozen=True)
class EvalSets:
    """The study's evaluation data: a zero-shot classification set, its class names, a retrieval set."""

    zeroshot: str | None = None
    classes: str | None = None
    retrieval: str | None = None

    def any(self) -> bool:
        return bool(self.zeroshot or self.retrieval)


@dataclass(frozen=True)
class PlannedRun:
    variant: str
    tier: str
    tier_samples: int
    tiers_dir: str
    train: TrainConfig  # complete: train.samples_seen is the budget, train.seed the seed
    eval: EvalSets = EvalSets()
    study: str = ""  # the study's name: tracking groups its runs by it; not part of the run's identity

    @property
    def samples_seen(self) -> int:
        return self.train.samples_seen

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def model(self) -> str:
        return self.train.model

    @property
    def repetition(self) -> float:
        return self.samples_seen / max(self.tier_samples, 1)

    @property
    def cell(self) -> tuple[str, str, int]:
        return (self.variant, self.tier, self.samples_seen)

    def key(self) -> dict:
        """What names the run: its data, its trainer config (by hash) and its evaluation."""
        return {
            "variant": self.variant,
            "tier": self.tier,
            "tier_samples": self.tier_samples,
            "tiers_dir": self.tiers_dir,
            "train": self.train.hash(),
            "eval": dataclasses.asdict(self.eval),
        }

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        """The whole run, trainer config spelled out: the ``config`` column of ``results.parquet``."""
        return {**self.key(), "train": self.train.to_dict(), "config_hash": self.config_hash}
