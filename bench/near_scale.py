"""Benchmark: the dedup task's near-copy search at growing pool sizes, without a build — time and memory.

The decoded images of a synthetic web (``synthweb``, 64 px, the images a `bench/scale.py` build
downloads) are rendered, decoded and annotated as the annotate stage does (thumbnail, pHash, pixel
hash, width, height; cached under --work), then decided by the build's own dedup path
(:func:`curate.dedup.partitioned.deduplicate_partitioned` with the thumbnails spilled, verification
on) in a process of its own per size. Reported per size: wall time and seconds per phase, the
process's peak RSS and the RSS it reached in each phase (sampled every 20 ms), the inverted-file
cells' sizes, candidate and verified pairs. Memory must stay flat in pool size. Writes
bench/results/near_scale.json.

    .venv/bin/python bench/near_scale.py [--sizes 200000,1000000] [--work /tmp/clip-tiers-near]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHUNK = 4096


def _annotate(rows: list[dict]) -> tuple[bytes, np.ndarray, list[str]]:
    """Thumbnails, (width, height, phash) and pixel hashes of rows' images, decoded as annotate does."""
    import cv2
    from PIL import Image

    from curate.annotate.image import decode, phash, pixel_hash, thumbnail
    from synthweb.bodies import _body

    thumbs, meta, hashes = [], [], []
    for r in rows:
        src = dict(r, kind="clean", i=r["orig"]) if r["kind"] == "exact_dup" else r
        if r["kind"] == "exact_dup":
            src.update(w=r["w"], h=r["h"])
        data = _body(src, 0)
        got, err = decode(data)
        if got is None:  # the web's decodable kinds all decode; keep the bench honest if one does not
            pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        else:
            pixels = got.pixels
        grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
        thumbs.append(thumbnail(pixels, grey))
        meta.append((pixels.shape[1], pixels.shape[0], phash(grey)))
        hashes.append(pixel_hash(pixels))
    return b"".join(thumbs), np.array(meta, np.uint64).reshape(-1, 3), hashes


def pool_for(work: Path, n: int) -> tuple[Path, Path]:
    """(annotation parquet, thumbnail file) of the decodable images of an ``n``-URL synthetic web."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthweb.build import SERVES_IMAGE, WebConfig, _plan

    table_path, thumb_path = work / f"pool-{n}.parquet", work / f"thumbs-{n}.u8"
    if table_path.exists() and thumb_path.exists():
        return table_path, thumb_path
    t0 = time.perf_counter()
    rows = [r for r in _plan(WebConfig(n=n, seed=0, min_side=64, max_side=64)) if r["kind"] in SERVES_IMAGE]
    chunks = [rows[k : k + CHUNK] for k in range(0, len(rows), CHUNK)]
    metas, hashes = [], []
    with open(str(thumb_path) + ".tmp", "wb") as f, get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        for k, (thumbs, meta, pix) in enumerate(pool.imap(_annotate, chunks)):
            f.write(thumbs)
            metas.append(meta)
            hashes.extend(pix)
            print(f"\r  rendered {min(len(rows), (k + 1) * CHUNK):,}/{len(rows):,}", end="", flush=True)
    meta = np.concatenate(metas)
    table = pa.table(
        {
            "uid": pa.array([f"{r['i']:09d}" for r in rows]),
            "pixel_hash": pa.array(hashes),
            "phash": pa.array(meta[:, 2], pa.uint64()),
            "width": pa.array(meta[:, 0].astype(np.int32)),
            "height": pa.array(meta[:, 1].astype(np.int32)),
        }
    )
    pq.write_table(table, str(table_path) + ".tmp", row_group_size=1 << 17)
    os.rename(str(thumb_path) + ".tmp", thumb_path)
    os.rename(str(table_path) + ".tmp", table_path)
    print(f"\n  annotated {len(rows):,} images of a {n:,}-URL web in {time.perf_counter() - t0:.0f} s", flush=True)
    return table_path, thumb_path


def _rss_mb() -> tuple[float, float]:
    status = Path("/proc/self/status").read_text()
    get = lambda key: int(status.split(key + ":")[1].split()[0]) / 1024  # noqa: E731
    return get("VmRSS"), get("VmHWM")


def child(table_path: str, thumb_path: str) -> None:
    """Decide one pool as the build's dedup task does; print the figures as JSON."""
    import pyarrow.parquet as pq

    from curate.core import schema
    from curate.dedup import DedupConfig, copies, partitioned
    from curate.dedup.source import Source
    from curate.dedup.thumbstore import Spilled

    stack: list[list] = []  # [phase, RSS on entry, peak RSS since], innermost last
    growth: dict[str, float] = {}  # phase -> the most it grew RSS by, over its calls
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            rss, _ = _rss_mb()
            for frame in list(stack):
                frame[2] = max(frame[2], rss)

    def watched(name, fn):
        @functools.wraps(fn)
        def inner(*a, **kw):
            rss, _ = _rss_mb()
            frame = [name, rss, rss]
            stack.append(frame)
            try:
                return fn(*a, **kw)
            finally:
                stack.remove(frame)
                growth[name] = max(growth.get(name, 0), frame[2] - frame[1])

        return inner

    found: dict[str, int] = {"candidate_pairs": 0}
    if hasattr(copies, "candidates"):  # the spilled search
        from curate.dedup import neighbours

        search = copies.candidates

        def counted(*a):
            for block in search(*a):
                found["candidate_pairs"] += len(block)
                yield block

        copies.candidates = counted
        neighbours._search = watched("neighbour search", neighbours._search)
    else:  # the search before it (held its pairs whole), to compare with
        search = copies._neighbours_packed

        def counted(x, cfg):
            out = search(x, cfg)
            found["candidate_pairs"] = len(out)
            return out

        copies._neighbours_packed = watched("neighbour search", counted)

    from curate.dedup import clusters, decide
    from curate.dedup.thumbstore import Spilled as _S

    largest = {"rows_read_at_once": 0}
    getitem = _S.__getitem__

    def read(self, key):
        got = getitem(self, key)
        largest["rows_read_at_once"] = max(largest["rows_read_at_once"], len(got))
        return got

    _S.__getitem__ = read
    found_largest = largest
    copies.flat = watched("flat", copies.flat)
    decide.verified_links = watched("verified_links", decide.verified_links)
    partitioned.verified_links = decide.verified_links
    partitioned.keepers = watched("keepers", clusters.keepers)
    partitioned._take_rows = watched("take_rows", partitioned._take_rows)
    partitioned._equal_hashes = watched("equal hashes", partitioned._equal_hashes)
    copies.verify_pairs = watched("verification", copies.verify_pairs)
    copies._spilled_vectors = watched("search vectors", copies._spilled_vectors)
    partitioned._scatter = watched("scatter", partitioned._scatter)
    partitioned._band_pairs = watched("pHash bands", partitioned._band_pairs)
    partitioned._write = watched("write", partitioned._write)
    threading.Thread(target=sample, daemon=True).start()

    n = Path(thumb_path).stat().st_size // schema.THUMB_BYTES
    store = Spilled(Path(thumb_path), np.uint8, (schema.THUMB_BYTES,), n)
    stats: dict = {}
    scratch = Path(thumb_path).parent / f"scratch-{os.getpid()}"
    scratch.mkdir()
    t0 = time.perf_counter()
    try:
        partitioned.deduplicate_partitioned(
            Source([table_path]),
            DedupConfig(),
            out=str(scratch / "dedup.parquet"),
            workdir=str(scratch),
            stats=stats,
            thumbs=(np.arange(n), store, str(scratch)),
        )
        decided = pq.read_table(scratch / "dedup.parquet", columns=["dup_of", "dup_kind"])
        digest = hashlib.sha256(json.dumps(decided.to_pydict()).encode()).hexdigest()[:16]
    finally:
        wall = time.perf_counter() - t0
        stop.set()
        for p in scratch.iterdir():
            p.unlink()
        scratch.rmdir()
    _, hwm = _rss_mb()
    print(
        json.dumps(
            {
                "rows": n,
                "wall_s": round(wall, 1),
                "peak_rss_mb": round(hwm),
                "growth_by_phase_mb": {k: round(v) for k, v in growth.items()},
                "seconds": stats["seconds"],
                "links": stats["links"],
                "decisions_digest": digest,
                "linked_rows": stats["linked_rows"],
                **found,
                **found_largest,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,200000")
    ap.add_argument("--work", default="/tmp/clip-tiers-near")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        table, thumbs = pool_for(work, n)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(table), str(thumbs)], capture_output=True, text=True, check=False
        )
        if proc.returncode:
            sys.exit(f"the {n:,}-URL pool's dedup failed:\n{proc.stderr[-3000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        got["urls"] = n
        results.append(got)
        print(f"{n:>9,} URLs  {got['rows']:>9,} images  {got['wall_s']:>7.1f} s  peak {got['peak_rss_mb']:,} MB")
        print(f"           RSS growth by phase (MB): {got['growth_by_phase_mb']}")
        print(f"           seconds: {got['seconds']}; candidate pairs {got['candidate_pairs']:,}")
    if len(results) > 1:
        print(f"peak RSS ratio, largest / smallest pool: {results[-1]['peak_rss_mb'] / results[0]['peak_rss_mb']:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "near_scale.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
