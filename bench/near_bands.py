"""Benchmark: what one pHash band mask costs, by pool size and band width, and so which search a pool wants.

The near-copy search (``curate.dedup.near``) sorts the pool's distinct pHash values by their bits under each
band mask and checks every pair in a run of equal keys. A mask costs a sort (~n log n) plus its candidates:
for random hashes, n^2 / 2 * 2^-bits of them. Default pools get 3 bands of ~21 bits x 10 tables (30 masks);
2 bands of 32 bits x 110 tables (220 masks) keep the recall at 6 bits (0.93) with ~2,000x fewer random
candidates a mask. This bench times single masks of each width in this process on uniformly random
distinct hashes of ``--sizes`` rows, fits the cost per row (from the 32-bit masks, whose candidates are
negligible; scaled by log n beyond the largest size) and per candidate (what the 21-bit masks take beyond
it), and prints the CPU-seconds each search would take at larger pools and where they cross, which is what
``curate.dedup.decide.LARGE_POOL`` is set from. Real pHashes cluster, so they make more candidates than
random ones: the crossover is lower for them, not higher. Writes bench/results/near_bands.json.

    .venv/bin/python bench/near_bands.py [--sizes 2000000 5000000 10000000 20000000]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from curate.dedup.decide import LARGE_POOL, LARGE_POOL_BANDS, SMALL_POOL_BANDS  # noqa: E402
from curate.dedup.near import NearConfig, _masks, _pairs_in_runs  # noqa: E402

PROJECT = [10_000_000, 50_000_000, 100_000_000, 1_000_000_000]


def one_mask(h: np.ndarray, mask: np.uint64, k: int = 6) -> tuple[float, int]:
    """(CPU seconds, candidate pairs) of one mask's search, as ``near_pairs`` runs it."""
    t = time.process_time()
    keys = h & mask
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    _pairs_in_runs(order, sorted_keys, h, k)
    seconds = time.process_time() - t
    runs = np.diff(np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1], True]))
    return seconds, int((runs * (runs - 1) // 2).sum())


def measure(n: int, masks_each: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    h = np.unique(rng.integers(0, np.iinfo(np.int64).max, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + 1)
    out = {}
    for bands in (3, 2):
        masks = _masks(NearConfig(bands=bands, tables=masks_each, seed=seed))[:masks_each]
        runs = [one_mask(h, m) for m in masks]
        out[f"{64 // bands}_bit"] = {
            "seconds_per_mask": round(float(np.median([s for s, _ in runs])), 3),
            "candidates_per_mask": int(np.median([c for _, c in runs])),
        }
    return {"rows": len(h), **out}


def expected_candidates(n: float, bands: int) -> float:
    """Random candidates a mask makes on average: its bands are 64 / bands bits, ``np.array_split``'s sizes."""
    sizes = [len(p) for p in np.array_split(np.arange(64), bands)]
    return float(np.mean([n * (n - 1) / 2 * 2.0**-b for b in sizes]))


def project(fit: dict, n: float, bands: int, tables: int) -> float:
    per_row = fit["per_row_s"] * math.log2(max(n, 2)) / math.log2(fit["at_rows"])
    return bands * tables * (per_row * n + fit["per_candidate_s"] * expected_candidates(n, bands))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2_000_000, 5_000_000, 10_000_000, 20_000_000])
    ap.add_argument("--masks", type=int, default=3, help="masks of each width timed per size (median taken)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "near_bands.json"))
    args = ap.parse_args(argv)
    rows = []
    for n in args.sizes:
        r = measure(n, args.masks)
        rows.append(r)
        print(
            f"{r['rows']:>12,} rows: 21-bit mask {r['21_bit']['seconds_per_mask']:.2f} CPU-s "
            f"({r['21_bit']['candidates_per_mask']:,} candidates), 32-bit mask {r['32_bit']['seconds_per_mask']:.2f} "
            f"CPU-s ({r['32_bit']['candidates_per_mask']:,})"
        )
    big = rows[-1]
    per_row = big["32_bit"]["seconds_per_mask"] / big["rows"]
    extra = [  # what a 21-bit mask takes beyond a 32-bit one, per candidate
        (r["21_bit"]["seconds_per_mask"] - r["32_bit"]["seconds_per_mask"]) / r["21_bit"]["candidates_per_mask"]
        for r in rows
        if r["21_bit"]["candidates_per_mask"] > 1_000_000
    ]
    fit = {"at_rows": big["rows"], "per_row_s": per_row, "per_candidate_s": float(np.median(extra)) if extra else 0.0}
    ns_row, ns_candidate = per_row * 1e9, fit["per_candidate_s"] * 1e9
    print(f"fit: {ns_row:.0f} ns a row a mask (at {big['rows']:,}), {ns_candidate:.0f} ns a candidate")
    small, large = SMALL_POOL_BANDS, LARGE_POOL_BANDS
    projected = {}
    for n in PROJECT:
        a, b = project(fit, n, *small), project(fit, n, *large)
        projected[n] = {"small_pool_search_cpu_h": round(a / 3600, 2), "large_pool_search_cpu_h": round(b / 3600, 2)}
        print(
            f"{n:>14,} rows: {small[0]}x{small[1]} {a / 3600:9.2f} CPU-h  {large[0]}x{large[1]} {b / 3600:7.2f} CPU-h"
        )
    grid = np.geomspace(1e6, 1e10, 400)
    cross = next((float(n) for n in grid if project(fit, n, *large) < project(fit, n, *small)), None)
    print(f"the {large[0]}-band search costs less from ~{cross:,.0f} rows (LARGE_POOL = {LARGE_POOL:,})")
    result = {"measured": rows, "fit": fit, "projected": projected, "crossover_rows": cross, "large_pool": LARGE_POOL}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
