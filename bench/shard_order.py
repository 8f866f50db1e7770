"""Benchmark: what each band shard order (``[shards] order``) reads from a bucket, and how it mixes, on a
kept build — counted from the shard plan and the raw tars' index, not timed.

The shard stage on object storage reads each band shard's images by ranged GETs of the raw tars,
neighbours closer than ``MAX_GAP`` in one GET (:func:`curate.core.tarstream.coalesce`, as
:func:`curate.shard.bandshard._images` does). Per order, every band shard counted exactly: the raw tars
it draws from, the share of the URL list its samples span (0: one neighbourhood of the list, as a
sorted list's domain; 1: all of it), the GETs its images take and the bytes they read, as a multiple of
the image bytes wanted (``overread``: the other samples and bands read along). ``--gaps`` gives the
same figures for other merge gaps than the writer's, so a change of it can be weighed before it is made:
the bench counts requests and bytes, which no local S3 stand-in prices as a bucket does (moto's cost
is its Python per request, a bucket's a round trip per request and bandwidth per byte).
Writes bench/results/shard_order.json.

    .venv/bin/python bench/scale.py --sizes 200000 --keep --shard-order raw
    .venv/bin/python bench/shard_order.py /tmp/clip-tiers-scale/build-200000 [--gaps 16384,131072,1048576]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from curate.core.runtime import quiet_environment  # noqa: E402

quiet_environment()


def located_shards(build: Path, order: str, shard_size: int):
    """(row numbers in ``samples.parquet``, located rows) of every band shard the build's bands cut in
    ``order`` make."""
    from curate.core import batches, runner
    from curate.select.bands import FILTERED, band_names
    from curate.select.samples import METADATA
    from curate.shard import ShardConfig, bandshard, writer
    from pipelines.build import stored_config

    samples = batches.read_columns(str(build / "samples.parquet"), METADATA)
    bcfg = stored_config(build).bands
    bands = band_names(bcfg) + ([FILTERED] if bcfg.filtered_band else [])
    cfg = ShardConfig(shard_size=shard_size, order=order)
    todo, _, _ = writer._plan_units(str(build / "no-tiers-here"), samples, bands, cfg)
    packer = writer._located(str(build / "raw"), samples, todo, runner.Executor("threads", workers=2))
    return samples.num_rows, [(u.args[1], bandshard.unpack(packer(u).args[1])) for u in todo]


def figures(n: int, shards, gaps: list[int]) -> dict:
    import pyarrow.compute as pc

    from curate.core.tarstream import coalesce
    from curate.shard.bandshard import MAX_BLOCK

    tars, spans = [], []
    gets, read = dict.fromkeys(gaps, 0), dict.fromkeys(gaps, 0)
    wanted = 0
    for idx, rows in shards:
        spans.append((idx.max() - idx.min()) / n)  # samples.parquet is in input order
        col = rows.column("shard")
        names = pc.unique(col).to_pylist()
        tars.append(len(names))
        for s in names:
            at = rows.filter(pc.equal(col, s))
            offsets, sizes = at.column("offset").to_numpy(), at.column("size").to_numpy()
            wanted += int(sizes.sum())
            for g in gaps:
                blocks, _ = coalesce(offsets, sizes, g, MAX_BLOCK)
                gets[g] += len(blocks)
                read[g] += sum(b for _, b in blocks)
    return {
        "shards": len(shards),
        "raw_tars_per_shard": round(float(np.mean(tars)), 2),
        "list_span_per_shard": round(float(np.mean(spans)), 4),
        "image_mb": round(wanted / 1e6, 1),
        "by_gap": {
            str(g): {
                "gets_per_shard": round(gets[g] / max(len(shards), 1), 1),
                "read_mb": round(read[g] / 1e6, 1),
                "overread": round(read[g] / max(wanted, 1), 2),
            }
            for g in gaps
        },
    }


def main() -> int:
    from curate.shard.bandshard import MAX_GAP
    from curate.shard.writer import ORDERS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", type=Path)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--gaps", default=f"16384,131072,{MAX_GAP}", help="merge gaps to count, bytes")
    args = ap.parse_args()
    gaps = sorted({int(g) for g in args.gaps.split(",")})
    result = {"build": str(args.build), "shard_size": args.shard_size, "writer_gap": MAX_GAP, "orders": {}}
    for order in ORDERS:
        n, shards = located_shards(args.build, order, args.shard_size)
        result["rows"] = n
        r = result["orders"][order] = figures(n, shards, gaps)
        print(
            f"{order:<9} {r['shards']} shards: {r['raw_tars_per_shard']} raw tars and "
            f"{r['list_span_per_shard']:.1%} of the list a shard; {r['image_mb']} MB of images",
            flush=True,
        )
        for g, f in r["by_gap"].items():
            mark = "  (the writer's)" if int(g) == MAX_GAP else ""
            print(
                f"  gap {int(g) >> 10:>5} KiB: {f['gets_per_shard']:>7} GETs a shard, "
                f"{f['read_mb']:>9} MB read ({f['overread']}x){mark}",
                flush=True,
            )
    path = ROOT / "bench" / "results" / "shard_order.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
