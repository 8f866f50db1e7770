"""Study plots (matplotlib PNG), each readable on its own, without the report around it.

Every point is a cell's mean with its 95% interval as the error bar: over seeds, or — for a cell
with one seed, drawn with a hollow marker — over the eval samples of its one run.

- ``accuracy_vs_samples.png``: zero-shot top-1 against samples seen (log x), one line per tier,
  each point labelled with its repetition (samples seen / tier size); a trusted fit drawn solid
  over the data and dashed beyond it, with its 95% band; a refused fit is not drawn;
- ``accuracy_vs_fraction.png``: zero-shot top-1 against the fraction of the pool kept, one line
  per budget: the inverted U of "Scaling (Down) CLIP";
- ``gaps.png``: every planned comparison's gap with its interval, decided ones filled;
- ``retrieval_vs_samples.png``: mean recall@1 of both retrieval directions, as the first plot;
- ``drop_reasons.png``: how the build spent its input rows, by status and reason.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display here or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipelines.analysis import CellStat, VariantFit  # noqa: E402
from pipelines.decide import Verdict  # noqa: E402

BARS = "error bars: 95% interval over seeds; hollow: one seed, interval over eval samples only"


def _save(fig, ax, path: Path, title: str, chance: float | None) -> Path:
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.0%})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _interval(cells: list[CellStat], metric: str):
    ivs = [c.accuracy if metric == "accuracy" else c.retrieval for c in cells]
    m = np.array([iv.mean for iv in ivs])
    lo = np.array([iv.lo if np.isfinite(iv.lo) else iv.mean for iv in ivs])
    hi = np.array([iv.hi if np.isfinite(iv.hi) else iv.mean for iv in ivs])
    return m, np.vstack([m - lo, hi - m]), [iv.method == "seeds" for iv in ivs]


def _dodge(x, k: int, n: int):
    """Shift series k of n sideways on a log axis (3% apart), so error bars at one x stay apart."""
    return np.asarray(x, float) * 1.03 ** (k - (n - 1) / 2)


def _points(ax, x, cells: list[CellStat], metric: str, label: str, colour=None):
    m, err, seeded = _interval(cells, metric)
    line = ax.errorbar(x, m, yerr=err, capsize=3, label=label, color=colour, marker="o", ms=0)
    c = line[0].get_color()
    for xi, mi, s in zip(x, m, seeded, strict=True):
        ax.plot([xi], [mi], "o", color=c, mfc=c if s else "white", ms=5)
    for xi, mi, cell in zip(x, m, cells, strict=True):
        ax.annotate(f"{cell.repetition:.1f}x", (xi, mi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    return c


def _fit_lines(ax, vf: VariantFit | None, tier: str, lo: float, hi: float, colour) -> bool:
    if vf is None or vf.fit is None or not vf.fit.trusted or tier not in vf.fit.tiers:
        return False
    inside = np.geomspace(lo, hi, 50)
    ax.plot(inside, 1 - vf.fit.predict(tier, inside), color=colour, alpha=0.6, lw=1)
    if vf.extrapolation is not None:
        grid, blo, bhi = vf.extrapolation.bands[tier]
        beyond = grid >= hi
        ax.plot(grid[beyond], 1 - vf.fit.predict(tier, grid[beyond]), color=colour, ls="--", lw=1)
        ax.fill_between(grid, blo, bhi, color=colour, alpha=0.12, lw=0)
    return True


def metric_vs_samples(cells, path, metric="accuracy", ylabel="zero-shot top-1", title="", fit=None, chance=None):
    """``cells`` of one variant; ``fit``: its :class:`VariantFit` (drawn only when trusted)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    drawn = False
    tiers = sorted({c.tier for c in cells}, key=lambda t: next(c.tier_samples for c in cells if c.tier == t))
    for k, tier in enumerate(tiers):
        mine = sorted(
            (c for c in cells if c.tier == tier and (metric == "accuracy" or c.retrieval)), key=lambda c: c.budget
        )
        if not mine:
            continue
        x = np.array([c.budget for c in mine], float)
        colour = _points(ax, _dodge(x, k, len(tiers)), mine, metric, f"{tier} ({mine[0].tier_samples:,} samples)")
        if metric == "accuracy":
            drawn |= _fit_lines(ax, fit, tier, x.min(), x.max(), colour)
    ax.set_xscale("log")
    ax.set_xlabel("samples seen (compute)")
    ax.set_ylabel(ylabel)
    note = "\nsolid: fitted law; dashed + band: its extrapolation, 95% bootstrap" if drawn else ""
    if metric == "accuracy" and fit is not None and not drawn:
        note = "\nno fitted law drawn: " + ("the fit refused to extrapolate" if fit.fit else "too few cells")
    return _save(fig, ax, path, f"{title}\n{BARS}{note}", chance)


def accuracy_vs_fraction(cells: list[CellStat], pool: int, path: Path, title: str = "", chance=None) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    budgets = sorted({c.budget for c in cells})
    for k, budget in enumerate(budgets):
        mine = sorted((c for c in cells if c.budget == budget), key=lambda c: c.tier_samples)
        x = _dodge([c.tier_samples / pool for c in mine], k, len(budgets))
        _points(ax, x, mine, "accuracy", f"{budget:,} samples seen")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the downloaded pool in the tier")
    ax.set_ylabel("zero-shot top-1")
    head = f"Accuracy vs filter strength, per compute budget {title}".strip()
    return _save(fig, ax, path, f"{head}\nlabels: repetition = samples seen / tier size\n{BARS}", chance)


def gaps(verdicts: list[Verdict], path: Path) -> Path:
    """One row per planned comparison: the gap in points with its 95% interval; filled when decided."""
    fig, ax = plt.subplots(figsize=(7.5, max(2.5, 0.28 * len(verdicts) + 1.2)))
    for y, v in enumerate(verdicts):
        half = v.gap.half()
        colour = "tab:green" if v.decided else "tab:grey"
        if np.isfinite(half):
            ax.errorbar([100 * v.gap.mean], [y], xerr=[[100 * half]], color=colour, capsize=3, fmt="none")
        ax.plot([100 * v.gap.mean], [y], "o", color=colour, mfc=colour if v.decided else "white")
    labels = [f"{v.comparison.a} − {v.comparison.b} @ {v.comparison.budget:,}" for v in verdicts]
    if len({v.comparison.within for v in verdicts}) > 1:
        labels = [f"{lab} ({v.comparison.within})" for lab, v in zip(labels, verdicts, strict=True)]
    ax.set_yticks(range(len(verdicts)), labels, fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("gap in zero-shot top-1 (points), paired on seeds and eval samples")
    ax.set_title("Every planned comparison: filled = decided (Holm, 5% family-wise), hollow = cannot rank", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def drop_reasons(counts: dict[str, int], path: Path, title: str = "What happened to every input row") -> Path:
    """``counts``: ``"status: reason"`` -> rows (e.g. ``"dropped: lang"``, ``"kept: -"``)."""
    items = sorted(counts.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(items) + 1)))
    colours = {"kept": "tab:green", "dropped": "tab:orange", "failed": "tab:red"}
    ax.barh(
        [k for k, _ in items], [v for _, v in items], color=[colours.get(k.split(":")[0], "grey") for k, _ in items]
    )
    for y, (_, v) in enumerate(items):
        ax.annotate(f"{v:,}", (v, y), textcoords="offset points", xytext=(3, -3), fontsize=7)
    ax.set_xlabel("input rows")
    ax.set_title(f"{title} ({sum(counts.values()):,} rows)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
