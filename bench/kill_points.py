"""Benchmark: kill -9 `tiers build` at many points, rerun, and compare with an uninterrupted build.

Serves a synthetic web (every hostile kind included), runs `tiers build` once uninterrupted as the
reference, then for each kill point starts a fresh build, kills it with SIGKILL there, reruns it to
the end and checks that:

- ``samples.parquet`` and ``tiers/manifest.json`` equal the reference's (code version and output
  path aside);
- the shards hold every banded uid exactly once: none lost, none repeated;
- no temporary file or unmarked shard is left behind.

Kill points: every named failpoint (``curate/failpoints.py``; band shards at the first, a middle and
the last one) and timed kills at fractions of the reference's wall time, which land wherever the
build happens to be (download, annotate, dedup, sharding). One more case kills the same build
directory at every failpoint in turn before its final run. Prints a table; writes
bench/results/kill_points.json. Each case costs two builds (about 15-30 s each here).

    .venv/bin/python bench/kill_points.py [--n 600] [--fractions 0.1,0.25,0.4,0.55,0.7,0.85]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, not the one the venv's editable install points at
from curate.core.failpoints import ENV  # noqa: E402
from curate.core.manifest import MANIFEST, TIERS  # noqa: E402
from curate.core.tarstream import index_tar  # noqa: E402
from synthweb import WebConfig, WebServer, build  # noqa: E402

CONFIG = """
[download]
image_size = 64
timeout = 1
url_deadline = 5
samples_per_shard = 100
threads = 8
[filters]
preset = "synthetic-basic"
image_size = 64
[shards]
shard_size = 16
"""


def run_build(out: Path, urls: Path, config: Path, failpoint: str | None = None, kill_after: float | None = None):
    """Run `tiers build`; return (exit code, seconds). SIGKILL at ``failpoint`` or after ``kill_after`` s."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop(ENV, None)
    if failpoint:
        env[ENV] = failpoint
    cmd = [sys.executable, "-m", "pipelines.cli", "build", str(urls), "--out", str(out), "--config", str(config)]
    cmd += ["--allow-private-hosts", "loopback"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)  # the whole build is one process plus Ray's workers
        _, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"tiers build failed with exit {proc.returncode}:\n{err[-3000:]}")
    return proc.returncode, time.perf_counter() - t0


def normalised(out: Path) -> tuple[list[dict], dict]:
    samples = pq.read_table(out / "samples.parquet").to_pylist()
    manifest = json.loads((out / TIERS / MANIFEST).read_text().replace(str(out.resolve()), "OUT"))
    manifest.pop("code_version")
    return samples, manifest


def shard_problems(out: Path, samples: list[dict], manifest: dict) -> list[str]:
    """Uids lost or repeated across the band shards, and leftovers of killed runs."""
    problems = []
    seen: dict[str, int] = {}
    for band in manifest["bands"].values():
        for rel in band["shards"]:
            for stem in index_tar(out / TIERS / rel):
                seen[stem] = seen.get(stem, 0) + 1
    banded = {r["uid"] for r in samples if r["band"] is not None}
    if lost := banded - set(seen):
        problems.append(f"{len(lost)} uids lost")
    if repeated := [u for u, n in seen.items() if n > 1]:
        problems.append(f"{len(repeated)} uids repeated")
    if extra := set(seen) - banded:
        problems.append(f"{len(extra)} uids in shards without a band")
    if leftovers := [str(p.relative_to(out)) for p in out.rglob(".*.tmp")]:
        problems.append(f"temporaries left: {leftovers[:3]}")
    on_disk = {str(p.relative_to(out / TIERS)) for p in (out / TIERS).rglob("*.tar")}
    if unlisted := on_disk - {s for b in manifest["bands"].values() for s in b["shards"]}:
        problems.append(f"shards not in the manifest: {sorted(unlisted)[:3]}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=600, help="URLs in the synthetic web")
    ap.add_argument("--fractions", default="0.1,0.25,0.4,0.55,0.7,0.85", help="timed kills, as fractions of a build")
    ap.add_argument("--out", default="bench/results/kill_points.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root / "web", WebConfig(n=args.n, seed=11, eval_per_concept=1, retrieval_pairs=2))
        config = root / "build.toml"
        config.write_text(CONFIG)
        with WebServer(root / "web", slow_seconds=3) as server:
            urls = server.urls_path
            ref_dir = root / "reference"
            _, ref_s = run_build(ref_dir, urls, config)
            reference = normalised(ref_dir)
            n_shards = sum(len(b["shards"]) for b in reference[1]["bands"].values())
            print(f"reference build: {ref_s:.1f} s, {len(reference[0])} rows, {n_shards} band shards")

            cases = [(f"failpoint {p}", [p], None) for p in ("build:after_download", "build:after_annotate")]
            cases += [("failpoint decide:after_dedup", ["decide:after_dedup"], None)]
            for k in sorted({1, n_shards // 2, n_shards}):
                cases.append((f"failpoint tiers:after_shard@{k}", [f"tiers:after_shard@{k}"], None))
            cases.append(("failpoint tiers:before_manifest", ["tiers:before_manifest"], None))
            for f in (float(x) for x in args.fractions.split(",")):
                cases.append((f"timed kill at {f:.0%} of a build", [None], f * ref_s))
            every = ["build:after_download", "build:after_annotate", "decide:after_dedup"]
            every += [f"tiers:after_shard@{max(1, n_shards // 3)}", "tiers:before_manifest"]
            cases.append(("every failpoint in turn, one directory", every, None))

            results = []
            print(f"{'kill point':46s} {'killed':>6s} {'rerun s':>8s}  result")
            for i, (name, points, after) in enumerate(cases):
                out = root / f"case{i:02d}"
                killed = sum(run_build(out, urls, config, p, after)[0] == -signal.SIGKILL for p in points)
                code, rerun_s = run_build(out, urls, config)
                got = normalised(out)
                problems = [] if got == reference else ["samples.parquet or manifest differ from the reference"]
                problems += shard_problems(out, *got)
                ok = code == 0 and not problems
                row = {"case": name, "kills": killed, "rerun_s": round(rerun_s, 1), "identical": ok}
                results.append({**row, "problems": problems})
                print(f"{name:46s} {killed:6d} {rerun_s:8.1f}  {'identical' if ok else '; '.join(problems)}")
                shutil.rmtree(out)

    healed = sum(r["identical"] for r in results)
    summary = {
        "urls": args.n,
        "reference_s": round(ref_s, 1),
        "cases": len(results),
        "kills": sum(r["kills"] for r in results),
        "identical_after_rerun": healed,
        "results": results,
    }
    print(f"{healed}/{len(results)} cases equal the uninterrupted build after a rerun ({summary['kills']} kills)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    if healed != len(results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
