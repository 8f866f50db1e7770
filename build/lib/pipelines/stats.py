"""The statistics of a study: intervals, paired gaps, multiple comparisons, and how many seeds would decide.

A study's accuracy has two sources of noise, and a verdict must be larger than both:

- **training** (seeds): the same tier, budget and recipe trained with another seed scores differently;
  it shrinks as seeds are added;
- **evaluation** (samples): the eval set is a finite sample of the task; every run is scored on the same
  samples, so this part is shared by all seeds and adding seeds never removes it.

A cell (tier x budget x variant) gets a 95% t interval over its seeds; with one seed, a bootstrap
interval over the eval samples of its one run — which says nothing about training noise, and is
labelled so. Two cells are compared *paired*: on the seeds both have, seed by seed, and on the same
eval samples. With per-sample correctness for both, the gap's variance is the two-way (seeds x
samples) random-effects estimate: the seed part ``MS_seeds / (S I)`` plus the part of the samples
that seeds do not average away, ``max(0, MS_samples - MS_residual) / (S I)`` (Evan Miller, "Adding
error bars to evals", 2024, clustered and paired; Bouthillier et al., "Accounting for variance in
machine learning benchmarks", MLSys 2021), tested with the seeds' ``S - 1`` degrees of freedom.
Without per-sample data it is the plain paired t test over seeds. Several
comparisons are held to one family-wise error rate with Holm's step-down; an adaptive study that
looks again after adding seeds spends its error rate over the looks (:func:`sequential_p`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
POWER = 0.8  # what "would decide it" means: an 80% chance that a study with that many seeds decides
MAX_SEEDS = 1000  # beyond this, "about N seeds" is no advice


@dataclass(frozen=True)
class Interval:
    """A mean and its 95% interval; ``method`` says what the interval covers."""

    mean: float
    lo: float
    hi: float
    n: int  # seeds for "seeds", eval samples for "eval samples"
    method: str  # "seeds" (t over seeds) | "eval samples" (bootstrap, one seed) | "none"

    @property
    def half(self) -> float:
        return (self.hi - self.lo) / 2

    def label(self) -> str:
        if self.method == "seeds":
            return f"95% t interval over {self.n} seeds"
        if self.method == "eval samples":
            return f"95% bootstrap over {self.n} eval samples (one seed: training noise not included)"
        return "no interval (one run, no per-sample results)"


def seed_interval(values, level: float = LEVEL, bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval:
    """Mean and t interval over seeds, clipped to ``bounds`` (an accuracy stays in [0, 1]); fewer than
    two seeds give no interval."""
    v = np.asarray(values, np.float64)
    m = float(v.mean()) if len(v) else math.nan
    if len(v) < 2:
        return Interval(m, math.nan, math.nan, len(v), "none")
    h = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return Interval(m, max(m - h, bounds[0]), min(m + h, bounds[1]), len(v), "seeds")


def bootstrap_interval(correct, level: float = LEVEL, reps: int = 4000, seed: int = 0) -> Interval:
    """Percentile bootstrap of the accuracy over the eval samples of one run.

    Resampling n outcomes with replacement makes the resampled accuracy Binomial(n, p)/n exactly, so
    the bootstrap is drawn that way rather than by materialising n x reps indices."""
    c = np.asarray(correct, bool)
    n, p = len(c), float(c.mean())
    draws = np.random.default_rng(seed).binomial(n, p, reps) / n
    lo, hi = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(p, float(lo), float(hi), n, "eval samples")


def cell_interval(values, corrects=None, level: float = LEVEL) -> Interval:
    """The interval of one cell: over seeds when it has two or more, else over its run's eval samples."""
    if len(values) >= 2 or not corrects or corrects[0] is None:
        return seed_interval(values, level, (0.0, 1.0))
    return bootstrap_interval(corrects[0], level)


@dataclass(frozen=True)
class Gap:
    """A paired gap ``a - b`` (accuracy units) and the parts of its uncertainty."""

    mean: float
    se: float  # total standard error of the mean gap (nan: unknown)
    df: float
    p: float  # two-sided; nan when the training noise is unknown (one seed)
    seeds: int
    sd_seed: float  # SD of one seed's gap (training noise + per-run sample noise); nan with one seed
    se_eval: float  # the shared eval-sample part of ``se``, which seeds do not reduce (0 without data)
    samples: int  # eval samples behind it (0 without per-sample data)

    def half(self, level: float = LEVEL) -> float:
        """Half-width of the gap's interval at ``level``."""
        if not np.isfinite(self.se):
            return math.nan
        df = self.df if np.isfinite(self.df) and self.df > 0 else math.inf
        return float(stats.t.ppf(0.5 + level / 2, df) * self.se) if df < math.inf else _z(level) * self.se


def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2))


def paired_gap(a, b, correct_a=None, correct_b=None) -> Gap:
    """The gap between two cells on the seeds they share (``a[k]`` and ``b[k]`` from the same seed).

    ``correct_a`` / ``correct_b``: per seed, the boolean correctness of that run on each eval sample
    (same samples, same order), or None. With one seed, only the eval-sample noise is known: the gap
    gets that interval but no p-value, since the training noise it would be tested against is unknown."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    s = len(a)
    have_samples = (
        correct_a is not None and correct_b is not None and all(x is not None for x in (*correct_a, *correct_b))
    )
    if not have_samples:
        return _seed_gap(a - b)
    g = np.asarray(correct_a, np.int8) - np.asarray(correct_b, np.int8)  # S x I in {-1, 0, 1}
    i = g.shape[1]
    if s == 1:
        se = float(g[0].std(ddof=1) / math.sqrt(i))
        return Gap(float(g.mean()), se, math.inf, math.nan, 1, math.nan, se, i)
    grand = g.mean()
    rows, cols = g.mean(1), g.mean(0)
    ss_seed = i * ((rows - grand) ** 2).sum()
    ss_item = s * ((cols - grand) ** 2).sum()
    ss_res = max(((g - grand) ** 2).sum() - ss_seed - ss_item, 0.0)
    ms_seed, ms_item = ss_seed / (s - 1), ss_item / (i - 1)
    ms_res = ss_res / ((s - 1) * (i - 1))
    v_seed = ms_seed / (s * i)
    v_item = max(ms_item - ms_res, 0.0) / (s * i)
    # Never below the eval samples' own noise (S x I paired differences taken as independent): two
    # seeds whose gaps happen to be equal (accuracies are discrete) would otherwise give v = 0, p = 0.
    v = max(v_seed + v_item, float(g.var(ddof=1)) / (s * i))
    if v <= 0:  # every seed and sample agrees exactly: no noise to speak of
        return Gap(float(grand), 0.0, s - 1.0, 0.0 if grand else 1.0, s, 0.0, 0.0, i)
    # Degrees of freedom: the seeds' S - 1, the scarcer part. Satterthwaite's would credit the eval
    # part's many samples too; simulated nulls (tests/test_decide.py) then reject slightly above 5%.
    df = s - 1.0
    se = math.sqrt(v)
    p = float(2 * stats.t.sf(abs(grand) / se, df))
    return Gap(float(grand), se, df, p, s, math.sqrt(ms_seed / i), math.sqrt(v_item), i)


def _seed_gap(d: np.ndarray) -> Gap:
    s = len(d)
    if s < 2:
        return Gap(float(d.mean()) if s else math.nan, math.nan, math.nan, math.nan, s, math.nan, 0.0, 0)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(s)
    p = float(2 * stats.t.sf(abs(d.mean()) / se, s - 1)) if se > 0 else (0.0 if d.mean() else 1.0)
    return Gap(float(d.mean()), se, s - 1.0, p, s, sd, 0.0, 0)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values: reject where adjusted p < alpha, family-wise error <= alpha.

    NaN p-values (untestable comparisons) stay NaN and count in the family, which only makes the
    others more conservative."""
    p = np.asarray(pvalues, np.float64)
    m = len(p)
    out = np.full(m, math.nan)
    finite = np.where(np.isfinite(p))[0]
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out


def spend(look: int) -> float:
    """Share of the error rate spent at the ``look``-th look (1-based) of an adaptive study: 1/2, 1/4, ...

    Bonferroni over looks: however many looks there are, the shares sum to at most 1, so stopping
    when a comparison first looks decided cannot raise its error rate above the nominal level."""
    return 0.5**look


def sequential_p(pvalues_by_look) -> float:
    """A valid p-value for a comparison looked at several times: ``min_k p_k / spend(k)``, capped at 1."""
    ps = [p / spend(k) for k, p in enumerate(pvalues_by_look, 1) if np.isfinite(p)]
    return min(1.0, min(ps)) if ps else math.nan


def power(gap: float, sd_seed: float, se_eval: float, seeds: int, alpha: float) -> float:
    """Chance that a paired comparison with ``seeds`` seeds decides at level ``alpha``, if the true gap
    is ``gap``: noncentral t with ``seeds - 1`` degrees of freedom (conservative, as the test is)."""
    if seeds < 2:
        return 0.0
    se = math.sqrt(sd_seed**2 / seeds + se_eval**2)
    if se == 0:
        return 1.0
    df = seeds - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    ncp = abs(gap) / se
    return float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))


def critical(alpha: float, target: float = POWER) -> float:
    """Gap / standard error that a test at ``alpha`` decides with chance ``target`` (normal approximation)."""
    return float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(target))


def seeds_needed(gap: float, sd_seed: float, se_eval: float, alpha: float, target: float = POWER) -> int | None:
    """Seeds per cell that would decide a gap this size with chance ``target``, taking the observed gap
    and noise as true (the usual planning assumption); None when no number of seeds would, because
    the eval set's own noise already hides the gap — then a larger eval set is what helps."""
    if not (np.isfinite(gap) and np.isfinite(sd_seed)) or gap == 0:
        return None
    if se_eval > 0 and abs(gap) / se_eval < critical(alpha, target):
        return None
    lo, hi = 2, 2
    while power(gap, sd_seed, se_eval, hi, alpha) < target:
        if hi >= MAX_SEEDS:
            return MAX_SEEDS + 1
        lo, hi = hi, min(hi * 2, MAX_SEEDS)
    while lo < hi:  # power grows with seeds: bisect to the first count that reaches the target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if power(gap, sd_seed, se_eval, mid, alpha) < target else (lo, mid)
    return hi
