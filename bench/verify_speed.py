"""Benchmark: the near-copy verifier's speed inside the dedup task's own path, and the decisions it makes.

Verification is most of the dedup task's time at scale (1.5M candidate pairs at 186,000 images of the
synthetic web, 11.6M at 930,000). This decides the first ``--rows`` images of ``bench/near_scale.py``'s
pool (64 px synthetic web, built and cached under --work if missing) with the build's own path
(:func:`curate.dedup.partitioned.deduplicate_partitioned`, thumbnails spilled, verification on), in
this process, and times every chunk of candidates the verifier is handed (through
:func:`curate.dedup.copies.verifying_with`). Reported per repeat: wall time, seconds in verification,
candidate pairs verified and found, microseconds per pair, and a digest of the decisions (``dup_of``,
``dup_kind``) and of the verified pairs. To compare two commits, run it from a worktree of each,
alternated, on an idle machine. Writes bench/results/verify_speed.json.

    .venv/bin/python bench/verify_speed.py [--urls 100000] [--rows 93000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One thread, as in the dedup task's Ray workers (Ray sets OMP_NUM_THREADS to a task's CPUs): BLAS
# fanning out here would time two cores against a build's one.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_once(table_path: Path, thumb_path: Path, rows: int) -> dict:
    import pyarrow.parquet as pq

    from curate.core import schema
    from curate.dedup import DedupConfig
    from curate.dedup.copies import verifying_with
    from curate.dedup.partitioned import deduplicate_partitioned
    from curate.dedup.thumbstore import Spilled

    stats = {"verify_s": 0.0, "pairs": 0, "found": 0}
    found = hashlib.sha256()

    def timed(fn, jobs):
        for job in jobs:
            t0 = time.perf_counter()
            i, j = fn(*job)
            stats["verify_s"] += time.perf_counter() - t0
            stats["pairs"] += len(job[2])
            stats["found"] += len(i)
            found.update(np.stack([i, j]).astype(np.int64).tobytes())
            yield i, j

    table = pq.read_table(table_path).slice(0, rows)
    store = Spilled(thumb_path, np.uint8, (schema.THUMB_BYTES,), rows)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clip-tiers-verify-speed-") as work:
        with verifying_with(timed):
            out = deduplicate_partitioned(table, DedupConfig(), workdir=work, thumbs=(np.arange(rows), store, work))
    wall = time.perf_counter() - t0
    decided = out.select(["dup_of", "dup_kind"]).to_pydict()
    return {
        "wall_s": round(wall, 1),
        "verify_s": round(stats["verify_s"], 1),
        "pairs": stats["pairs"],
        "found": stats["found"],
        "us_per_pair": round(stats["verify_s"] / max(1, stats["pairs"]) * 1e6, 1),
        "decisions": hashlib.sha256(json.dumps(decided).encode()).hexdigest()[:16],
        "verified_pairs": found.hexdigest()[:16],
        "load_before": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--urls", type=int, default=100_000, help="the near_scale pool to take rows from")
    ap.add_argument("--rows", type=int, default=93_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", default="/tmp/clip-tiers-near")
    args = ap.parse_args()

    from bench.near_scale import pool_for

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    table_path, thumb_path = pool_for(work, args.urls)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    results = []
    for _ in range(args.repeats):
        r = {"commit": head.stdout.strip(), **run_once(table_path, thumb_path, args.rows)}
        results.append(r)
        print(json.dumps(r), flush=True)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "verify_speed.json").write_text(json.dumps({"urls": args.urls, "rows": args.rows, "runs": results}))


if __name__ == "__main__":
    main()
