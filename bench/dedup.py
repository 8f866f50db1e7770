"""Benchmark: dedup decisions at 1M and 10M rows, partitioned against in memory, time and peak RSS.

A pool of annotation rows (``synthweb/hashpool.py``: uid, sha256, pixel_hash, phash, width, height;
4% exact copies, 1% re-encoded copies, 5% near copies 1-6 pHash bits away, 0.2% placeholder images)
is written to parquet, then decided by each engine in a process of its own, so its peak RSS is its
own: ``memory`` (today's path: the table read whole, :func:`curate.dedup.deduplicate`) and
``partitioned`` (:func:`curate.dedup.partitioned.deduplicate_partitioned`, streaming the parquet
file, partitions of ``--partition-rows``; ``partitioned-ray``: the same as a build's dedup task runs it,
a Ray task whose jobs, the pHash bands' partitions, go to Ray tasks on every core). Each writes its
decisions to parquet; the bench checks that they are the same row for row, and scores them against
the planted truth. A 20k subset checks the banded pHash search against all pairs (same run). Writes
bench/results/dedup.json.

    .venv/bin/python bench/dedup.py [--sizes 1000000 10000000] [--anchor-max 10000000]
        [--engines partitioned,memory,partitioned-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

# This checkout's code, in this process, its children and their Ray workers: not the one the venv's editable
# install points at (from a worktree of another commit, that would be measured instead, and the Ray workers
# of a child unpickled its settings into the other commit's classes).
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from curate.dedup import DedupConfig  # noqa: E402
from curate.dedup.near import NearConfig, brute_force_pairs, distinct, near_pairs, recall_bound  # noqa: E402
from synthweb.hashpool import chunks  # noqa: E402


def write_pool(n: int, work: Path) -> tuple[Path, Path]:
    pool, truth = work / f"pool_{n}.parquet", work / f"truth_{n}.parquet"
    if pool.exists() and truth.exists():
        return pool, truth
    writers = {}
    for p, t in chunks(n):
        for path, table in ((pool, p), (truth, t)):
            if path not in writers:
                writers[path] = pq.ParquetWriter(str(path) + ".tmp", table.schema)
            writers[path].write_table(table, row_group_size=1 << 17)
    for path, w in writers.items():
        w.close()
        Path(str(path) + ".tmp").rename(path)
    return pool, truth


def peak_rss_mb() -> int:
    """This process's peak RSS (VmHWM: unlike getrusage's ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def child(engine: str, pool: str, out: str, cfg: DedupConfig) -> None:
    """Decide ``pool`` with one engine; print seconds and peak RSS (this process) as JSON."""
    from curate.dedup import deduplicate
    from curate.dedup.partitioned import deduplicate_partitioned

    base = peak_rss_mb()
    stats: dict = {}
    t0 = time.perf_counter()
    if engine == "memory":
        table = pq.read_table(pool)
        pq.write_table(deduplicate(table, cfg), out)
    elif engine == "partitioned":
        deduplicate_partitioned([pool], cfg, out=out, workdir=str(Path(out).parent), stats=stats)
    else:
        return ray_child(pool, out, cfg)
    seconds = time.perf_counter() - t0
    row = {"seconds": round(seconds, 1), "peak_rss_mb": peak_rss_mb(), "import_rss_mb": base}
    row |= {"phase_seconds": stats.pop("seconds", {})} | stats
    print(json.dumps(row))


def ray_child(pool: str, out: str, cfg: DedupConfig) -> None:
    """The partitioned path as a build's dedup task runs it: a Ray task of one CPU in a Ray of every core,
    its jobs (the bands' partitions) fanned out to Ray tasks. Seconds from the task's start to its result
    (Ray's start-up apart); peak RSS of the task's worker (its jobs' workers not counted)."""
    import ray

    from curate.core import raypool
    from curate.core.runtime import ray_session
    from curate.dedup.copies import verifying_with
    from curate.dedup.partitioned import deduplicate_partitioned

    def task() -> dict:
        stats: dict = {}
        # (getattr: the bench also runs against commits from before fan_out, whose bands ran in the task)
        with verifying_with(getattr(raypool, "fan_out", None) or raypool.on_this_node):
            deduplicate_partitioned([pool], cfg, out=out, workdir=str(Path(out).parent), stats=stats)
        return {"task_peak_rss_mb": peak_rss_mb(), "phase_seconds": stats.pop("seconds", {})} | stats

    t0 = time.perf_counter()
    with ray_session(num_cpus=os.cpu_count()):
        started = time.perf_counter()
        got = ray.get(ray.remote(num_cpus=1, max_calls=1)(task).remote())
        seconds = time.perf_counter() - started
    row = {"seconds": round(seconds, 1), "ray_start_s": round(started - t0, 1), "peak_rss_mb": peak_rss_mb()}
    print(json.dumps(row | got))


def run_engine(engine: str, pool: Path, out: Path, cfg: DedupConfig) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--pool", str(pool), "--decisions", str(out)]
    cmd += ["--partition-rows", str(cfg.partition_rows), "--k", str(cfg.near_k)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if res.returncode:
        return {"error": (res.stderr or res.stdout)[-2000:], "returncode": res.returncode}
    return json.loads(res.stdout.strip().splitlines()[-1])


def score(decisions: Path, truth: Path) -> dict:
    """Recall of planted copies (a copy and its source end in one cluster), and rows removed as a
    duplicate of a keeper that shows another image (wrongly removed)."""
    d = pl.read_parquet(decisions).with_row_index("row", 0).with_columns(pl.col("row").cast(pl.Int64))
    t = pl.read_parquet(truth).join(d.select("row", pl.coalesce("dup_of", "uid").alias("cluster")), on="row")
    src = t.select(pl.col("row").alias("source"), pl.col("cluster").alias("source_cluster"))
    found = t.filter(pl.col("source") >= 0).join(src, on="source")
    found = found.with_columns((pl.col("cluster") == pl.col("source_cluster")).alias("found"))
    by_kind = found.group_by("kind").agg(pl.col("found").mean()).sort("kind")
    keeper = d.select(pl.col("uid").alias("dup_of"), pl.col("row").alias("keeper"))
    removed = (
        d.filter(pl.col("dup_of").is_not_null()).join(keeper, on="dup_of").join(t.select("row", "family"), on="row")
    )
    removed = removed.join(
        t.select(pl.col("row").alias("keeper"), pl.col("family").alias("keeper_family")), on="keeper"
    )
    wrong = removed.filter(pl.col("family") != pl.col("keeper_family")).height
    return {
        "recall": round(float(found["found"].mean()), 4),
        "recall_by_kind": {k: round(v, 4) for k, v in by_kind.iter_rows()},
        "removed": removed.height,
        "wrongly_removed": wrong,
    }


def same(a: Path, b: Path) -> bool:
    return pq.read_table(a).equals(pq.read_table(b))


def subset_check(k: int, n: int = 20_000) -> dict:
    """The banded search against all pairs: half planted near copies, half their sources."""
    pool, truth = next(iter(chunks(200_000)))
    t = truth.to_pandas()
    near = t[t.kind == "near"].head(n // 2)
    h = pool.column("phash").to_numpy()
    sub, _ = distinct(np.concatenate([h[near.row.to_numpy()], h[near.source.to_numpy()]]))
    t1 = time.perf_counter()
    ref = brute_force_pairs(sub, k)
    t_brute = time.perf_counter() - t1
    t2 = time.perf_counter()
    i, j, _ = near_pairs(sub, NearConfig(k=k))
    t_band = time.perf_counter() - t2
    got = set(zip(i.tolist(), j.tolist(), strict=True))
    return {
        "n": len(sub),
        "brute_force_pairs": len(ref),
        "recall": round(len(got & ref) / max(len(ref), 1), 4),
        "precision": round(len(got & ref) / max(len(got), 1), 4),
        "brute_force_s": round(t_brute, 2),
        "banded_s": round(t_band, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--anchor-max", type=int, default=10_000_000, help="largest size the in-memory path runs at")
    ap.add_argument("--partition-rows", type=int, default=250_000)
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--work", default="/tmp/clip-tiers-bench-dedup")
    ap.add_argument("--out", default="bench/results/dedup.json")
    ap.add_argument("--engines", default="partitioned,memory", help="also: partitioned-ray (as a build runs it)")
    ap.add_argument("--child", choices=["memory", "partitioned", "partitioned-ray"])
    ap.add_argument("--pool")
    ap.add_argument("--decisions")
    args = ap.parse_args()
    cfg = DedupConfig(near_k=args.k, semantic=False, partition_rows=args.partition_rows)
    if args.child:
        engine_cfg = cfg if args.child != "memory" else replace(cfg, partition_rows=0)
        return child(args.child, args.pool, args.decisions, engine_cfg)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = {"k": args.k, "partition_rows": args.partition_rows, "sizes": {}}
    for n in args.sizes:
        t0 = time.perf_counter()
        pool, truth = write_pool(n, work)
        row = {"pool_mb": round(pool.stat().st_size / 2**20), "generate_s": round(time.perf_counter() - t0, 1)}
        engines = [e for e in args.engines.split(",") if e != "memory" or n <= args.anchor_max]
        for engine in engines:
            out = work / f"decisions_{engine}_{n}.parquet"
            row[engine] = run_engine(engine, pool, out, cfg)
            if "error" not in row[engine]:
                row[engine].update(score(out, truth))
            print(f"{n:>11,} {engine:>11}: {json.dumps(row[engine])}", flush=True)
        if all("error" not in row[e] for e in engines) and len(engines) >= 2:
            first = work / f"decisions_{engines[0]}_{n}.parquet"
            row["identical"] = all(same(first, work / f"decisions_{e}_{n}.parquet") for e in engines[1:])
            if "memory" in engines and "partitioned" in engines:
                m, p = row["memory"], row["partitioned"]
                row["time_ratio_partitioned_over_memory"] = round(p["seconds"] / m["seconds"], 2)
                row["rss_ratio_partitioned_over_memory"] = round(p["peak_rss_mb"] / m["peak_rss_mb"], 2)
            print(f"{n:>11,} identical decisions ({', '.join(engines)}): {row['identical']}", flush=True)
        result["sizes"][str(n)] = row
    result["recall_bound_by_distance"] = {d: round(recall_bound(d, NearConfig(k=args.k)), 4) for d in range(1, 7)}
    result["subset_vs_brute_force"] = subset_check(args.k)
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
