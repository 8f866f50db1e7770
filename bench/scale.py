"""Benchmark: `tiers build` at growing pool sizes — wall time per stage, peak RSS of every process, local vs S3.

For each size (default 20,000 and 200,000 URLs) a synthetic web is generated (cached under --work) and
served on 127.0.0.1, and `tiers build` runs on it as a user would (a fresh process, which starts its own
Ray), watched from /proc (:mod:`bench.procmon`): the driver's peak RSS, the largest Ray worker's, CPU
seconds of the whole process tree, and per stage the largest RSS a worker was sampled at (a reused
worker's peak mixes its tasks; decide's is the dedup task's). Stage times come from the build's own
progress lines. Memory must stay flat in pool size: the ratio of the largest to the smallest size's
peak RSS, per process kind, is printed (target <= 1.3). With ``--s3`` every size is built again with
``--out s3://...`` on moto's S3 server (in this process, on 127.0.0.1), and the wall-time ratio S3 /
local is printed. ``--shard-order raw`` cuts the bands in raw-tar order (``[shards] order``), whose band
shards read a bucket in a few ranged GETs each.
Writes bench/results/scale.json.

    .venv/bin/python bench/scale.py [--sizes 20000,200000] [--s3] [--work /tmp/clip-tiers-scale] [--shard-order raw]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.procmon import TreeStats, peak_rss, rss, run_watched  # noqa: E402

CONFIG = """
[download]
image_size = 64
timeout = 2
url_deadline = 10
samples_per_shard = 10000
threads = 32
[filters]
preset = "synthetic-basic"
image_size = 64
[shards]
shard_size = 1000
"""
STAGE = re.compile(r"\[(\d)/5\] .*?\((\d+) s\)")
STEP = re.compile(r"\[(\d)/5\] ")  # any of the build's step lines: [1/5] (its inputs read) has no time
NAMES = {2: "download", 3: "annotate", 4: "decide", 5: "shard"}


def web_for(work: Path, n: int) -> Path:
    from synthweb import WebConfig, build

    root = work / f"web-{n}"
    if not (root / "urls.parquet").exists():
        t0 = time.perf_counter()
        shutil.rmtree(root, ignore_errors=True)
        # 64 px images (the download size): rendering 256 px ones would take longer than the build.
        build(root, WebConfig(n=n, seed=0, min_side=64, max_side=64, eval_per_concept=1, retrieval_pairs=2))
        print(f"  generated a {n:,}-URL web in {time.perf_counter() - t0:.0f} s", flush=True)
    return root


def one_build(urls: Path, out: str, config: Path) -> dict:
    stages: dict[str, float] = {}
    driver_by_stage: dict[str, int] = {}  # the driver's peak RSS (MB) when each stage ends: which stage grew it
    held_by_stage: dict[str, int] = {}  # its RSS then: what the stages so far left it holding
    last = [0.0]
    tail: list[str] = []
    driver = [0]
    watched = TreeStats(phase="plan")  # the stage running: a stage's line comes when it ends

    def on_line(t: float, line: str) -> None:
        tail[:] = (tail + [line])[-20:]
        step = STEP.search(line)
        if step:
            watched.phase = NAMES.get(int(step.group(1)) + 1, "end")
        m = STAGE.search(line)
        if m and int(m.group(1)) in NAMES:
            stages[NAMES[int(m.group(1))]] = round(t - last[0], 1)
            driver_by_stage[NAMES[int(m.group(1))]] = round(peak_rss(driver[0]) / 2**20)
            held_by_stage[NAMES[int(m.group(1))]] = round(rss(driver[0]) / 2**20)
            last[0] = t

    cmd = [sys.executable, "-m", "pipelines.cli", "build", str(urls), "--out", out, "--config", str(config)]
    cmd += ["--allow-private-hosts", "loopback", "--no-progress"]
    # Ray runs its workers at nice 15 by default: on a shared machine the timed build's workers would
    # then queue behind everyone's background jobs. The bench times the build at its driver's priority.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"}
    rc, wall, stats, pid = run_watched(
        cmd, 1.0, on_line, lambda p: driver.__setitem__(0, p), stats=watched, cwd=ROOT, env=env
    )
    if rc != 0:
        raise SystemExit(f"tiers build {out} failed with exit {rc}:\n" + "\n".join(tail))
    worker_cmd, worker_peak = stats.largest_worker(pid)
    return {
        "out": out,
        "wall_s": round(wall, 1),
        "stages_s": stages,
        "driver_peak_mb": round(stats.driver_peak(pid) / 2**20),
        "driver_peak_mb_by_stage_end": driver_by_stage,
        "driver_rss_mb_at_stage_end": held_by_stage,
        "largest_worker_peak_mb": round(worker_peak / 2**20),
        "largest_worker": worker_cmd.split(" ")[0],
        # Per stage, the largest RSS a Ray worker was sampled at (every second) while it ran: in decide,
        # the dedup task's (its worker's peak above mixes in the download tasks it ran before).
        "worker_rss_mb_by_stage": {k: round(v / 2**20) for k, v in watched.worker_rss_by_phase().items()},
        # ... its anonymous part (no file pages: libraries, mapped raw tars), and the most one worker that
        # ran before the stage grew within it: what the stage's tasks added.
        "worker_anon_mb_by_stage": {k: round(v / 2**20) for k, v in watched.worker_anon_by_phase().items()},
        # ... its file pages (libraries, mapped files) and shared memory (Ray's object store) apart,
        "worker_file_mb_by_stage": {k: round(v / 2**20) for k, v in watched.worker_file_by_phase().items()},
        "worker_shmem_mb_by_stage": {k: round(v / 2**20) for k, v in watched.worker_shmem_by_phase().items()},
        "worker_growth_mb_by_stage": {k: round(v / 2**20) for k, v in watched.worker_growth_by_phase().items()},
        # ... and the stages the worker with each stage's largest RSS had run tasks in before it.
        "largest_worker_earlier_stages": watched.largest_worker_history(),
        "processes": len(stats.peak),
        "cpu_s": round(stats.cpu_seconds, 1),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s3_endpoint():
    """moto's S3 server in a process of its own (in this one it would share a GIL with the web server)."""
    import subprocess

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )  # fmt: skip
    import s3fs

    for _ in range(100):
        try:
            s3fs.S3FileSystem(skip_instance_cache=True).mkdir("scale")
            break
        except OSError:
            time.sleep(0.2)
    return server


def _serve(root: str, slow: float, queue) -> None:
    import threading

    from synthweb import WebServer

    with WebServer(root, slow_seconds=slow) as web:
        queue.put(str(web.urls_path))
        threading.Event().wait()


def web_server(root: Path, slow: float = 4):
    """The synthetic web served from a process of its own; returns (process, urls path)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(str(root), slow, queue), daemon=True)
    proc.start()
    return proc, Path(queue.get(timeout=300))


def report(results: list[dict]) -> dict:
    out = {}
    for where in ("local", "s3"):
        rows = sorted((r for r in results if r["where"] == where), key=lambda r: r["n"])
        if len(rows) >= 2:
            small, big = rows[0], rows[-1]
            out[f"{where}_driver_peak_ratio"] = round(big["driver_peak_mb"] / small["driver_peak_mb"], 3)
            out[f"{where}_worker_peak_ratio"] = round(
                big["largest_worker_peak_mb"] / small["largest_worker_peak_mb"], 3
            )
            for figure in ("rss", "anon"):
                a, b = small.get(f"worker_{figure}_mb_by_stage", {}), big.get(f"worker_{figure}_mb_by_stage", {})
                out[f"{where}_worker_{figure}_ratio_by_stage"] = {
                    k: round(b[k] / a[k], 3) for k in a if a[k] and k in b
                }
    for n in sorted({r["n"] for r in results}):
        pair = {r["where"]: r for r in results if r["n"] == n}
        if "s3" in pair and "local" in pair:
            out[f"s3_over_local_wall_{n}"] = round(pair["s3"]["wall_s"] / pair["local"]["wall_s"], 3)
    return out


def _write(path: str, results: list[dict]) -> dict:
    summary = report(results)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"cores": os.cpu_count(), "runs": results, "summary": summary}, indent=2))
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,200000")
    ap.add_argument("--s3", action="store_true", help="also build into s3:// on moto's server")
    ap.add_argument("--only-s3", action="store_true", help="only the s3:// builds")
    ap.add_argument("--work", default="/tmp/clip-tiers-scale")
    ap.add_argument("--keep", action="store_true", help="keep the build directories")
    ap.add_argument("--shard-order", choices=["shuffled", "raw"], default="shuffled", help="[shards] order")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = work / "build.toml"
    config.write_text(CONFIG + f'order = "{args.shard_order}"\n')
    server = s3_endpoint() if args.s3 or args.only_s3 else None
    results = []
    print(f"tiers build at scale on {os.cpu_count()} cores (load average {os.getloadavg()[0]:.2f})", flush=True)
    try:
        for n in (int(x) for x in args.sizes.split(",")):
            root = web_for(work, n)
            web, urls = web_server(root)
            try:
                targets = [] if args.only_s3 else [("local", str(work / f"build-{n}"))]
                targets += [("s3", f"s3://scale/build-{n}")] if server else []
                for where, out in targets:
                    if where == "local":
                        shutil.rmtree(out, ignore_errors=True)
                    load = os.getloadavg()[0]
                    r = {"n": n, "where": where, "shard_order": args.shard_order, "load_avg_before": round(load, 2)}
                    r.update(one_build(urls, out, config))
                    r["load_avg_after"] = round(os.getloadavg()[0], 2)
                    results.append(r)
                    _write(args.out, results)  # as it goes: a long run stopped early keeps what it measured
                    print(
                        f"  {n:>9,} {where:<5} {r['wall_s']:>7.1f} s  stages {r['stages_s']}  driver peak "
                        f"{r['driver_peak_mb']} MB  largest worker {r['largest_worker_peak_mb']} MB "
                        f"({r['largest_worker']}; by stage {r['worker_rss_mb_by_stage']}, anonymous "
                        f"{r['worker_anon_mb_by_stage']})  cpu {r['cpu_s']} s  "
                        f"load {load:.1f}",
                        flush=True,
                    )
                    if not args.keep and where == "local":
                        shutil.rmtree(out, ignore_errors=True)
            finally:
                web.terminate()
    finally:
        if server is not None:
            server.terminate()
    print(json.dumps(_write(args.out, results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
