import numpy as np
import pytest

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


def test_too_few_runs_fix_tau_and_d():
    few = [r for r in runs() if r["samples_seen"] in (1000, 3000)]
    f = fit(few)
    assert set(f.fixed) == {"tau", "d"} and f.tau == 3.0 and f.d == 0.0
    assert np.isfinite(f.predict("top10", 1e6)).all()
