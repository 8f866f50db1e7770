"""The decision rule: its statistics, its words, and its calibration on studies with known truth.

The calibration tests simulate whole studies (no training; :mod:`pipelines.simulate`) and run them
through the same ``decide`` the reports use. Their rates are Monte Carlo estimates: with 1,000
studies a rate near 5% has a standard error of about 0.7 points, and the generator seeds are fixed
(the first one tried), so the figures are reproducible. ``bench/calibration.py`` runs more studies.
"""

import math

import numpy as np
import pytest
from scipy import stats as sps

from pipelines import stats
from pipelines.adaptive import plan_round, seed_sequence, until_decided
from pipelines.decide import decide, plan_comparisons
from pipelines.simulate import Simulator, gap_noise_sd

PAIR = plan_comparisons(["v"], ["a", "b"], [1000])


def _studies(n, truth, seeds, seed_sd, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    for _ in range(n):
        yield Simulator(truth, seed_sd=seed_sd, rng=rng)


def test_seed_interval_is_the_t_interval_and_one_seed_has_none():
    v = [0.31, 0.35, 0.29, 0.33]
    iv = stats.seed_interval(v)
    lo, hi = sps.t.interval(0.95, 3, loc=np.mean(v), scale=sps.sem(v))
    assert (iv.lo, iv.hi) == pytest.approx((lo, hi)) and iv.method == "seeds" and iv.n == 4
    one = stats.seed_interval([0.3])
    assert one.method == "none" and math.isnan(one.lo)


def test_one_seed_gets_a_bootstrap_interval_over_eval_samples_said_as_such():
    correct = np.random.default_rng(0).random(500) < 0.3
    iv = stats.cell_interval([float(correct.mean())], [correct])
    p = correct.mean()
    assert iv.method == "eval samples" and iv.n == 500 and "training noise not included" in iv.label()
    assert iv.half == pytest.approx(1.96 * math.sqrt(p * (1 - p) / 500), rel=0.1)
    assert stats.cell_interval([0.3], [None]).method == "none"


def test_paired_gap_without_samples_is_the_paired_t_test():
    a, b = [0.31, 0.35, 0.29, 0.33, 0.30], [0.28, 0.33, 0.29, 0.30, 0.26]
    g = stats.paired_gap(a, b)
    assert g.p == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert g.mean == pytest.approx(np.mean(np.subtract(a, b))) and g.df == 4 and g.se_eval == 0


def test_paired_gap_with_samples_adds_the_eval_sets_noise_which_seeds_do_not_remove():
    # Two models that disagree on the same items in every seed: no training noise at all, but the
    # gap rests on 40 items of 400 and would differ on another eval set.
    rng = np.random.default_rng(1)
    base = rng.random(400) < 0.4
    a = np.stack([base | (np.arange(400) < 40)] * 5)
    b = np.stack([base & ~(np.arange(400) < 40)] * 5)
    g = stats.paired_gap(a.mean(1), b.mean(1), list(a), list(b))
    assert g.sd_seed == pytest.approx(0.0) and g.se_eval > 0.005 and g.se == pytest.approx(g.se_eval)
    assert stats.paired_gap(a.mean(1), b.mean(1)).se == 0  # the seeds alone would call it exact
    one = stats.paired_gap(a.mean(1)[:1], b.mean(1)[:1], list(a[:1]), list(b[:1]))
    assert math.isnan(one.p) and one.se > 0  # one seed: an interval from the samples, no test


def test_holm_adjusts_step_down_and_keeps_untestable_ones_out():
    adj = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    with_nan = stats.holm([0.01, math.nan])
    assert with_nan[0] == pytest.approx(0.02) and math.isnan(with_nan[1])


def test_sequential_p_spends_the_error_rate_over_looks():
    assert stats.sequential_p([0.02]) == pytest.approx(0.04)
    assert stats.sequential_p([0.3, 0.01]) == pytest.approx(0.04)  # second look: 1/4 of alpha
    assert sum(stats.spend(k) for k in range(1, 60)) <= 1.0


def test_seeds_needed_is_what_a_simulation_of_that_many_seeds_decides_80_percent_of_the_time():
    gap, sd = 0.02, 0.03
    n = stats.seeds_needed(gap, sd, 0.0, 0.05)
    assert 10 < n < 40
    rng = np.random.default_rng(0)
    d = rng.normal(gap, sd, (4000, n))
    p = 2 * sps.t.sf(np.abs(d.mean(1)) / (d.std(1, ddof=1) / math.sqrt(n)), n - 1)
    assert 0.77 <= (p < 0.05).mean() <= 0.86
    assert stats.seeds_needed(0.002, 0.03, 0.01, 0.05) is None  # the eval set's noise hides it


def test_verdicts_say_who_wins_by_how_much_or_why_they_cannot_rank():
    rows = []
    for s, (x, y, z) in enumerate([(0.40, 0.30, 0.31), (0.42, 0.31, 0.30), (0.41, 0.29, 0.32), (0.40, 0.30, 0.29)]):
        for tier, acc in (("top30", x), ("kept", y), ("top50", z)):
            rows.append({"variant": "default", "tier": tier, "samples_seen": 16000, "seed": s, "zeroshot_top1": acc})
    v = {
        (x.comparison.a, x.comparison.b): x
        for x in decide(rows, plan_comparisons(["default"], ["top30", "top50", "kept"], [16000]))
    }
    win = v[("top30", "kept")]
    assert win.decided and win.winner == "top30"
    assert win.text.startswith("top30 beats kept by 10.8 ± ") and "points at 16,000 samples seen (p = " in win.text
    assert "after Holm over 3 comparisons; 4 seeds" in win.text
    tie = v[("top50", "kept")]
    assert not tie.decided and tie.text.startswith(
        "cannot rank top50 and kept at 16,000 samples seen: the gap (0.5, top50 ahead)"
    )
    assert "is below the noise (±" in tie.text and "seeds would decide it" in tie.text
    one = decide([r for r in rows if r["seed"] == 0], plan_comparisons(["default"], ["top30", "kept"], [16000]))[0]
    assert not one.decided and "one seed each, so the training noise is unknown" in one.text


def test_calibration_equal_tiers_declare_a_winner_in_at_most_5_percent():
    truth = {("v", "a", 1000): 0.3, ("v", "b", 1000): 0.3}
    for seeds, seed_sd in ((5, 0.3), (3, 0.1)):  # training noise dominant, and eval-sample noise dominant
        wins = sum(decide(sim.study(seeds), PAIR)[0].decided for sim in _studies(1000, truth, seeds, seed_sd))
        assert wins / 1000 <= 0.05, (seeds, seed_sd, wins)


def test_calibration_a_tier_better_by_2_noise_sds_is_found_with_5_seeds():
    """ "Noise SD": the SD of one seed's measured gap, what the paired rule sees (both runs' training
    noise and their eval-sample noise). Independent runs: about 1.4x one run's SD."""
    noise = gap_noise_sd(0.3, seed_sd=0.3)
    truth = {("v", "a", 1000): 0.3 + noise, ("v", "b", 1000): 0.3 - noise}
    right = wrong = covered = 0
    for sim in _studies(1000, truth, 5, 0.3):
        v = decide(sim.study(5), PAIR)[0]
        right += v.winner == "a"
        wrong += v.winner == "b"
        covered += abs(v.gap.mean - 2 * noise) <= v.gap.half()
    assert right / 1000 >= 0.8 and wrong == 0
    assert covered / 1000 >= 0.93  # the gap's 95% interval covers the true gap


def test_calibration_adaptive_seeding_keeps_the_error_rate_and_finds_the_winner():
    for delta, check in ((0.0, lambda w: w["a"] + w["b"] <= 0.05 * 400), (None, lambda w: w["a"] >= 0.8 * 400)):
        d = 2 * gap_noise_sd(0.3, seed_sd=0.3) if delta is None else delta
        truth = {("v", "a", 1000): 0.3 + d / 2, ("v", "b", 1000): 0.3 - d / 2}
        wins = {"a": 0, "b": 0, None: 0}
        for sim in _studies(400, truth, 3, 0.3, rng_seed=1):
            _, v = until_decided(sim.study(3), PAIR, sim.runs, 24, (0, 1, 2))
            wins[v[0].winner] += 1
        assert check(wins), (d, wins)


def test_a_round_adds_paired_seeds_to_the_closest_comparison_first_within_the_budget():
    assert seed_sequence((0, 5), 4) == [0, 5, 6, 7]
    rows = []
    for s in range(3):
        for tier, acc in (("a", 0.40 + 0.01 * s), ("b", 0.30 + 0.02 * s), ("c", (0.41, 0.39, 0.425)[s])):
            rows.append({"variant": "v", "tier": tier, "samples_seen": 1, "seed": s, "zeroshot_top1": acc})
    comps = plan_comparisons(["v"], ["a", "b", "c"], [1])
    verdicts = decide(rows, comps)
    have = {("v", t, 1): 3 for t in "abc"}
    todo = plan_round(verdicts, have, (0, 1, 2), room=100)
    assert todo and all(seed >= 3 for _, seed in todo)
    for cell in {c for c, _ in todo}:  # every cell gets the same new seeds, in sequence
        assert sorted(s for c, s in todo if c == cell) == list(range(3, 3 + len([1 for c, _ in todo if c == cell])))
    assert plan_round(verdicts, have, (0, 1, 2), room=1) == []  # a pair of runs does not fit in 1


def test_a_gap_the_eval_set_hides_says_the_smallest_gap_it_could_decide():
    # 3 seeds, 200 eval samples: on the same 9 samples every seed, a gets 5 right that b misses and b
    # 4 that a misses: a gap of half a point that the seeds agree on, hidden by which samples the eval
    # set happens to hold — noise no number of seeds removes.
    rng = np.random.default_rng(3)
    rows = []
    for s in range(3):
        a = rng.random(200) < 0.5
        b = a.copy()
        a[:5], b[:5] = True, False
        a[5:9], b[5:9] = False, True
        for tier, correct in (("a", a), ("b", b)):
            rows.append(
                {
                    "variant": "v",
                    "tier": tier,
                    "samples_seen": 1000,
                    "seed": s,
                    "zeroshot_top1": float(correct.mean()),
                    "zeroshot_correct": correct.tolist(),
                }
            )
    (v,) = decide(rows, PAIR)
    assert not v.decided and v.seeds_needed is None
    assert "more seeds would not decide it: with the eval set's own noise (±" in v.text
    smallest = stats.critical(0.05, stats.POWER) * v.gap.se_eval
    assert f"no gap under about {100 * smallest:.1f} points can be decided; a larger eval set would" in v.text
    assert smallest > abs(v.gap.mean)
