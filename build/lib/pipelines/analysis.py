"""What a study's runs say: every cell with its interval, every planned comparison decided or not,
the scaling-law fit with its status, and the caveats — one :class:`Analysis` for the report, the
plots, the demo and ``results.parquet``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipelines import stats
from pipelines.decide import CORRECT, METRIC, Verdict, decide, plan_comparisons, summary
from pipelines.extrapolate import Extrapolation, extrapolate
from pipelines.scaling import Fit, fit

RETRIEVAL = "retrieval_r1_mean"


@dataclass(frozen=True)
class CellStat:
    variant: str
    tier: str
    budget: int
    tier_samples: int
    accuracy: stats.Interval
    retrieval: stats.Interval | None

    @property
    def repetition(self) -> float:
        return self.budget / max(self.tier_samples, 1)


@dataclass
class VariantFit:
    variant: str
    fit: Fit | None
    extrapolation: Extrapolation | None
    status: str

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "fit": self.fit.to_dict() if self.fit else None,
            "extrapolation": self.extrapolation.to_dict() if self.extrapolation else None,
        }


@dataclass
class Analysis:
    cells: list[CellStat]
    verdicts: list[Verdict]
    fits: dict[str, VariantFit]
    caveats: list[str] = field(default_factory=list)
    adaptive: bool = False

    def cell(self, variant: str, tier: str, budget: int) -> CellStat | None:
        return next((c for c in self.cells if (c.variant, c.tier, c.budget) == (variant, tier, budget)), None)

    def summary(self) -> str:
        return summary(self.verdicts) + (", error rate spent over the adaptive looks" if self.adaptive else "")

    def to_dict(self) -> dict:
        return {
            "summary": self.summary(),
            "verdicts": [
                {
                    "comparison": v.comparison.key,
                    "status": v.status,
                    "winner": v.winner,
                    "gap": v.gap.mean,
                    "half_width": v.gap.half(),
                    "p": v.gap.p,
                    "p_adjusted": v.p_adj,
                    "seeds": v.gap.seeds,
                    "seeds_needed": v.seeds_needed,
                    "text": v.text,
                }
                for v in self.verdicts
            ],
            "fits": {k: f.to_dict() for k, f in self.fits.items()},
            "caveats": self.caveats,
        }


def _cells(rows: list[dict]) -> list[CellStat]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get(METRIC) is not None and np.isfinite(r[METRIC]):
            groups.setdefault((r["variant"], r["tier"], int(r["samples_seen"])), []).append(r)
    out = []
    for (variant, tier, budget), g in groups.items():
        g = sorted(g, key=lambda r: r["seed"])
        acc = stats.cell_interval([r[METRIC] for r in g], [r.get(CORRECT) for r in g])
        ret = [r[RETRIEVAL] for r in g if r.get(RETRIEVAL) is not None]
        out.append(
            CellStat(
                variant,
                tier,
                budget,
                int(g[0]["tier_samples"]),
                acc,
                stats.seed_interval(ret, bounds=(0.0, 1.0)) if ret else None,
            )
        )
    return sorted(out, key=lambda c: (c.variant, c.tier_samples, c.tier, c.budget))


def _fit(variant: str, rows: list[dict], extend: float) -> VariantFit:
    runs = [
        {"tier": r["tier"], "pool": r["tier_samples"], "samples_seen": r["samples_seen"], "error": 1 - r[METRIC]}
        for r in rows
        if r["variant"] == variant and r.get(METRIC) is not None and np.isfinite(r[METRIC])
    ]
    if len({(r["tier"], r["samples_seen"]) for r in runs}) < 2:
        return VariantFit(variant, None, None, "no fit: fewer than two cells have results")
    f = fit(runs)
    if not f.trusted:
        return VariantFit(variant, f, None, f.status() + "; no prediction is made beyond the runs")
    x = extrapolate(runs, f, extend * max(r["samples_seen"] for r in runs))
    return VariantFit(variant, f, x, f"{f.status()}; {x.sentence()}")


def analyse(
    rows: list[dict],
    variants: list[str] | None = None,
    tiers: list[str] | None = None,
    budgets: list[int] | None = None,
    extend: float = 10.0,
    looks: dict[str, list[int]] | None = None,
    alpha: float = 0.05,
) -> Analysis:
    """Cells, verdicts and fits of ``rows``; the planned grid defaults to what the rows hold."""
    variants = variants or sorted({r["variant"] for r in rows})
    sizes = {r["tier"]: r["tier_samples"] for r in rows}
    tiers = tiers or sorted(sizes, key=sizes.get)
    budgets = budgets or sorted({int(r["samples_seen"]) for r in rows})
    cells = _cells(rows)
    verdicts = decide(rows, plan_comparisons(variants, tiers, budgets), alpha, looks=looks)
    fits = {v: _fit(v, rows, extend) for v in variants}
    return Analysis(
        cells, verdicts, fits, _caveats(cells, verdicts, variants, tiers, budgets, looks), looks is not None
    )


def _caveats(cells, verdicts, variants, tiers, budgets, looks) -> list[str]:
    out = []
    missing = len(variants) * len(tiers) * len(budgets) - len(cells)
    if missing > 0:
        out.append(f"{missing} planned cells have no finished run yet")
    one = [c for c in cells if c.accuracy.method != "seeds"]
    if one:
        out.append(
            f"{len(one)} of {len(cells)} cells have one seed: their intervals cover the eval samples only, "
            "not training noise, and no comparison involving them can be decided"
        )
    eval_noise = [v.gap.se_eval for v in verdicts if v.gap.se_eval > 0]
    if eval_noise:
        n = max(v.gap.samples for v in verdicts)
        out.append(
            f"accuracy is measured on {n:,} eval samples: the eval set alone puts about "
            f"±{100 * 1.96 * float(np.median(eval_noise)):.1f} points on a gap, which more seeds do not remove"
        )
    if looks is not None:
        out.append("seeds were added adaptively (--until-decided): each p-value is spent over its looks")
    undecided = [v for v in verdicts if not v.decided]
    if undecided and all(not math.isfinite(v.gap.p) for v in undecided):
        out.append("with one seed per cell nothing can be ranked: run seeds = [0, 1, 2] or --until-decided")
    return out


def cell_columns(rows: list[dict]) -> list[dict]:
    """``rows`` with their cell's mean and 95% interval (and how it was made) in every row."""
    by_cell = {(c.variant, c.tier, c.budget): c for c in _cells(rows)}
    out = []
    for r in rows:
        c = by_cell.get((r["variant"], r["tier"], int(r["samples_seen"])))
        iv = c.accuracy if c else None
        out.append(
            {
                **r,
                "cell_mean": iv.mean if iv else None,
                "cell_lo": iv.lo if iv and math.isfinite(iv.lo) else None,
                "cell_hi": iv.hi if iv and math.isfinite(iv.hi) else None,
                "cell_seeds": iv.n if iv and iv.method == "seeds" else 1 if iv else None,
                "cell_interval": iv.label() if iv else None,
            }
        )
    return out


def format_cell(c: CellStat) -> str:
    """ "0.234 [0.201, 0.267] (3 seeds; 4.0x)"; a star marks an eval-sample interval (one seed)."""
    iv = c.accuracy
    if iv.method == "seeds":
        return f"{iv.mean:.3f} [{iv.lo:.3f}, {iv.hi:.3f}] ({iv.n} seeds; {c.repetition:.1f}x)"
    if iv.method == "eval samples":
        return f"{iv.mean:.3f} [{iv.lo:.3f}, {iv.hi:.3f}]* (1 seed; {c.repetition:.1f}x)"
    return f"{iv.mean:.3f} (1 run; {c.repetition:.1f}x)"


def describe(a: Analysis, chance: float | None = None) -> list[str]:
    """The analysis as lines for a terminal: cells with intervals, verdicts, fits, caveats."""
    head = "zero-shot top-1, mean [95% interval] per cell (seeds; repetition)"
    lines = [head + (f"; chance {chance:.3f}" if chance else "") + "; * one seed: eval-sample interval only"]
    for variant in dict.fromkeys(c.variant for c in a.cells):
        cells = [c for c in a.cells if c.variant == variant]
        budgets = sorted({c.budget for c in cells})
        width = max(len(format_cell(c)) for c in cells) + 2
        lines.append(f"  [{variant}]".ljust(22) + "".join(f"{b:,} samples seen".ljust(width) for b in budgets))
        for tier in dict.fromkeys(c.tier for c in cells):
            row = [a.cell(variant, tier, b) for b in budgets]
            lines.append(f"  {tier:<20}" + "".join((format_cell(c) if c else "-").ljust(width) for c in row))
    lines.append(f"verdicts: {a.summary()}")
    lines += [f"  {v.status}: {v.text}" for v in a.verdicts]
    lines += [f"fit [{k}]: {f.status}" for k, f in a.fits.items()]
    caveats = [c for f in a.fits.values() if f.extrapolation for c in f.extrapolation.caveats] + a.caveats
    lines += [f"caveat: {c}" for c in caveats]
    return lines
