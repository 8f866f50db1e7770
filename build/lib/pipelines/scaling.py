"""The repetition-aware scaling law of Goyal et al. (CVPR 2024), "Scaling Laws for Data Filtering", fitted honestly.

Error after ``n`` samples seen from a pool (tier) of ``p`` samples:

    error(n) = d + g(n)
    g(n)     = (a * n) ** b                                for n <= p       (first pass, b < 0)
    g(n)     = g(k p) * (n / (k p)) ** (b * 2 ** (-k / tau))  for k p < n <= (k + 1) p

so each new pass over the same data keeps improving the model, but with a scaling exponent that
halves every ``tau`` repetitions: data utility decays with repetition. ``d`` is the irreducible
error, shared by all tiers (same task, same model); ``tau`` is shared too (it describes the model
and task, Goyal et al. found ~3 - 7); ``a`` and ``b`` are each tier's own.

:func:`fit` fits the law to the cells' mean errors (one point per tier x budget; seeds are
replicates, not points) by least squares on log error, and says whether it may extrapolate: it
refuses when the free parameters are as many as the points (the curve then passes through every
point and predicts nothing), when a tier has fewer budgets than its own two parameters plus one,
or when a parameter ends on a bound of its search range (the data do not pin it down). ``tau`` and
``d`` are fitted only when the runs can identify them; otherwise they are fixed, and the fixing is
reported as an assumption. :mod:`pipelines.extrapolate` adds intervals by bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from scipy.optimize import least_squares

DEFAULT_TAU = 3.0
MIN_BUDGETS = 3  # per tier: more points than its own (a, b)
_A, _B, _TAU = (-40.0, 20.0), (-3.0, -1e-4), (0.1, 100.0)


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
    residuals: dict[str, list[float]] = field(default_factory=dict)  # log error, per cell in budget order
    fixed: list[str] = field(default_factory=list)  # "tau", "d": held at assumed values, not fitted
    rmse: float = float("nan")
    points: int = 0  # cells (tier x budget) fitted
    params: int = 0  # free parameters
    at_bound: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # reasons it may not extrapolate
    lack_of_fit_p: float | None = None  # chi-square of residuals against the cells' seed noise
    x: np.ndarray | None = field(default=None, repr=False)  # the parameter vector: the bootstrap's start

    @property
    def dof(self) -> int:
        return self.points - self.params

    @property
    def trusted(self) -> bool:
        return not self.problems

    def predict(self, tier: str, n: float | np.ndarray) -> np.ndarray:
        t = self.tiers[tier]
        return predict(n, t.pool, t.a, t.b, self.d, self.tau)

    def status(self) -> str:
        """One sentence for the report: what was fitted, with how much room, and whether it may extrapolate."""
        head = f"{self.params} free parameters on {self.points} cells, {self.dof} degrees of freedom"
        if self.problems:
            return f"fit refused to extrapolate ({head}): {'; '.join(self.problems)}"
        fixed = {"tau": f"τ fixed at {self.tau:g}", "d": f"d fixed at {self.d:g}"}
        assumed = f"; assumed, not fitted: {', '.join(fixed[k] for k in self.fixed)}" if self.fixed else ""
        return f"fit: {head}, RMSE of log error {self.rmse:.3f}{assumed}"

    def to_dict(self) -> dict:
        return {
            "d": self.d,
            "tau": self.tau,
            "tiers": {k: {"a": v.a, "b": v.b, "pool": v.pool} for k, v in self.tiers.items()},
            "residuals": self.residuals,
            "fixed": self.fixed,
            "rmse": self.rmse,
            "points": self.points,
            "params": self.params,
            "dof": self.dof,
            "at_bound": self.at_bound,
            "problems": self.problems,
            "trusted": self.trusted,
            "lack_of_fit_p": self.lack_of_fit_p,
            "status": self.status(),
        }


def reducible(n, pool, a, b, tau: float) -> np.ndarray:
    """g(n) of the model above, vectorised over n (and over pool, a, b when they are arrays)."""
    n = np.atleast_1d(np.asarray(n, np.float64))
    pool, a, b = (np.broadcast_to(np.asarray(x, np.float64), n.shape) for x in (pool, a, b))
    g = (a * np.minimum(n, pool)) ** b
    passes = np.where(n > pool, np.ceil(n / pool) - 1, 0).astype(np.int64)
    for k in range(1, int(passes.max(initial=0)) + 1):
        on = passes >= k
        end = np.minimum(n, (k + 1) * pool)
        g = np.where(on, g * (end / (k * pool)) ** (b * 2.0 ** (-k / tau)), g)
    return g


def predict(n, pool: int, a: float, b: float, d: float, tau: float) -> np.ndarray:
    return d + reducible(n, pool, a, b, tau)


def cells(runs: list[dict]) -> dict[tuple[str, int], list[float]]:
    """(tier, samples_seen) -> the errors of its runs (seeds)."""
    out: dict[tuple[str, int], list[float]] = {}
    for r in runs:
        out.setdefault((r["tier"], int(r["samples_seen"])), []).append(float(r["error"]))
    return out


def fit(runs: list[dict], tau: float | None = None, d: float | None = None, x0=None) -> Fit:
    """Fit to ``runs``: dicts with ``tier``, ``pool`` (tier size), ``samples_seen`` and ``error``.

    ``tau`` / ``d`` given: held fixed. Otherwise fitted when the cells can identify them (tau needs a
    cell that repeats data; each needs a point beyond the tiers' own parameters), else fixed at
    tau = 3 and d = 0 and listed in ``fixed``. ``x0``: a start (a previous fit's ``x``), for the bootstrap."""
    groups = cells(runs)
    keys = sorted(groups, key=lambda k: (k[0], k[1]))
    tiers = sorted({t for t, _ in keys})
    pools = {r["tier"]: int(r["pool"]) for r in runs}
    n = np.array([k[1] for k in keys], np.float64)
    err = np.array([max(float(np.mean(groups[k])), 1e-6) for k in keys])  # log error: a perfect cell is 1e-6
    spec = _Spec(tiers, pools, keys, n, err, tau, d)
    start = spec.x0() if x0 is None or len(x0) != len(spec.lo) else np.clip(x0, spec.lo, spec.hi)
    sol = least_squares(spec.resid, start, bounds=(spec.lo, spec.hi))
    out = spec.result(sol)
    out.lack_of_fit_p = _lack_of_fit(groups, keys, spec.resid(sol.x), out.dof)
    out.x = sol.x
    return out


class _Spec:
    """The parameter vector of one fit: per tier (log a, b), then tau and d where free."""

    def __init__(self, tiers, pools, keys, n, err, tau, d):
        self.tiers, self.pools, self.keys, self.n, self.err = tiers, pools, keys, n, err
        per_tier = {t: sum(1 for k in keys if k[0] == t) for t in tiers}
        self.per_tier = per_tier
        base = 2 * len(tiers)
        repeats = any(k[1] > pools[k[0]] for k in keys)
        # free only while a degree of freedom is left over: a curve through every point tests nothing
        self.free_tau = tau is None and repeats and len(keys) > base + 1
        self.free_d = d is None and len(keys) > base + int(self.free_tau) + 1
        self.tau0 = DEFAULT_TAU if tau is None else tau
        self.d_cap = max(float(err.min()) - 1e-6, 0.0)
        self.d0 = (0.5 * self.d_cap if self.free_d else 0.0) if d is None else d
        self.tier_idx = np.array([tiers.index(k[0]) for k in keys])
        self.pool_vec = np.array([pools[k[0]] for k in keys], np.float64)
        lo, hi = [], []
        for _ in tiers:
            lo += [_A[0], _B[0]]
            hi += [_A[1], _B[1]]
        if self.free_tau:
            lo.append(_TAU[0])
            hi.append(_TAU[1])
        if self.free_d:
            lo.append(0.0)
            hi.append(max(self.d_cap, 1e-9))
        self.lo, self.hi = np.array(lo), np.array(hi)

    def x0(self) -> np.ndarray:
        x = [v for _ in self.tiers for v in (np.log(1e-3), -0.3)]
        return np.array(x + [self.tau0] * self.free_tau + [self.d0] * self.free_d)

    def unpack(self, x):
        k = 2 * len(self.tiers)
        ab = x[:k].reshape(-1, 2)
        t = x[k] if self.free_tau else self.tau0
        dd = x[k + int(self.free_tau)] if self.free_d else self.d0
        return ab, t, dd

    def resid(self, x) -> np.ndarray:
        ab, t, dd = self.unpack(x)
        la, b = ab[self.tier_idx, 0], ab[self.tier_idx, 1]
        g = reducible(self.n, self.pool_vec, np.exp(la), b, t)
        return np.log(np.maximum(dd + g, 1e-12)) - np.log(self.err)

    def result(self, sol) -> Fit:
        ab, t, dd = self.unpack(sol.x)
        res = self.resid(sol.x)
        fixed = [name for name, free in (("tau", self.free_tau), ("d", self.free_d)) if not free]
        f = Fit(
            d=float(dd),
            tau=float(t),
            tiers={
                nm: TierLaw(float(np.exp(ab[i][0])), float(ab[i][1]), self.pools[nm])
                for i, nm in enumerate(self.tiers)
            },
            fixed=fixed,
            rmse=float(np.sqrt(np.mean(res**2))),
            points=len(self.keys),
            params=len(self.lo),
        )
        for (tier, _), r in zip(self.keys, res, strict=True):
            f.residuals.setdefault(tier, []).append(float(r))
        names = [f"{p} of {tier}" for tier in self.tiers for p in ("a", "b")]
        names += ["τ"] * self.free_tau + ["d"] * self.free_d
        f.at_bound = [
            f"{nm} = {_shown(nm, v)}" for nm, v, m in zip(names, sol.x, sol.active_mask, strict=True) if m != 0
        ]
        f.problems = self.problems(f)
        return f

    def problems(self, f: Fit) -> list[str]:
        out = []
        if f.dof <= 0:
            out.append(f"{f.params} parameters for {f.points} cells: the curves pass through every point")
        thin = [t for t, c in self.per_tier.items() if c < MIN_BUDGETS]
        if thin:
            out.append(f"{', '.join(thin)} {'has' if len(thin) == 1 else 'have'} fewer than {MIN_BUDGETS} budgets")
        if f.at_bound:
            out.append(f"at the bound of its range: {', '.join(f.at_bound)} (the data do not pin it down)")
        return out


def _shown(name: str, v: float) -> str:
    return f"{np.exp(v):.3g}" if name.startswith("a of") else f"{v:.3g}"


def _lack_of_fit(groups, keys, res, dof) -> float | None:
    """F test of the residuals against the seed noise pooled over cells (log error), when cells have seeds.

    Pooled, because three seeds give each cell too rough a variance of its own to divide by."""
    if dof <= 0 or any(len(groups[k]) < 2 for k in keys):
        return None
    logs = [np.log(np.maximum(groups[k], 1e-6)) for k in keys]
    within = sum(float(((x - x.mean()) ** 2).sum()) for x in logs)
    df_within = sum(len(x) - 1 for x in logs)
    if within <= 0:
        return None
    between = float(sum(len(x) * r**2 for x, r in zip(logs, res, strict=True)))
    return float(stats.f.sf((between / dof) / (within / df_within), dof, df_within))


def best_tier(f: Fit, samples_seen: float) -> tuple[str, dict[str, float]]:
    """The tier with the lowest predicted error at ``samples_seen``, and every tier's prediction."""
    preds = {t: float(f.predict(t, samples_seen)[0]) for t in f.tiers}
    return min(preds, key=preds.get), preds
