"""Benchmark: the dedup task's near-copy verification in its own process against fanned out to Ray tasks.

A build's dedup task is a Ray task; it hands each chunk of candidates to a Ray task on its node
(:func:`curate.core.raypool.fan_out` via :func:`curate.dedup.copies.verifying_with`). This runs the
task as a build does — a Ray task of one CPU, in a Ray of all cores — on the first ``--rows`` images of
``bench/near_scale.py``'s pool (64 px synthetic web, built and cached under --work if missing), once
verifying in the task itself and once fanned out (the neighbour search's cells too), alternated
``--repeats`` times (``--modes fanned``: only the build's way, e.g. to compare two commits from a
worktree of each). Reported: wall time, seconds in the neighbour search and per phase, the machine's busy
CPU-seconds over the run (from /proc/stat: run it on an idle machine), the CPU-seconds and page faults
of the Ray workers that did most of the work, and whether the decisions are the same. With ``--nodes N``
the Ray is a cluster of N nodes on this machine (``ray.cluster_utils.Cluster``, the cores split between
them): the jobs spread over the nodes, and each node other than the task's reads replicas of its spilled
files (:mod:`curate.core.nodefiles`); reported too, the jobs each node ran and the bytes pulled. Writes
bench/results/verify_ray.json.

    .venv/bin/python bench/verify_ray.py [--urls 500000] [--rows 100000] [--repeats 1] [--modes here,fanned]
        [--nodes 1]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.procmon import ray_workers  # noqa: E402


def busy_cpu_s() -> float:
    """CPU-seconds every core has spent busy since boot (all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def decide(table_path: str, thumb_path: str, rows: int, fan_out: bool) -> dict:
    """The dedup task's decisions over the first ``rows`` images (run as a Ray task): their digest, the
    seconds in the neighbour search and per phase."""
    import tempfile

    import pyarrow.parquet as pq

    from curate.core import nodefiles, raypool, schema
    from curate.dedup import DedupConfig, neighbours
    from curate.dedup.copies import verifying_with
    from curate.dedup.partitioned import deduplicate_partitioned
    from curate.dedup.thumbstore import Spilled

    search, stats = [0.0], {}
    plain = neighbours._search

    def timed(*args):
        t0 = time.perf_counter()
        try:
            return plain(*args)
        finally:
            search[0] += time.perf_counter() - t0

    neighbours._search = timed
    table = pq.read_table(table_path).slice(0, rows)
    store = Spilled(Path(thumb_path), np.uint8, (schema.THUMB_BYTES,), rows)
    nodes: dict[str, int] = {}
    pulled: dict[str, int] = {}

    def traced(fn, jobs):  # raypool.fan_out, counting the jobs each node ran and what it pulled to run them
        for out, node, got in raypool.fan_out(where, ((fn, *job) for job in jobs)):
            nodes[node] = nodes.get(node, 0) + 1
            pulled.update(got)
            yield out

    with tempfile.TemporaryDirectory(prefix="clip-tiers-verify-ray-") as work:
        try:
            with verifying_with(traced if fan_out else None):
                out = deduplicate_partitioned(
                    table, DedupConfig(), workdir=work, thumbs=(np.arange(rows), store, work), stats=stats
                )
        finally:
            nodefiles.drop(work)  # the vectors' replicas
            nodefiles.drop(Path(thumb_path).parent)  # the thumbnails'
    decided = out.select(["dup_of", "dup_kind"]).to_pydict()
    digest = hashlib.sha256(json.dumps(decided).encode()).hexdigest()[:16]
    short = {k[:8]: v for k, v in sorted(nodes.items(), key=lambda kv: -kv[1])}
    return {
        "digest": digest,
        "search_s": round(search[0], 1),
        "phases_s": stats["seconds"],
        "jobs_per_node": short,
        "pulled_mb": round(sum(pulled.values()) / 1e6, 1),
    }


def where(fn, *job):
    """``fn(*job)``, this node's id, and the replicas on it of the files the job reads (path: bytes)."""
    from curate.core import nodefiles

    out, spilled = fn(*job), job[0]
    node = nodefiles.this_node()
    got = {}
    if spilled.origin != node:
        d = nodefiles.replica_dir(str(Path(spilled.path).parent), spilled.origin)
        got = {f"{node}:{p}": p.stat().st_size for p in d.glob("*") if p.suffix in (".u8", ".f32")}
    return out, node, got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--urls", type=int, default=500_000, help="the near_scale pool to take rows from")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", default="/tmp/clip-tiers-near")
    ap.add_argument("--modes", default="here,fanned", help="here: verified in the task; fanned: on Ray tasks")
    ap.add_argument("--nodes", type=int, default=1, help="a Ray cluster of this many nodes on this machine")
    args = ap.parse_args()
    modes = [m == "fanned" for m in args.modes.split(",")]

    from bench.near_scale import pool_for
    from curate.core.runtime import ray_session

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    table_path, thumb_path = pool_for(work, args.urls)
    import ray

    results = []
    with cluster(args.nodes) as address, ray_session(address=address, num_cpus=None if address else os.cpu_count()):
        task = ray.remote(num_cpus=1)(decide)
        for _ in range(args.repeats):
            for fan_out in modes:
                w0, c0, t0 = ray_workers(), busy_cpu_s(), time.perf_counter()
                got = ray.get(task.remote(str(table_path), str(thumb_path), args.rows, fan_out))
                r = {"fan_out": fan_out, "wall_s": round(time.perf_counter() - t0, 1), **got}
                spent = [(c - w0.get(p, (0, 0))[0], f - w0.get(p, (0, 0))[1]) for p, (c, f) in ray_workers().items()]
                busiest = sorted(spent, reverse=True)[:3]
                r["busiest_workers"] = [{"cpu_s": round(c, 1), "page_faults": f} for c, f in busiest]
                r.update(busy_cpu_s=round(busy_cpu_s() - c0, 1), load_after=os.getloadavg()[0])
                results.append(r)
                print(json.dumps(r), flush=True)
    digests = {r["digest"] for r in results}
    print(f"decisions identical: {len(digests) == 1}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"rows": args.rows, "cores": os.cpu_count(), "nodes": args.nodes, "runs": results}
    (out / "verify_ray.json").write_text(json.dumps(summary))


@contextlib.contextmanager
def cluster(nodes: int):
    """A Ray cluster of ``nodes`` nodes on this machine, the cores split between them; None for one node
    (a plain ``ray.init`` of all cores, as a build starts)."""
    if nodes <= 1:
        yield None
        return
    from ray.cluster_utils import Cluster

    from curate.core.runtime import quiet_environment

    quiet_environment()
    per = max(1, (os.cpu_count() or 1) // nodes)
    node = {"num_cpus": per, "object_store_memory": 1 << 30, "include_dashboard": False}
    c = Cluster(initialize_head=True, connect=False, head_node_args=node)
    for _ in range(nodes - 1):
        c.add_node(num_cpus=per, object_store_memory=1 << 30)
    c.wait_for_nodes()
    try:
        yield c.address
    finally:
        c.shutdown()


if __name__ == "__main__":
    main()
