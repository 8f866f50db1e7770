"""Predictions beyond the data, with their uncertainty: a bootstrap over the runs behind a trusted fit.

Each replicate refits the law (:func:`pipelines.scaling.fit`, started from the original solution)
to resampled data, and predicts every tier at the target budget and along a grid for the plot's
band. With two or more seeds in every cell the seeds are resampled within each cell (the cells'
own noise, as the runs measured it); with one seed the residuals of the fit are resampled, scaled
up for the degrees of freedom the fit used. The best-tier prediction is the tier best in the
original fit, with the share of replicates in which it is best as its probability.

What the bootstrap cannot see is said as caveats: it measures the noise of the points, not whether
the law holds where no run was made, and a target that repeats a tier far more than any run did
leans on ``tau`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.scaling import Fit, best_tier, cells, fit

REPS = 200
GRID = 40


@dataclass
class Extrapolation:
    budget: float
    best: str
    p_best: dict[str, float]  # share of replicates in which each tier is best at ``budget``
    accuracy: dict[str, tuple[float, float, float]]  # tier -> (fit, 2.5%, 97.5%) at ``budget``
    method: str
    reps: int
    failed: int  # replicates whose refit failed (left out)
    caveats: list[str] = field(default_factory=list)
    bands: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def sentence(self) -> str:
        acc = ", ".join(f"{t} {m:.3f} [{lo:.3f}, {hi:.3f}]" for t, (m, lo, hi) in self.accuracy.items())
        return (
            f"predicted best at {self.budget:,.0f} samples seen: {self.best} "
            f"(best in {self.p_best[self.best]:.0%} of {self.reps - self.failed} bootstrap refits; "
            f"accuracy with 95% intervals: {acc})"
        )

    def to_dict(self) -> dict:
        return {
            "budget": self.budget,
            "best": self.best,
            "p_best": self.p_best,
            "accuracy": {t: list(v) for t, v in self.accuracy.items()},
            "method": self.method,
            "reps": self.reps,
            "failed": self.failed,
            "caveats": self.caveats,
            "sentence": self.sentence(),
        }


def _resampled(runs: list[dict], f: Fit, rng: np.random.Generator, by_seed: bool) -> list[dict]:
    groups = cells(runs)
    pools = {r["tier"]: r["pool"] for r in runs}
    out = []
    if by_seed:
        for (tier, n), errs in groups.items():
            out += [
                {"tier": tier, "pool": pools[tier], "samples_seen": n, "error": e} for e in rng.choice(errs, len(errs))
            ]
        return out
    res = np.concatenate([np.asarray(v) for v in f.residuals.values()]) * np.sqrt(f.points / max(f.dof, 1))
    for (tier, n), _ in sorted(groups.items()):
        e = float(f.predict(tier, n)[0]) * float(np.exp(rng.choice(res)))
        out.append({"tier": tier, "pool": pools[tier], "samples_seen": n, "error": e})
    return out


def extrapolate(runs: list[dict], f: Fit, budget: float, reps: int = REPS, seed: int = 0) -> Extrapolation | None:
    """Bootstrap predictions at ``budget`` for a trusted fit; None when the fit refused to extrapolate."""
    if not f.trusted:
        return None
    groups = cells(runs)
    by_seed = all(len(v) >= 2 for v in groups.values())
    rng = np.random.default_rng(seed)
    lo_n = min(n for _, n in groups)
    grid = np.geomspace(lo_n, budget, GRID)
    tiers = list(f.tiers)
    at, curves, failed = [], [], 0
    fixed = {k: getattr(f, k) if k in f.fixed else None for k in ("tau", "d")}
    for _ in range(reps):
        try:
            g = fit(_resampled(runs, f, rng, by_seed), tau=fixed["tau"], d=fixed["d"], x0=f.x)
        except (ValueError, FloatingPointError):
            failed += 1
            continue
        at.append([float(g.predict(t, budget)[0]) for t in tiers])
        curves.append([g.predict(t, grid) for t in tiers])
    at_arr, curves_arr = 1 - np.array(at), 1 - np.array(curves)  # accuracies
    best, preds = best_tier(f, budget)
    wins = np.bincount(at_arr.argmax(1), minlength=len(tiers)) / len(at_arr)
    out = Extrapolation(
        budget=float(budget),
        best=best,
        p_best={t: float(w) for t, w in zip(tiers, wins, strict=True)},
        accuracy={
            t: (1 - preds[t], *(float(x) for x in np.quantile(at_arr[:, i], [0.025, 0.975])))
            for i, t in enumerate(tiers)
        },
        method="seeds resampled within each cell" if by_seed else "fit residuals resampled (one seed per cell)",
        reps=reps,
        failed=failed,
    )
    out.bands = {t: (grid, *np.quantile(curves_arr[:, i], [0.025, 0.975], axis=0)) for i, t in enumerate(tiers)}
    out.caveats = _caveats(runs, f, budget)
    return out


def _caveats(runs: list[dict], f: Fit, budget: float) -> list[str]:
    top = max(r["samples_seen"] for r in runs)
    out = [
        f"extrapolates {budget / top:.3g}x beyond the largest run; the intervals cover the noise of the runs, "
        "not whether the law still holds out there"
    ]
    seen = {t: max(r["samples_seen"] / r["pool"] for r in runs if r["tier"] == t) for t in f.tiers}
    far = [f"{t} {budget / law.pool:,.0f}x (runs: at most {seen[t]:.1f}x)" for t, law in f.tiers.items()]
    if any(budget / law.pool > 3 * seen[t] for t, law in f.tiers.items()):
        out.append("repetition at the target, beyond what any run did: " + ", ".join(far))
    if f.fixed:
        out.append(f"assumed rather than fitted: {', '.join(f.fixed)}")
    if f.lack_of_fit_p is not None and f.lack_of_fit_p < 0.05:
        out.append(f"the law misses the cells by more than their seed noise (lack of fit p = {f.lack_of_fit_p:.2g})")
    return out
