"""Benchmark: band sharding throughput vs `cp -r` of the same raw shards, in the same run.

Raw shards use img2dataset's layout (<key>.jpg/.txt/.json per sample, 10,000 samples per shard),
filled with real COCO photos resized as a DataComp download is (longest side 512, JPEG q95) when
../shared/data is there, else with synthetic-web images (`--source synthetic --image-side 256`:
small files, where per-sample overhead dominates); the sample table puts them in default bands.
Both sides read warm page cache; they run alternately, each after a sync, and each keeps its best of
5 (the median of the pairs' ratios is printed too). Each sharding run does both passes (the raw tars
are indexed again, then the band shards written); with ``--kept-index`` the index stays from the first
run, as in a build, where the annotate stage has written it. ``--executor tasks`` writes through Ray tasks, one
process per core (Ray started before the timing, as a build has it running); ``threads`` in this
process. Prints MB/s and samples/s for both and the ratio (target >= 0.5). Writes
bench/results/reshard.json.

    .venv/bin/python bench/reshard.py [--n 20000] [--image-side 256] [--executor tasks|threads] [--kept-index]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.procmon, run as a script from anywhere
from curate.core.tarstream import TarWriter  # noqa: E402
from curate.select.bands import assign  # noqa: E402
from curate.shard.writer import ShardConfig, write_tiers  # noqa: E402
from synthweb import WebConfig, build  # noqa: E402

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_mini" / "coco_mini_pairs.parquet"


def synthetic_items(root: Path, n: int, side: int):
    """(image bytes, ext, caption) from a synthetic web rendered at ``side`` px."""
    web = root / "web"
    build(
        web,
        WebConfig(
            n=n, seed=0, mix={"clean": 1.0}, min_side=side, max_side=side, eval_per_concept=1, retrieval_pairs=1
        ),
    )
    by_path = {r["path"]: r for r in pq.read_table(web / "routes.parquet").to_pylist()}
    blobs = (web / "blobs.bin").read_bytes()
    exts = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
    for u in pq.read_table(web / "urls.parquet").to_pylist():
        r = by_path["/img/" + u["url"].rsplit("/img/", 1)[1]]
        yield blobs[r["offset"] : r["offset"] + r["length"]], exts[r["content_type"]], u["caption"]


def coco_items(n: int, side: int):
    """Real COCO photos resized as DataComp's download does (longest side ``side``, JPEG q95), repeated to n."""
    from PIL import Image

    t = pq.read_table(COCO, columns=["image", "captions"]).to_pylist()
    encoded = []
    for r in t:
        img = Image.open(io.BytesIO(r["image"])).convert("RGB")
        img.thumbnail((side, side))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95)
        encoded.append((buf.getvalue(), r["captions"][0]))
    for i in range(n):
        data, cap = encoded[i % len(encoded)]
        yield data, "jpg", cap


def make_raw(root: Path, items, per_shard: int) -> pa.Table:
    raw = root / "build" / "raw"
    raw.mkdir(parents=True)
    rows, f, w = [], None, None
    for i, (data, ext, caption) in enumerate(items):
        if i % per_shard == 0:
            if w:
                w.close()
                f.close()
            shard = f"{i // per_shard:05d}"
            f = open(raw / f"{shard}.tar", "wb")
            w = TarWriter(f.fileno())
        key = f"{shard}{i % per_shard:04d}"
        w.add(f"{key}.{ext}", data)
        w.add(f"{key}.txt", caption.encode())
        w.add(f"{key}.json", json.dumps({"key": key, "caption": caption}).encode())
        rows.append(
            {"uid": f"{i:012x}", "url": f"http://127.0.0.1/{i}", "caption": caption, "shard": shard, "key": key}
        )
    w.close()
    f.close()
    t = pa.Table.from_pylist(rows)
    q = np.random.default_rng(0).random(len(rows)).astype(np.float32)
    bands = assign(t.column("uid").to_numpy(zero_copy_only=False), q)
    return t.append_column("quality", pa.array(q)).append_column("band", pa.array(bands.tolist(), pa.string()))


def tree_cpu() -> float:
    """CPU seconds used so far by this process, its Ray workers (descendants) and reaped children (cp)."""
    import resource

    from bench.procmon import _sample, _tree

    total = sum(s[2] for p in _tree(os.getpid())[1:] if (s := _sample(p)) is not None)
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of every process involved)."""
    # Flush the last run's dirty pages first: otherwise a run pays for its predecessor's writeback.
    os.sync()
    c0, t0 = tree_cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, tree_cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--source", choices=["synthetic", "coco"], default="coco" if COCO.exists() else "synthetic")
    ap.add_argument("--image-side", type=int, default=512, help="longest side (DataComp downloads at 512)")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5, help="alternating (cp, reshard) pairs; best of each is reported")
    ap.add_argument("--executor", choices=["tasks", "threads"], default="tasks")
    ap.add_argument("--kept-index", action="store_true", help="pass 2 only: the raw index kept, as in a build")
    ap.add_argument("--out", default="bench/results/reshard.json")
    args = ap.parse_args()
    if args.executor == "tasks":
        from curate.core.runtime import ray_session

        os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default 15 (see bench/scale.py)
        with ray_session(num_cpus=os.cpu_count()):
            return run(args)
    return run(args)


def run(args) -> None:

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = (
            coco_items(args.n, args.image_side)
            if args.source == "coco"
            else synthetic_items(root, args.n, args.image_side)
        )
        samples = make_raw(root, items, 10_000)
        raw = root / "build" / "raw"
        raw_bytes = sum(p.stat().st_size for p in raw.glob("*.tar"))

        def cp():
            dest = root / "copy"
            shutil.rmtree(dest, ignore_errors=True)
            subprocess.run(["cp", "-r", str(raw), str(dest)], check=True)

        def reshard():
            shutil.rmtree(root / "build" / "tiers", ignore_errors=True)
            if not args.kept_index:
                shutil.rmtree(raw / "_index", ignore_errors=True)
            cfg = ShardConfig(shard_size=args.shard_size, executor=args.executor)
            write_tiers(root / "build", samples, shard_cfg=cfg, progress=False)

        cp()  # warm the page cache for both
        reshard()
        # Alternate the two, so both see the same moments of this shared machine; keep each one's best.
        runs = [(timed(cp), timed(reshard)) for _ in range(args.repeats)]
        pairs = [(c[0], o[0]) for c, o in runs]
        cpu_pairs = [(c[1], o[1]) for c, o in runs]
        t_cp, t_ours = min(p[0] for p in pairs), min(p[1] for p in pairs)
        c_cp, c_ours = min(p[0] for p in cpu_pairs), min(p[1] for p in cpu_pairs)
        out_bytes = sum(p.stat().st_size for p in (root / "build" / "tiers").rglob("*.tar"))

    result = {
        "samples": args.n,
        "source": args.source,
        "image_side": args.image_side,
        "executor": args.executor,
        "kept_index": args.kept_index,
        "load_avg": os.getloadavg()[0],
        "raw_mb": round(raw_bytes / 1e6, 1),
        "cp_s": round(t_cp, 3),
        "reshard_s": round(t_ours, 3),
        "cp_mb_per_s": round(raw_bytes / 1e6 / t_cp, 1),
        "reshard_mb_per_s": round(out_bytes / 1e6 / t_ours, 1),
        "reshard_samples_per_s": round(args.n / t_ours),
        "ratio_vs_cp": round(t_cp / t_ours, 3),
        "ratio_median_of_pairs": round(float(np.median([c / o for c, o in pairs])), 3),
        # Per CPU-second (this machine is shared): cp's CPU time over ours, best of each.
        "cp_cpu_s": round(c_cp, 3),
        "reshard_cpu_s": round(c_ours, 3),
        "ratio_per_cpu_s": round(c_cp / c_ours, 3),
        "pairs_s": [[round(c, 3), round(o, 3)] for c, o in pairs],
    }
    print(json.dumps(result, indent=2))
    print(
        f"reshard {args.n:,} samples ({result['raw_mb']} MB): {t_ours:.2f} s vs cp -r {t_cp:.2f} s "
        f"-> ratio {result['ratio_vs_cp']} (target >= 0.5; median of pairs {result['ratio_median_of_pairs']}); "
        f"per CPU-second {result['ratio_per_cpu_s']} ({c_ours:.2f} CPU-s vs cp {c_cp:.2f}); "
        f"load average {result['load_avg']:.1f} on {os.cpu_count()} cores"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
