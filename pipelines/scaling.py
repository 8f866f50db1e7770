"""The repetition-aware scaling law of Goyal et al. (CVPR 2024), "Scaling Laws for Data Filtering".

Error after ``n`` samples seen from a pool (tier) of ``p`` samples:

    error(n) = d + g(n)
    g(n)     = (a * n) ** b                                for n <= p       (first pass, b < 0)
    g(n)     = g(k p) * (n / (k p)) ** (b * 2 ** (-k / tau))  for k p < n <= (k + 1) p

so each new pass over the same data keeps improving the model, but with a scaling exponent that
halves every ``tau`` repetitions: data utility decays with repetition. ``d`` is the irreducible
error, shared by all tiers (same task, same model); ``tau`` is shared too (it describes the model
and task, Goyal et al. found ~3 - 7); ``a`` and ``b`` are each tier's own.

:func:`fit` fits the model to finished runs by least squares on log reducible error, with tau and
d fixed when there are too few runs to identify them; :func:`best_tier` predicts the tier with the
lowest error at a budget beyond the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

DEFAULT_TAU = 3.0


@dataclass
class TierLaw:
    a: float
    b: float
    pool: int


@dataclass
class Fit:
    d: float
    tau: float
    tiers: dict[str, TierLaw]
    residuals: dict[str, list[float]] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    rmse: float = float("nan")

    def predict(self, tier: str, n: float | np.ndarray) -> np.ndarray:
        t = self.tiers[tier]
        return predict(n, t.pool, t.a, t.b, self.d, self.tau)

    def to_dict(self) -> dict:
        return {
            "d": self.d,
            "tau": self.tau,
            "tiers": {k: {"a": v.a, "b": v.b, "pool": v.pool} for k, v in self.tiers.items()},
            "residuals": self.residuals,
            "fixed": self.fixed,
            "rmse": self.rmse,
        }


def reducible(n: float | np.ndarray, pool: int, a: float, b: float, tau: float) -> np.ndarray:
    """g(n) of the model above, vectorised over n."""
    n = np.atleast_1d(np.asarray(n, np.float64))
    out = np.empty_like(n)
    for idx, x in enumerate(n):
        passes = int(np.ceil(x / pool)) - 1 if x > pool else 0
        g = (a * min(x, pool)) ** b
        for k in range(1, passes + 1):
            end = min(x, (k + 1) * pool)
            g *= (end / (k * pool)) ** (b * 2.0 ** (-k / tau))
        out[idx] = g
    return out


def predict(n, pool: int, a: float, b: float, d: float, tau: float) -> np.ndarray:
    return d + reducible(n, pool, a, b, tau)


def fit(
    runs: list[dict],
    tau: float | None = None,
    d: float | None = None,
) -> Fit:
    """Fit to ``runs``: dicts with ``tier``, ``pool`` (tier size), ``samples_seen`` and ``error``.

    ``tau`` / ``d`` given: held fixed. Otherwise fitted when the runs can identify them (tau needs
    a run that repeats data; both need more points than parameters), else fixed at tau = 3 and d = 0.
    """
    tiers = sorted({r["tier"] for r in runs})
    pools = {r["tier"]: int(r["pool"]) for r in runs}
    n = np.array([r["samples_seen"] for r in runs], np.float64)
    err = np.array([r["error"] for r in runs], np.float64)
    tier_idx = np.array([tiers.index(r["tier"]) for r in runs])
    repeats = any(r["samples_seen"] > r["pool"] for r in runs)

    free_tau = tau is None and repeats and len(runs) > 2 * len(tiers) + 1
    free_d = d is None and len(runs) > 2 * len(tiers) + int(free_tau)
    fixed = [name for name, free in (("tau", free_tau), ("d", free_d)) if not free]
    tau0 = DEFAULT_TAU if tau is None else tau
    d_cap = max(float(err.min()) - 1e-6, 0.0)
    d0 = (0.5 * d_cap if free_d else 0.0) if d is None else d

    def unpack(x):
        k = 2 * len(tiers)
        ab = x[:k].reshape(-1, 2)
        t = x[k] if free_tau else tau0
        dd = x[k + int(free_tau)] if free_d else d0
        return ab, t, dd

    def resid(x):
        ab, t, dd = unpack(x)
        out = np.empty(len(runs))
        for i in range(len(runs)):
            la, b = ab[tier_idx[i]]
            g = reducible(n[i], pools[tiers[tier_idx[i]]], np.exp(la), b, t)[0]
            out[i] = np.log(max(dd + g, 1e-12)) - np.log(err[i])
        return out

    x0, lo, hi = [], [], []
    for _ in tiers:
        x0 += [np.log(1e-3), -0.3]
        lo += [-40.0, -3.0]
        hi += [20.0, -1e-4]
    if free_tau:
        x0.append(tau0)
        lo.append(0.1)
        hi.append(100.0)
    if free_d:
        x0.append(d0)
        lo.append(0.0)
        hi.append(max(d_cap, 1e-9))
    sol = least_squares(resid, np.array(x0), bounds=(np.array(lo), np.array(hi)))
    ab, t, dd = unpack(sol.x)
    res = resid(sol.x)
    out = Fit(
        d=float(dd),
        tau=float(t),
        tiers={name: TierLaw(float(np.exp(ab[i][0])), float(ab[i][1]), pools[name]) for i, name in enumerate(tiers)},
        fixed=fixed,
        rmse=float(np.sqrt(np.mean(res**2))),
    )
    for i, r in enumerate(runs):
        out.residuals.setdefault(r["tier"], []).append(float(res[i]))
    return out


def best_tier(f: Fit, samples_seen: float) -> tuple[str, dict[str, float]]:
    """The tier with the lowest predicted error at ``samples_seen``, and every tier's prediction."""
    preds = {t: float(f.predict(t, samples_seen)[0]) for t in f.tiers}
    return min(preds, key=preds.get), preds
