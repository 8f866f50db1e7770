"""Studies with known truth, without training: to calibrate the decision rule and to plan seeds.

Each simulated run answers every sample of a simulated eval set right or wrong, as a real run does,
so the simulation carries both sources of noise the decision rule must respect:

- the eval set is a fresh draw of ``samples`` items from a task whose item difficulties are normal
  (a logistic item-response model: P(right) = sigmoid(ability - difficulty)); the true accuracy of a
  cell is its expected accuracy over the whole task, not over the drawn items;
- a run's ability is its cell's plus training noise, ``seed_sd`` in logits, of which a share
  ``shared`` is common to runs with the same seed (same initialisation), the rest its own.

The rows look like ``results.parquet`` rows (``variant``, ``tier``, ``samples_seen``, ``seed``,
``zeroshot_top1``, ``zeroshot_correct``), so :func:`pipelines.decide.decide` reads them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq

from pipelines.decide import CORRECT, METRIC

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(64)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class SimulatedTask:
    """The eval task: item difficulties ~ N(0, ``difficulty_sd``); maps accuracies to abilities."""

    difficulty_sd: float = 1.5
    _cache: dict = field(default_factory=dict)

    def accuracy(self, ability: float) -> float:
        """Expected accuracy over the whole task (Gauss-Hermite over the difficulty distribution)."""
        return float((_WEIGHTS * _sigmoid(ability - self.difficulty_sd * _NODES)).sum())

    def ability(self, accuracy: float) -> float:
        if accuracy not in self._cache:
            self._cache[accuracy] = brentq(lambda a: self.accuracy(a) - accuracy, -30.0, 30.0)
        return self._cache[accuracy]


@dataclass
class Simulator:
    """Cells' true accuracies -> simulated runs. ``truth``: (variant, tier, budget) -> accuracy."""

    truth: dict[tuple[str, str, int], float]
    samples: int = 500
    seed_sd: float = 0.25
    shared: float = 0.0
    task: SimulatedTask = field(default_factory=SimulatedTask)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def __post_init__(self):
        self.difficulty = self.rng.normal(0.0, self.task.difficulty_sd, self.samples)  # this study's eval set
        self._seed_effect: dict[int, float] = {}

    def run(self, cell: tuple[str, str, int], seed: int) -> dict:
        if seed not in self._seed_effect:
            self._seed_effect[seed] = float(self.rng.normal())
        noise = np.sqrt(self.shared) * self._seed_effect[seed] + np.sqrt(1 - self.shared) * self.rng.normal()
        ability = self.task.ability(self.truth[cell]) + self.seed_sd * noise
        correct = self.rng.random(self.samples) < _sigmoid(ability - self.difficulty)
        variant, tier, budget = cell
        return {
            "variant": variant,
            "tier": tier,
            "samples_seen": budget,
            "seed": seed,
            METRIC: float(correct.mean()),
            CORRECT: correct,
        }

    def runs(self, todo: list[tuple[tuple[str, str, int], int]]) -> list[dict]:
        """A round of runs, in order (the ``run_cells`` of :func:`pipelines.adaptive.until_decided`)."""
        return [self.run(cell, seed) for cell, seed in todo]

    def study(self, seeds: int) -> list[dict]:
        return [self.run(cell, s) for cell in self.truth for s in range(seeds)]


def gap_noise_sd(
    accuracy: float, samples: int = 500, seed_sd: float = 0.25, shared: float = 0.0, draws: int = 4000
) -> float:
    """The SD of one seed's measured gap between two equal cells (training noise of both runs plus their
    own sample noise, eval set redrawn each time): the "noise SD" a paired comparison sees."""
    rng = np.random.default_rng(12345)
    gaps = np.empty(draws)
    for k in range(draws // 100):
        sim = Simulator({("v", "a", 1): accuracy, ("v", "b", 1): accuracy}, samples, seed_sd, shared, rng=rng)
        rows = sim.study(100)
        a = np.array([r[METRIC] for r in rows if r["tier"] == "a"])
        b = np.array([r[METRIC] for r in rows if r["tier"] == "b"])
        gaps[k * 100 : (k + 1) * 100] = a - b
    return float(gaps.std(ddof=1))
