"""Benchmark: the driver's memory while it decides and shards, on a kept build (`tiers retier`), code A/B.

`bench/scale.py --keep` leaves its builds; a 1,000,000-URL one takes most of an hour to build here, while
its decisions and shards take minutes. This bench runs `tiers retier DIR` (decide, then the shard stage;
the dedup task's result is kept, so it is not run again) in a Ray session, as a build runs them, in a
fresh process of each code tree given,
one after the other on the same directory, with ``samples.parquet``, the tiers and the raw tars' index
removed first, so each run writes all of them. Per run: wall time, the driver's peak RSS when decide
ends (its ``decided ...`` line) and at the end (the shard stage's), CPU seconds. The trees' outputs are
compared: ``samples.parquet`` and every band shard byte for byte.
Writes bench/results/retier.json.

    .venv/bin/python bench/retier.py DIR [--tree OLD_CHECKOUT] [--tree NEW_CHECKOUT] [--repeats 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.procmon import peak_rss, run_watched  # noqa: E402

# `tiers retier` inside a Ray session, as `tiers build` runs decide and the shard stage (band shards as Ray
# tasks, not threads in the driver); the allocator chosen first, as the CLI chooses it.
DRIVER = """
import logging, sys
from curate.core.runtime import arrow_allocator, quiet_environment
arrow_allocator(driver=True)
quiet_environment()
logging.basicConfig(level=logging.INFO, format="%(message)s")
from curate.core.runtime import ray_session
from pipelines.build import retier, stored_config
with ray_session(None):
    retier(sys.argv[1], stored_config(sys.argv[1]), progress=False)
"""


def _clear(build: Path) -> None:
    (build / "samples.parquet").unlink(missing_ok=True)
    shutil.rmtree(build / "tiers", ignore_errors=True)
    shutil.rmtree(build / "raw" / "_index", ignore_errors=True)


def _digest(build: Path) -> str:
    """One digest of samples.parquet and every band shard, by relative path."""
    h = hashlib.blake2b(digest_size=12)
    files = [build / "samples.parquet", *sorted((build / "tiers" / "bands").rglob("*.tar"))]
    for f in files:
        h.update(str(f.relative_to(build)).encode())
        with open(f, "rb") as src:
            while chunk := src.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def one(tree: Path, build: Path) -> dict:
    _clear(build)
    driver, at_decided, tail = [0], [0], []

    def on_line(t: float, line: str) -> None:
        tail[:] = (tail + [line])[-20:]
        if "decided " in line and not at_decided[0]:
            at_decided[0] = peak_rss(driver[0])
            print(f"    decided at {t:.0f} s, driver peak so far {at_decided[0] / 2**20:.0f} MB", flush=True)

    cmd = [sys.executable, "-c", DRIVER, str(build)]
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"}
    rc, wall, stats, pid = run_watched(cmd, 0.2, on_line, lambda p: driver.__setitem__(0, p), cwd=tree, env=env)
    if rc != 0:
        raise SystemExit(f"tiers retier {build} ({tree}) failed with exit {rc}:\n" + "\n".join(tail))
    return {
        "tree": str(tree),
        "wall_s": round(wall, 1),
        "driver_peak_mb_at_decided": round(at_decided[0] / 2**20),
        "driver_peak_mb": round(stats.driver_peak(pid) / 2**20),
        "cpu_s": round(stats.cpu_seconds, 1),
        "digest": _digest(build),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", help="a build directory bench/scale.py --keep left")
    ap.add_argument("--tree", action="append", help="a code checkout to run (repeatable; default: this one)")
    ap.add_argument("--repeats", type=int, default=1, help="alternate the trees this many times")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "retier.json"))
    args = ap.parse_args()
    build = Path(args.build).resolve()
    trees = [Path(t).resolve() for t in (args.tree or [str(ROOT)])]
    print(f"tiers retier on {build} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.2f})", flush=True)
    runs = []
    for r in range(args.repeats):
        for tree in trees:
            t0 = time.strftime("%H:%M:%S")
            run = one(tree, build)
            runs.append({**run, "repeat": r, "started": t0, "load_avg_after": round(os.getloadavg()[0], 2)})
            print(
                f"  {tree}: {run['wall_s']} s, driver peak {run['driver_peak_mb_at_decided']} MB at decided, "
                f"{run['driver_peak_mb']} MB in all, cpu {run['cpu_s']} s, outputs {run['digest']}",
                flush=True,
            )
    same = len({r["digest"] for r in runs}) == 1
    print(f"  outputs {'identical' if same else 'DIFFER'} across runs", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"build": str(build), "runs": runs, "identical": same}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
