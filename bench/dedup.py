"""Benchmark: exact + near dedup of 1M 64-bit hashes with 5% planted near copies.

Planted copies flip 1-6 random bits of a random original; 1% more rows are exact byte copies.
Prints time, recall and precision of the full `curate.dedup.deduplicate` decision, and checks the
banded search against a brute-force all-pairs reference on a 20k subset (same run).
Writes bench/results/dedup.json.

    .venv/bin/python bench/dedup.py [--n 1000000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.dedup import DedupConfig, deduplicate
from curate.dedup.near import NearConfig, brute_force_pairs, distinct, near_pairs, recall_bound


def make_pool(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    sha = np.arange(n)
    n_near, n_exact = n // 20, n // 100
    near_rows = np.arange(n - n_near - n_exact, n - n_exact)
    exact_rows = np.arange(n - n_exact, n)
    src = rng.choice(n - n_near - n_exact, size=n_near + n_exact, replace=False)
    flips = rng.integers(1, 7, size=n_near)
    bits = np.zeros(n_near, np.uint64)
    for d in range(1, 7):
        rows = np.flatnonzero(flips == d)
        for r, choice in zip(rows, (rng.choice(64, d, replace=False) for _ in rows), strict=True):
            bits[r] = np.bitwise_or.reduce(np.uint64(1) << choice.astype(np.uint64))
    h[near_rows] = h[src[:n_near]] ^ bits
    h[exact_rows] = h[src[n_near:]]
    sha[exact_rows] = sha[src[n_near:]]
    dup_src = np.full(n, -1)
    dup_src[near_rows] = src[:n_near]
    dup_src[exact_rows] = src[n_near:]
    return h, sha, dup_src, flips


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--subset", type=int, default=20_000)
    ap.add_argument("--out", default="bench/results/dedup.json")
    args = ap.parse_args()

    h, sha, dup_src, flips = make_pool(args.n)
    uids = [f"{i:08d}" for i in range(args.n)]
    table = pa.table({"uid": uids, "sha256": pa.array(sha.astype(str)), "phash": pa.array(h, pa.uint64())})
    cfg = DedupConfig(near_k=args.k, pixels=False, semantic=False)

    t0 = time.perf_counter()
    out = deduplicate(table, cfg)
    dt = time.perf_counter() - t0

    dup_of = np.array(out.column("dup_of").to_pylist(), dtype=object)
    flagged = dup_of != None  # noqa: E711
    planted = dup_src >= 0
    # A planted copy is found when it lands in its source's cluster (either one may be the keeper).
    cluster = np.where(flagged, dup_of, np.array(uids, dtype=object))
    found = planted & (cluster == cluster[np.where(planted, dup_src, 0)])
    recall = found.sum() / planted.sum()
    precision = (flagged & planted).sum() / max(flagged.sum(), 1)
    near_rows = np.flatnonzero(planted)[: len(flips)]  # the near copies come first, then exact ones
    by_d = {d: round(float(found[near_rows][flips == d].mean()), 4) for d in range(1, 7)}

    # Correctness of the banded search against brute force on a subset (same run).
    # Half planted near copies, half their sources, so the reference has thousands of true pairs.
    copies = near_rows[: args.subset // 2]
    sub, _ = distinct(np.concatenate([h[copies], h[dup_src[copies]]]))
    t1 = time.perf_counter()
    ref = brute_force_pairs(sub, args.k)
    t_brute = time.perf_counter() - t1
    t2 = time.perf_counter()
    i, j, _ = near_pairs(sub, cfg.near_config())
    t_band = time.perf_counter() - t2
    got = set(zip(i.tolist(), j.tolist(), strict=True))
    sub_recall = len(got & ref) / max(len(ref), 1)
    sub_precision = len(got & ref) / max(len(got), 1)

    result = {
        "n": args.n,
        "k": args.k,
        "seconds": round(dt, 2),
        "rows_per_s": round(args.n / dt),
        "recall": round(float(recall), 4),
        "precision": round(float(precision), 4),
        "recall_by_bits_flipped": by_d,
        "recall_bound_by_distance": {d: round(recall_bound(d, NearConfig(k=args.k)), 4) for d in range(1, 7)},
        "subset": {
            "n": len(sub),
            "brute_force_pairs": len(ref),
            "banded_pairs": len(got),
            "recall": round(sub_recall, 4),
            "precision": round(sub_precision, 4),
            "brute_force_s": round(t_brute, 2),
            "banded_s": round(t_band, 3),
            "speedup": round(t_brute / max(t_band, 1e-9), 1),
        },
    }
    print(json.dumps(result, indent=2))
    print(
        f"dedup {args.n:,} hashes: {dt:.2f} s (target < 10 s), recall {recall:.4f} (>= 0.95), "
        f"precision {precision:.4f} (>= 0.99); subset vs brute force: recall {sub_recall:.4f}, "
        f"precision {sub_precision:.4f}, {result['subset']['speedup']}x faster"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
