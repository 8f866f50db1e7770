import numpy as np
import pytest

from pipelines.extrapolate import extrapolate
from pipelines.scaling import best_tier, fit, predict, reducible

# Best data wins at small compute (top10), the middle tier at medium compute, and the whole pool
# once the small tiers are repeated too often: the inverted U moves right as compute grows.
TRUE = {"top10": (2000, 0.08, -0.42), "top30": (10000, 0.04, -0.40), "kept": (50000, 0.02, -0.38)}
D, TAU = 0.10, 3.0
BUDGETS = [300, 1000, 3000, 10_000, 30_000, 100_000]


def runs(noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for tier, (pool, a, b) in TRUE.items():
        for n in BUDGETS:
            e = float(predict(n, pool, a, b, D, TAU)[0]) * float(np.exp(rng.normal(0, noise)))
            out.append({"tier": tier, "pool": pool, "samples_seen": n, "error": e})
    return out


def test_model_is_continuous_and_repetition_slows_it():
    pool, a, b = 1000, 2e-3, -0.4
    left, right = reducible([pool * 2 - 1e-6, pool * 2 + 1e-6], pool, a, b, TAU)
    assert right == pytest.approx(left, rel=1e-6)
    fresh = reducible(10 * pool, 10 * pool, a, b, TAU)[0]  # ten passes over a 10x bigger pool, no repeats
    repeated = reducible(10 * pool, pool, a, b, TAU)[0]
    assert repeated > fresh  # repetition helps less than new data
    assert reducible(10 * pool, pool, a, b, 1e9)[0] == pytest.approx(fresh)  # no decay -> no penalty


def test_fit_recovers_known_parameters_from_its_own_curves():
    f = fit(runs())
    assert f.fixed == []
    assert f.tau == pytest.approx(TAU, rel=0.05)
    assert f.d == pytest.approx(D, rel=0.05)
    for tier, (pool, a, b) in TRUE.items():
        assert f.tiers[tier].pool == pool
        assert f.tiers[tier].b == pytest.approx(b, rel=0.05)
        assert f.tiers[tier].a == pytest.approx(a, rel=0.15)
    assert f.rmse < 1e-4


def test_fit_with_noise_still_predicts_the_best_tier_at_10x():
    f = fit(runs(noise=0.01))
    budget = 10 * max(BUDGETS)
    truth = min(TRUE, key=lambda t: predict(budget, TRUE[t][0], TRUE[t][1], TRUE[t][2], D, TAU)[0])
    assert best_tier(f, budget)[0] == truth == "kept"  # at 1M samples the small tiers are repeated to death
    assert best_tier(f, 1000)[0] == "top10"  # while at small compute the best data wins
    assert best_tier(f, 100_000)[0] == "top30"
    assert set(f.residuals) == set(TRUE) and all(len(v) == len(BUDGETS) for v in f.residuals.values())


def test_too_few_budgets_refuse_to_extrapolate_and_say_why():
    few = [r for r in runs() if r["samples_seen"] in (1000, 3000)]
    f = fit(few)
    assert set(f.fixed) == {"tau", "d"} and f.tau == 3.0 and f.d == 0.0
    assert (f.points, f.params, f.dof) == (6, 6, 0) and not f.trusted
    assert "6 parameters for 6 cells" in f.status() and "fewer than 3 budgets" in f.status()
    assert extrapolate(few, f, 1e6) is None


def test_a_parameter_on_its_bound_refuses_to_extrapolate():
    # CPU-sized runs of which one tier gets worse with compute: no law fits that inside its bounds.
    flat = [
        {"tier": t, "pool": p, "samples_seen": n, "error": e}
        for t, p, errs in (("top10", 2000, (0.80, 0.82, 0.85)), ("kept", 50000, (0.9, 0.8, 0.7)))
        for n, e in zip((1000, 3000, 10000), errs, strict=True)
    ]
    f = fit(flat)
    assert f.at_bound and not f.trusted and "at the bound of its range: " in f.status()
    assert f.at_bound[0] in f.status() and "(the data do not pin it down)" in f.status()


def test_extrapolation_gives_intervals_and_the_best_tiers_probability():
    noisy = [r for s in range(3) for r in runs(noise=0.02, seed=s) if r["samples_seen"] <= 30_000]
    for r, s in zip(noisy, [s for s in range(3) for _ in runs()], strict=False):
        r["seed"] = s
    f = fit(noisy)
    assert f.trusted and f.dof == f.points - f.params > 0 and "degrees of freedom" in f.status()
    assert f.lack_of_fit_p > 0.05  # runs drawn from the law itself: no lack of fit
    x = extrapolate(noisy, f, 1e6, reps=60)
    assert x.method.startswith("seeds resampled") and x.failed < 6
    truth = {t: 1 - predict(1e6, pool, a, b, D, TAU)[0] for t, (pool, a, b) in TRUE.items()}
    assert x.best == "kept" and x.p_best["kept"] >= 0.8
    assert x.accuracy["kept"][1] <= truth["kept"] <= x.accuracy["kept"][2]
    assert "best in" in x.sentence() and any("repetition at the target" in c for c in x.caveats)
    grid, lo, hi = x.bands["top10"]
    assert grid[-1] == pytest.approx(1e6) and (lo <= hi).all()
    one_seed = runs(noise=0.02)
    x1 = extrapolate(one_seed, fit(one_seed), 1e6, reps=30)
    assert x1.method.startswith("fit residuals") and x1.accuracy["kept"][1] < x1.accuracy["kept"][2]
