"""Benchmark: pulling a node's scratch file to another node (:mod:`curate.core.nodefiles`) against ``cp``.

A dedup task's search and verification jobs that Ray places on another node read replicas of its
spilled thumbnails and vectors, pulled once per node in ranges by Ray tasks on the origin node. This
starts a Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``), writes a file of
``--mb`` MB of random bytes from the driver (on the head node), and times, alternated ``--repeats``
times: ``cp`` of the file to another name (the anchor: the same bytes moved on the same disk) and the
pull of it from a task on the other node, for each ``--range-mb`` setting (bytes a pull task returns).
On one machine the pull's cost is Ray's (object store, serialisation), not a network's: on a cluster,
the slower of the two bounds it. Writes bench/results/replicas.json.

    .venv/bin/python bench/replicas.py [--mb 512] [--repeats 2] [--range-mb 4,16,64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pull(path: str, origin: str, size: int, range_bytes: int) -> tuple[float, str]:
    """Seconds to pull ``path`` here (a replica, removed after), and this node's id."""
    from curate.core import nodefiles

    nodefiles.RANGE = range_bytes
    t0 = time.perf_counter()
    local = nodefiles.local(Path(path), origin, size)
    took = time.perf_counter() - t0
    if local == Path(path) or local.stat().st_size != size:
        raise RuntimeError(f"no replica pulled: {local}")
    nodefiles.remove_replicas(str(Path(path).parent), origin)
    return took, nodefiles.this_node()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--range-mb", default="4,16,64")
    args = ap.parse_args()

    import numpy as np
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from bench.verify_ray import cluster
    from curate.core import nodefiles
    from curate.core.runtime import ray_session

    size = args.mb << 20
    runs = []
    with cluster(2) as address, ray_session(address=address), tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rows.u8"
        rng = np.random.default_rng(0)
        with open(path, "wb") as f:
            for _ in range(args.mb):
                f.write(rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())
        origin = nodefiles.this_node()
        other = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != origin)
        place = NodeAffinitySchedulingStrategy(node_id=other, soft=False)
        task = ray.remote(num_cpus=1, scheduling_strategy=place)(pull)
        for _ in range(args.repeats):
            subprocess.run(["sync"], check=True)
            t0 = time.perf_counter()
            subprocess.run(["cp", str(path), str(path) + ".cp"], check=True)
            subprocess.run(["sync"], check=True)
            cp_s = time.perf_counter() - t0
            os.unlink(str(path) + ".cp")
            r = {"cp_s": round(cp_s, 2), "cp_mb_s": round(args.mb / cp_s)}
            for mb in (int(x) for x in args.range_mb.split(",")):
                took, node = ray.get(task.remote(str(path), origin, size, mb << 20))
                assert node == other
                r[f"pull_{mb}mb_s"] = round(took, 2)
                r[f"pull_{mb}mb_per_cp"] = round(cp_s / took, 2)
            runs.append(r)
            print(json.dumps(r), flush=True)
        nodefiles.drop(d)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"mb": args.mb, "cores": os.cpu_count(), "inflight": nodefiles.INFLIGHT, "runs": runs}
    (out / "replicas.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
