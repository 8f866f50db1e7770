"""Verdicts, not orderings: which of two cells is better, or a plain "cannot rank" with the reason.

The planned comparisons of a study are, at every budget, every pair of tiers of each variant, and,
when the study has several variants (recipes), every pair of variants on each tier. Each is a paired
comparison (:func:`pipelines.stats.paired_gap`) on the seeds both cells have; all of them form one
family whose error rate Holm's procedure holds at ``alpha`` (5%): the chance that *any* "beats" in
the report is wrong is at most 5%. An adaptive study (``--until-decided``) looks at a comparison
again after adding seeds; its p-value is then spent over the looks (:func:`pipelines.stats.sequential_p`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipelines import stats

METRIC = "zeroshot_top1"
CORRECT = "zeroshot_correct"  # per-sample correctness behind METRIC, one bool per eval sample
ALPHA = 0.05

Cell = tuple[str, str, int]  # (variant, tier, samples_seen)


@dataclass(frozen=True)
class Comparison:
    """Cell ``a`` against cell ``b``: two tiers of one variant (``kind = "tiers"``, ``within`` the
    variant) or two variants on one tier (``kind = "variants"``, ``within`` the tier), at one budget."""

    kind: str
    within: str
    budget: int
    a: str
    b: str

    def cells(self) -> tuple[Cell, Cell]:
        if self.kind == "tiers":
            return (self.within, self.a, self.budget), (self.within, self.b, self.budget)
        return (self.a, self.within, self.budget), (self.b, self.within, self.budget)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.within}:{self.budget}:{self.a}:{self.b}"


def plan_comparisons(variants: Iterable[str], tiers: Iterable[str], budgets: Iterable[int]) -> list[Comparison]:
    variants, tiers, budgets = list(variants), list(tiers), sorted(budgets)
    out = []
    for budget in budgets:
        for v in variants:
            out += [Comparison("tiers", v, budget, a, b) for i, a in enumerate(tiers) for b in tiers[i + 1 :]]
        if len(variants) > 1:
            for t in tiers:
                out += [
                    Comparison("variants", t, budget, a, b) for i, a in enumerate(variants) for b in variants[i + 1 :]
                ]
    return out


@dataclass(frozen=True)
class Verdict:
    comparison: Comparison
    gap: stats.Gap  # a - b
    p_adj: float  # after Holm (and, in an adaptive study, spent over looks); nan: untestable
    decided: bool
    seeds_needed: int | None  # per cell, to decide with 80% chance; None: seeds would not, or unknown
    family: int  # comparisons in the family
    text: str

    @property
    def winner(self) -> str | None:
        if not self.decided:
            return None
        return self.comparison.a if self.gap.mean > 0 else self.comparison.b

    @property
    def status(self) -> str:
        return "decided" if self.decided else "cannot rank"


def cells_of(rows: list[dict], metric: str = METRIC) -> dict[Cell, dict[int, tuple[float, object]]]:
    """(variant, tier, budget) -> {seed: (value, per-sample correctness or None)}, finished runs only."""
    out: dict[Cell, dict[int, tuple[float, object]]] = {}
    for r in rows:
        v = r.get(metric)
        if v is None or not np.isfinite(v):
            continue
        cell = (r["variant"], r["tier"], int(r["samples_seen"]))
        out.setdefault(cell, {})[int(r["seed"])] = (float(v), r.get(CORRECT) if metric == METRIC else None)
    return out


def _gap(runs_a: dict, runs_b: dict, upto: int | None = None) -> stats.Gap:
    seeds = sorted(set(runs_a) & set(runs_b))[:upto]
    ca = [runs_a[s][1] for s in seeds]
    cb = [runs_b[s][1] for s in seeds]
    usable = all(c is not None for c in ca + cb) and len({len(c) for c in ca + cb}) == 1 if seeds else False
    return stats.paired_gap(
        [runs_a[s][0] for s in seeds],
        [runs_b[s][0] for s in seeds],
        ca if usable else None,
        cb if usable else None,
    )


def decide(
    rows: list[dict],
    comparisons: list[Comparison],
    alpha: float = ALPHA,
    looks: dict[str, list[int]] | None = None,
    metric: str = METRIC,
) -> list[Verdict]:
    """A verdict for every planned comparison, the family held at ``alpha`` by Holm.

    ``looks``: for an adaptive study, comparison key -> the shared-seed counts at which it was looked
    at before; the p-value is then :func:`stats.sequential_p` over those looks and the current one."""
    cells = cells_of(rows, metric)
    gaps, ps = [], []
    for c in comparisons:
        ra, rb = (cells.get(x, {}) for x in c.cells())
        gap = _gap(ra, rb)
        p = gap.p
        if looks is not None:
            seen = [n for n in looks.get(c.key, []) if n < gap.seeds] + [gap.seeds]
            p = stats.sequential_p([_gap(ra, rb, n).p for n in seen])
        gaps.append(gap)
        ps.append(p)
    adj = stats.holm(ps)
    decided = [bool(np.isfinite(p) and p < alpha) for p in adj]
    open_ = max(1, sum(1 for d, p in zip(decided, adj, strict=True) if not d and np.isfinite(p)))
    # What an undecided comparison will face: Holm's worst case among the still-open ones, and in an
    # adaptive study the share of the error rate its next look gets.
    alpha_next = alpha / open_ * (stats.spend(2) if looks is not None else 1.0)
    out = []
    for c, gap, p_adj, ok, p in zip(comparisons, gaps, adj, decided, ps, strict=True):
        need = None if ok else _need(gap, alpha_next)
        # The smallest gap more seeds could ever decide, at the level the open comparisons leave each one.
        floor = (stats.critical(alpha_next, stats.POWER) * gap.se_eval, open_)
        text = _text(c, gap, p, p_adj, ok, need, len(comparisons), floor)
        out.append(Verdict(c, gap, float(p_adj), ok, need, len(comparisons), text))
    return out


def _need(gap: stats.Gap, alpha: float) -> int | None:
    if gap.seeds == 1:  # the training noise is unknown: a second seed measures it, unless the eval
        # set's own noise already hides the gap, which no number of seeds changes
        hidden = gap.se_eval > 0 and abs(gap.mean) / gap.se_eval < stats.critical(alpha, stats.POWER)
        return None if hidden else 2
    return stats.seeds_needed(gap.mean, gap.sd_seed, gap.se_eval, alpha)


def _pts(x: float) -> str:
    return f"{100 * abs(x):.1f}"


def _where(c: Comparison) -> str:
    on = f" on {c.within}" if c.kind == "variants" else ("" if c.within == "default" else f" ({c.within})")
    return f"at {c.budget:,} samples seen{on}"


def _text(
    c: Comparison, gap: stats.Gap, p: float, p_adj: float, decided: bool, need, family: int, floor: tuple[float, int]
) -> str:
    if gap.seeds == 0:
        return f"cannot compare {c.a} and {c.b} {_where(c)}: no seed has finished in both"
    lead, trail = (c.a, c.b) if gap.mean >= 0 else (c.b, c.a)
    size, half = _pts(gap.mean), _pts(gap.half())
    if decided:
        fam = f"; {p_adj:.2g} after Holm over {family} comparisons" if family > 1 else ""
        return f"{lead} beats {trail} by {size} ± {half} points {_where(c)} (p = {p:.2g}{fam}; {gap.seeds} seeds)"
    head = f"cannot rank {c.a} and {c.b} {_where(c)}"
    if gap.seeds < 2:
        noise = f"; the eval samples alone put ±{half} on it" if np.isfinite(gap.half()) else ""
        unknown = "one seed each, so the training noise is unknown"
        return f"{head}: {unknown} (gap {size} points, {lead} ahead{noise}); add seeds"
    if abs(gap.mean) > gap.half():
        why = (
            f"the gap ({size} ± {half}, {lead} ahead) clears its own noise but not the correction for "
            f"{family} comparisons (p = {p:.2g}, {p_adj:.2g} after correction)"
        )
    else:
        why = f"the gap ({size}, {lead} ahead) is below the noise (±{half})"
    if need is None:
        if gap.se_eval > 0 and gap.mean != 0:
            eval_noise = _pts(1.96 * gap.se_eval)
            smallest, among = floor
            across = f" across {among} open comparisons" if among > 1 else ""
            return (
                f"{head}: {why}; more seeds would not decide it: with the eval set's own noise (±{eval_noise}), "
                f"which seeds do not average away, no gap under about {_pts(smallest)} points can be "
                f"decided{across}; a larger eval set would"
            )
        return f"{head}: {why}"
    if need > stats.MAX_SEEDS:
        bound = _pts(max(abs(gap.mean - gap.half()), abs(gap.mean + gap.half())))
        more = f"more than {stats.MAX_SEEDS:,} seeds would be needed (a real gap is likely under {bound} points)"
        return f"{head}: {why}; {more}"
    return f"{head}: {why}; about {need} seeds would decide it"


def summary(verdicts: list[Verdict]) -> str:
    decided = sum(v.decided for v in verdicts)
    return f"{decided} of {len(verdicts)} comparisons decided (family-wise error <= {ALPHA:.0%}, Holm)"


def order_undecided(verdicts: list[Verdict]) -> list[Verdict]:
    """Undecided comparisons that more seeds can decide, most informative first: the fewest seeds to
    decide (the closest to a verdict) first, ties by the larger gap relative to its noise."""
    open_ = [v for v in verdicts if not v.decided and v.seeds_needed is not None and v.gap.seeds >= 1]
    return sorted(open_, key=lambda v: (v.seeds_needed, -abs(v.gap.mean) / (v.gap.se or math.inf)))
