"""Calibration of the study decision rule on simulated studies with known truth (no training).

The same ``decide`` / ``until_decided`` the reports use, on simulated studies (pipelines/simulate.py:
each run answers a 500-sample eval set drawn from a task with normal item difficulties; training
noise ``seed_sd`` logits per run). Prints and writes bench/results/calibration.json:

- equal tiers: how often a winner is declared (the rule's family-wise error; nominal 5%);
- one tier better by 2 noise SDs: how often the right winner is found, where "noise SD" is either
  the SD of one seed's measured gap (what the paired rule sees) or one run's own SD (independent
  runs: the gap's SD is about 1.4x that, so this is the harder reading);
- the adaptive procedure (3 planned seeds, at most 24 runs): its error rate and power;
- the 95% interval of the gap: how often it covers the true gap.

    .venv/bin/python bench/calibration.py [--studies 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, not the one the venv's editable install points at
from pipelines.adaptive import until_decided  # noqa: E402
from pipelines.decide import METRIC, decide, plan_comparisons  # noqa: E402
from pipelines.simulate import Simulator, gap_noise_sd  # noqa: E402

PAIR = plan_comparisons(["v"], ["a", "b"], [1])


def _run_sd(accuracy: float, seed_sd: float) -> float:
    sim = Simulator({("v", "a", 1): accuracy}, seed_sd=seed_sd, rng=np.random.default_rng(99))
    return float(np.std([r[METRIC] for r in sim.study(4000)], ddof=1))


def fixed(n: int, delta: float, seeds: int, seed_sd: float, rng_seed: int = 0) -> dict:
    rng = np.random.default_rng(rng_seed)
    truth = {("v", "a", 1): 0.3 + delta / 2, ("v", "b", 1): 0.3 - delta / 2}
    right = wrong = covered = 0
    for _ in range(n):
        v = decide(Simulator(truth, seed_sd=seed_sd, rng=rng).study(seeds), PAIR)[0]
        right += v.winner == "a"
        wrong += v.winner == "b"
        covered += abs(v.gap.mean - delta) <= v.gap.half()
    return {"right": right / n, "wrong": wrong / n, "covered": covered / n, "studies": n}


def family(n: int, seeds: int, seed_sd: float) -> dict:
    """3 equal tiers x 2 budgets: 6 comparisons, Holm; any winner is wrong."""
    rng = np.random.default_rng(1)
    truth = {("v", t, b): 0.3 for t in "abc" for b in (1, 2)}
    comps = plan_comparisons(["v"], ["a", "b", "c"], [1, 2])
    wins = sum(
        any(v.decided for v in decide(Simulator(truth, seed_sd=seed_sd, rng=rng).study(seeds), comps))
        for _ in range(n)
    )
    return {"any_winner": wins / n, "studies": n, "comparisons": len(comps)}


def adaptive(n: int, delta: float, seed_sd: float) -> dict:
    rng = np.random.default_rng(2)
    truth = {("v", "a", 1): 0.3 + delta / 2, ("v", "b", 1): 0.3 - delta / 2}
    out = {"a": 0, "b": 0, None: 0}
    runs = []
    for _ in range(n):
        sim = Simulator(truth, seed_sd=seed_sd, rng=rng)
        rows, v = until_decided(sim.study(3), PAIR, sim.runs, 24, (0, 1, 2))
        out[v[0].winner] += 1
        runs.append(len(rows))
    return {"right": out["a"] / n, "wrong": out["b"] / n, "mean_runs": float(np.mean(runs)), "studies": n}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "calibration.json"))
    args = ap.parse_args(argv)
    n, t0 = args.studies, time.perf_counter()
    res = {"studies": n, "eval_samples": 500, "accuracy": 0.3}
    for sd in (0.3, 0.1):
        noise = gap_noise_sd(0.3, seed_sd=sd)
        run = _run_sd(0.3, sd)
        key = f"seed_sd_{sd}"
        res[key] = {
            "gap_noise_sd": noise,
            "run_sd": run,
            "equal_5_seeds": fixed(n, 0.0, 5, sd),
            "equal_3_seeds": fixed(n, 0.0, 3, sd),
            "equal_3_tiers_2_budgets_3_seeds": family(n // 2, 3, sd),
            "better_2_gap_sds_5_seeds": fixed(n, 2 * noise, 5, sd),
            "better_2_run_sds_5_seeds": fixed(n, 2 * run, 5, sd),
            "adaptive_equal": adaptive(n // 2, 0.0, sd),
            "adaptive_better_2_gap_sds": adaptive(n // 2, 2 * noise, sd),
        }
        print(f"training noise {sd} logits: gap noise SD {noise:.4f}, one run's SD {run:.4f}")
        for k, v in res[key].items():
            if isinstance(v, dict):
                print(
                    f"  {k:<34} "
                    + ", ".join(f"{a} {b:.3f}" if isinstance(b, float) else f"{a} {b}" for a, b in v.items())
                )
    res["seconds"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"{res['seconds']:.0f} s; {args.out}")
    return res


if __name__ == "__main__":
    main()
