"""Benchmark: `tiers download` (img2dataset on Ray, with our guards) vs plain img2dataset (its own
multiprocessing distributor) on the same synthetic-web pool served from 127.0.0.1, same settings.

Each side runs as a fresh subprocess and is timed end to end, start-up included (Python, Ray or
the process pool, img2dataset's imports). Both get the same URL list, resize settings (longest side
512, never upscaled, JPEG q95), threads, timeout, shard size and process count. The pool is the
default raw-crawl mix without ``private_address``: plain img2dataset has no address policy and
would try to connect to it. Prints URLs/s and successes/s for both, the ratio (target >= 0.95)
and the success counts, which must match. Writes bench/results/download.json.

    .venv/bin/python bench/download.py [--n 20000] [--web DIR] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, not the one the venv's editable install points at
from synthweb import WebConfig, WebServer, build  # noqa: E402
from synthweb.build import DEFAULT_MIX  # noqa: E402

PY = sys.executable

PLAIN = """
import sys, json
from img2dataset import download
if __name__ == "__main__":
    download(**json.loads(sys.argv[1]))
"""


def settings(args) -> dict:
    return {
        "image_size": 512,
        "resize_mode": "keep_ratio_largest",
        "resize_only_if_bigger": True,
        "encode_format": "jpg",
        "encode_quality": 95,
        "samples_per_shard": args.samples_per_shard,
        "threads": args.threads,
        "timeout": args.timeout,
        "retries": 0,
        "extract_exif": False,
        "compute_hash": "sha256",
    }


def run_plain(urls: Path, out: Path, s: dict, processes: int) -> tuple[float, int, int]:
    kwargs = {
        "url_list": str(urls),
        "output_folder": str(out),
        "input_format": "parquet",
        "url_col": "url",
        "caption_col": "caption",
        "save_additional_columns": ["uid"],
        "output_format": "webdataset",
        "distributor": "multiprocessing",
        "processes_count": processes,
        "thread_count": s["threads"],
        "image_size": s["image_size"],
        "resize_mode": s["resize_mode"],
        "resize_only_if_bigger": s["resize_only_if_bigger"],
        "encode_format": s["encode_format"],
        "encode_quality": s["encode_quality"],
        "number_sample_per_shard": s["samples_per_shard"],
        "timeout": s["timeout"],
        "retries": s["retries"],
        "extract_exif": s["extract_exif"],
        "compute_hash": s["compute_hash"],
        "enable_wandb": False,
    }
    t0 = time.perf_counter()
    subprocess.run(
        [PY, "-c", PLAIN, json.dumps(kwargs)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    dt = time.perf_counter() - t0
    t = pa.concat_tables(pq.read_table(p, columns=["uid", "status"]) for p in sorted(out.glob("*.parquet")))
    return dt, t.num_rows, int(pc.sum(pc.equal(t.column("status"), "success")).as_py() or 0)


def run_tiers(urls: Path, out: Path, s: dict, processes: int) -> tuple[float, int, int]:
    cfg = out.parent / f"{out.name}.toml"
    cfg.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in s.items()))
    cmd = [PY, "-m", "pipelines.cli", "download", str(urls), "--out", str(out), "--config", str(cfg)]
    cmd += ["--allow-private-hosts", "loopback", "--cpus", str(processes), "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    dt = time.perf_counter() - t0
    m = json.loads((out / "raw" / "manifest.json").read_text())
    return dt, m["input_rows"], m["successes"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--web", help="build (or reuse) the synthetic web here (default: a temporary directory)")
    ap.add_argument("--processes", type=int, default=os.cpu_count())
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--samples-per-shard", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=1, help="runs per side, alternating order; best is reported")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "download.json"))
    args = ap.parse_args(argv)
    from curate.core.runtime import quiet_environment

    quiet_environment()

    tmp = Path(tempfile.mkdtemp(prefix="bench-download-"))
    web = Path(args.web) if args.web else tmp / "web"
    mix = {k: v for k, v in DEFAULT_MIX.items() if k != "private_address"}
    cfg = WebConfig(n=args.n, seed=0, mix=mix, eval_per_concept=1, retrieval_pairs=1)
    meta = web / "web.json"
    if not (meta.exists() and json.loads(meta.read_text())["config"]["n"] == args.n):
        t0 = time.perf_counter()
        build(web, cfg)
        print(f"built a {args.n}-URL synthetic web in {time.perf_counter() - t0:.0f} s")
    s = settings(args)
    results: dict[str, list] = {"plain": [], "tiers": []}
    try:
        # slow_seconds: longer than the timeout (so `slow` URLs time out) and short enough that stalled
        # handler threads do not pile up between runs.
        with WebServer(web, slow_seconds=max(10.0, 3 * args.timeout)) as server:
            urls = server.urls_path
            order = ["plain", "tiers"]
            for r in range(args.repeats):
                for side in order if r % 2 == 0 else order[::-1]:
                    out = tmp / f"{side}-{r}"
                    shutil.rmtree(out, ignore_errors=True)
                    fn = run_plain if side == "plain" else run_tiers
                    dt, rows, ok = fn(urls, out, s, args.processes)
                    results[side].append({"seconds": dt, "rows": rows, "successes": ok})
                    print(f"{side:<6} run {r}: {rows} URLs in {dt:.1f} s = {rows / dt:.0f} URLs/s, {ok} successes")
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.web:
            shutil.rmtree(tmp, ignore_errors=True)

    best = {k: min(v, key=lambda x: x["seconds"]) for k, v in results.items()}
    for b in best.values():
        b["urls_per_s"] = b["rows"] / b["seconds"]
        b["samples_per_s"] = b["successes"] / b["seconds"]
    ratio = best["tiers"]["samples_per_s"] / best["plain"]["samples_per_s"]
    match = best["tiers"]["successes"] == best["plain"]["successes"]
    for name, side in (("plain img2dataset", "plain"), ("tiers download", "tiers")):
        b = best[side]
        print(f"{name + ':':<19} {b['samples_per_s']:.0f} samples/s ({b['urls_per_s']:.0f} URLs/s)")
    print(
        f"ratio {ratio:.3f} (target >= 0.95); successes {best['plain']['successes']} vs {best['tiers']['successes']}"
        f" ({'match' if match else 'MISMATCH'})"
    )
    report = {
        "pool": {"urls": args.n, "mix": mix, "seed": 0},
        "settings": s,
        "processes": args.processes,
        "cpus": os.cpu_count(),
        "runs": results,
        "best": best,
        "ratio": ratio,
        "successes_match": match,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0 if match else 1


if __name__ == "__main__":
    sys.exit(main())
