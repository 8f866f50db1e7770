"""Dedup decisions for pools larger than memory: hash partitions spilled to disk, one at a time.

:func:`deduplicate_partitioned` makes the same decisions as the in-memory
:func:`curate.dedup.decide.deduplicate`, row for row, but no step holds the pool: rows are read in
batches of their metadata columns, scattered by a hash of the key each kind of duplicate is found by
(``sha256``, ``pixel_hash``, the normalised caption, the pHash value, and for each of pHash's band
masks the hash's bits under that mask) into ``partitions`` Arrow IPC files, and each file is then
read and searched alone. Rows that can be linked always share a partition (equal keys hash alike),
so the union of the per-partition links is the in-memory path's set of links, and the clusters,
keepers and kinds that follow from it are the same.

What stays in memory: one batch or one partition at a time, the duplicate links (two int64 per
link as found, two int32 positions once compacted) and, for the rows that have a link, their uid and
rank. The connected components and keepers are decided over the linked rows only (:meth:`Links.compact`,
:class:`~curate.dedup.clusters.Forest`); the final table is written batch by batch, each batch taking
its keepers' uids and kinds as it goes. The thumbnail neighbour search and verification
(:mod:`curate.dedup.copies`) read the thumbnails and search vectors from scratch files a block at a time
(:mod:`curate.dedup.thumbstore`); the candidate pairs are spilled as they are found and read back a range
of rows at a time (:mod:`curate.dedup.neighbours`). Semantic dedup takes the embeddings as one array.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core import nodefiles, schema, scratch
from curate.core.nodefiles import NodeFile
from curate.dedup.clusters import KINDS, Links, keepers
from curate.dedup.copies import job_map
from curate.dedup.decide import DedupConfig, _group_ids, normalise_caption, verified_links
from curate.dedup.near import _masks, _pairs_in_runs, aspect_differs, log_aspect
from curate.dedup.neighbours import PackedPairs, SpilledPairs, in_order
from curate.dedup.semantic import SemanticConfig, semantic_pairs
from curate.dedup.source import Source
from curate.dedup.spill import Spill, part_of, string_part_of
from curate.dedup.thumbstore import spilled_thumbs

log = logging.getLogger(__name__)

# Files open at once while scattering are a few per partition; 1,024 partitions of 1M rows hold 1B.
MAX_PARTITIONS = 1024


def partitions(rows: int, partition_rows: int) -> int:
    """How many partitions: about ``partition_rows`` rows each (0: one), at most MAX_PARTITIONS."""
    if partition_rows <= 0:
        return 1
    return int(min(MAX_PARTITIONS, max(1, -(-rows // partition_rows))))


def _group_columns(cfg: DedupConfig, names: Sequence[str]) -> dict[str, str]:
    """Kind -> column whose equal values link rows, as in the in-memory path."""
    want = {"exact": (cfg.exact, schema.SHA256), "pixels": (cfg.pixels, schema.PIXEL_HASH)}
    want["caption"] = (cfg.captions, schema.CAPTION)
    return {kind: col for kind, (on, col) in want.items() if on and col in names}


def _scatter(source: Source, cfg: DedupConfig, work: Path, parts: int) -> tuple[dict[str, Spill], Spill | None]:
    """One pass over the pool: each group key's rows into its spill, valid pHashes (with the row's log
    aspect ratio) into the pHash spill by their value."""
    groups = _group_columns(cfg, source.names)
    spills = {kind: Spill(work, kind, parts) for kind in groups}
    near = cfg.near and schema.PHASH in source.names
    hashes = Spill(work, "phash", parts) if near else None
    shape_cols = [schema.WIDTH, schema.HEIGHT] if near else []
    for r0, b in source.batches([*groups.values(), schema.PHASH, *shape_cols]):
        rows = np.arange(r0, r0 + b.num_rows, dtype=np.int64)
        for kind, col in groups.items():
            values = b.column(col)
            if kind == "caption":
                values = pa.array([normalise_caption(c) for c in values.to_pylist()], pa.string())
            ok = values.is_valid().to_numpy(zero_copy_only=False)
            values = values.filter(pa.array(ok))
            spills[kind].add(pa.record_batch({"row": rows[ok], "value": values}), string_part_of(values, parts))
        if hashes is not None:
            col = b.column(schema.PHASH)
            ok = col.is_valid().to_numpy(zero_copy_only=False)
            h = col.to_numpy(zero_copy_only=False)[ok].astype(np.uint64)
            shape = log_aspect(pa.Table.from_batches([b]))[ok]
            hashes.add(pa.record_batch({"row": rows[ok], "phash": h, "shape": shape}), part_of(h, parts))
    return spills, hashes


def _equal_hashes(hashes: Spill, verify: bool, work: Path, links: dict[str, list]) -> Spill:
    """Per pHash partition :func:`equal_hashes`, here (as jobs, their distinct values came back through
    Ray's object store, ~24 bytes a row, and grew the task's resident memory by ~210 MB at 10M hashes
    for ~0.5 s gained); returns the distinct values with their first row and its shape, in one spill
    file, in partition order."""
    distinct = Spill(work, "distinct", 1)
    for f in hashes.files():
        pairs, values, first, shape = equal_hashes(f, verify)
        links["candidates" if verify else "near"].append(pairs)
        batch = pa.record_batch({"phash": values, "row": first, "shape": shape})
        distinct.add(batch, np.zeros(len(values), int))
    hashes.remove()
    distinct.close()
    return distinct


def equal_hashes(f: NodeFile, verify: bool):
    """One pHash partition's rows of one value: linked (or, to be verified, each made a candidate of the
    value's first row), and the distinct values with that first row and its shape."""
    t = pa.ipc.open_file(f.buffer()).read_all()
    rows, h = t.column("row").to_numpy(), t.column("phash").to_numpy()
    values, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if verify:
        rep = rows[first][inverse]
        other = rep != rows
        pairs = (rows[other], rep[other])
    else:
        g = Links(0)
        g.add_groups("near", inverse, rows=rows)
        pairs = g.by_kind["near"]
    return pairs, values, rows[first], t.column("shape").to_numpy()[first]


def group_links(kind: str, f: NodeFile) -> tuple[np.ndarray, np.ndarray]:
    """The links of one partition of a group key (sha256, pixel hash, caption): rows of one value."""
    t = pa.ipc.open_file(f.buffer()).read_all()
    part = Links(0)
    part.add_groups(kind, _group_ids(t.column("value")), rows=t.column("row").to_numpy())
    return part.by_kind[kind]


def _band_pairs(distinct: Spill, cfg: DedupConfig, parts: int, tolerance: float, found) -> None:
    """pHash pairs within ``near_k`` found by the band masks, handed to ``found.add(i, j)`` (first rows)
    as found. Each mask is a job (:func:`mask_pairs`): it partitions the distinct values by their bits
    under the mask and searches each partition; run here in order or, in a build's dedup task, as Ray
    tasks across the cluster (:func:`curate.dedup.copies.job_map`), which then also share the scatter.
    The pairs are the same either way: ``found`` makes them unique and sorts them."""
    files = distinct.files()  # one file, or none where no row has a pHash
    jobs = [(f, mask, parts, cfg.near_k, tolerance) for f in files for mask in _masks(cfg.near_config())]
    for i, j in (job_map() or in_order)(mask_pairs, jobs):
        found.add(i, j)


def mask_pairs(values: NodeFile, mask: np.uint64, parts: int, k: int, tolerance: float):
    """The pairs (first rows) of the distinct pHash ``values`` equal under ``mask``, within ``k`` bits,
    shapes within ``tolerance`` (0: any): the values scattered into ``parts`` partitions by their bits
    under the mask (in this node's scratch directory), each partition then searched alone, so a job
    holds one batch of values or one partition whatever the pool's size. ``values`` is read where it
    lies, or from a replica on this node that the node's jobs share."""
    found: list[tuple[np.ndarray, np.ndarray]] = []
    with scratch.directory("band") as d:
        band = Spill(Path(d), "band", parts)
        with pa.OSFile(str(values.local())) as src:  # a batch read at a time, not mapped whole
            reader = pa.ipc.open_file(src)
            for b in range(reader.num_record_batches):
                batch = reader.get_batch(b)
                band.add(batch, part_of(batch.column("phash").to_numpy() & mask, parts))
        for t in band:  # each partition memory-mapped, its file removed once read
            found.append(_partition_pairs(t, mask, k, tolerance))
    return _concat(found)


def _partition_pairs(t: pa.Table, mask: np.uint64, k: int, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    h = t.column("phash").to_numpy()
    keys = h & mask
    order = np.argsort(keys)  # run membership, not order within a run, makes the pairs
    keep = _shapes_agree(t.column("shape").to_numpy(), tolerance) if tolerance else None
    i, j = _pairs_in_runs(order, keys[order], h, k, keep)
    rows = t.column("row").to_numpy()
    return rows[i], rows[j]


def _shapes_agree(shape: np.ndarray, tolerance: float):
    """A mask of pairs (i, j) whose log aspect ratios ``shape`` differ by at most ``tolerance``."""
    return lambda i, j: ~aspect_differs(shape[i], shape[j], tolerance)


def _links(source: Source, cfg: DedupConfig, work: Path, parts: int, embeddings, clock, thumbs=None) -> Links:
    """Every duplicate link of the pool, found one partition at a time; ``clock(phase)`` marks the end
    of each phase."""
    found: dict[str, list] = {"near": [], "candidates": []}
    spills, hashes = _scatter(source, cfg, work, parts)
    clock("scatter")
    links = Links(source.num_rows)
    jobs = [(kind, f) for kind, spill in spills.items() for f in spill.files()]  # each partition a job
    for (kind, _), pairs in zip(jobs, (job_map() or in_order)(group_links, jobs), strict=True):
        found.setdefault(kind, []).append(pairs)
    for kind, spill in spills.items():
        links.add(kind, *_concat(found.pop(kind, [])))
        spill.remove()
    clock("groups")
    if hashes is not None:
        verify = cfg.verify and (schema.THUMB in source.names or thumbs is not None)
        distinct = _equal_hashes(hashes, verify, work, found)
        clock("equal_hashes")
        tolerance = 0.0 if verify else cfg.near_shape_tolerance
        # To be verified, the candidates go to scratch files as found and are read back a range of rows
        # at a time: held whole, with their copies on the way to the search, they grew the dedup task by
        # ~250 MB at 930,000 images (4.8M distinct pairs; bench/near_scale.py).
        pairs = SpilledPairs(source.num_rows, work) if verify else PackedPairs(source.num_rows)
        try:
            _band_pairs(distinct, cfg, parts, tolerance, pairs)
        finally:
            nodefiles.drop(work)  # the replicas of the distinct values that other nodes' jobs read
        clock("bands")
        if verify:
            for i, j in found.pop("candidates"):
                pairs.add(i, j)
            table = source.read([schema.WIDTH, schema.HEIGHT])
            shape = log_aspect(table) if table.num_columns == 2 else None
            table = table if table.num_columns else pa.table({"n": pa.nulls(source.num_rows)})
            with _thumbs(source, thumbs) as spilled:  # read a block at a time, never whole
                verified_links(table, cfg, links, pairs, shape, spilled)
            clock("verify")
        else:
            links.add("near", *_concat([*found["near"], pairs.pairs()]))
    if cfg.semantic and embeddings is not None:
        ok = np.flatnonzero(np.isfinite(embeddings).all(axis=1) & (np.abs(embeddings).sum(axis=1) > 0))
        i, j = semantic_pairs(embeddings[ok], SemanticConfig(eps=cfg.semantic_eps, seed=cfg.seed))
        links.add("semantic", ok[i], ok[j])
        clock("semantic")
    return links


def _thumbs(source: Source, thumbs):
    """``thumbs`` when given, else the source's ``thumb`` column spilled a batch at a time."""
    batches = (b.column(0) for _, b in source.batches([schema.THUMB]))
    return contextlib.nullcontext(thumbs) if thumbs is not None else spilled_thumbs(batches)


def _concat(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs])


def _take_rows(source: Source, column: str, rows: np.ndarray) -> pa.Array:
    """``column`` at the sorted ``rows``, read a batch at a time."""
    parts = []
    for r0, b in source.batches([column]):
        lo, hi = np.searchsorted(rows, [r0, r0 + b.num_rows])
        if hi > lo:
            parts.append(b.column(0).take(pa.array(rows[lo:hi] - r0)))
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


def deduplicate_partitioned(
    data: pa.Table | Sequence[str] | Source,
    cfg: DedupConfig = DedupConfig(),
    embeddings: np.ndarray | None = None,
    quality: np.ndarray | None = None,
    prefer: np.ndarray | None = None,
    out: str | None = None,
    workdir: str | None = None,
    stats: dict | None = None,
    thumbs=None,
) -> pa.Table | None:
    """:func:`curate.dedup.deduplicate`'s decisions over ``data`` (a table, parquet files, rows in that
    order, or a :class:`Source`) in partitions of about ``cfg.partition_rows`` rows (:func:`partitions`)
    spilled under ``workdir`` (a temporary directory by default). Returns uid, dup_of, dup_kind; or,
    given ``out``, writes them there as parquet a batch at a time and returns None. ``stats``, when given,
    receives the partition count, link and linked-row counts and seconds per phase. ``thumbs``: the
    rows' thumbnails spilled (:func:`curate.dedup.thumbstore.spilled_thumbs`), where ``data`` has none."""
    source = data if isinstance(data, Source) else Source(data)
    cfg = cfg.for_rows(source.num_rows)
    parts = partitions(source.num_rows, cfg.partition_rows)
    stats = {} if stats is None else stats
    stats.update(partitions=parts, seconds={})
    last = [time.perf_counter()]

    def clock(phase: str) -> None:
        now = time.perf_counter()
        stats["seconds"][phase] = round(now - last[0], 2)
        last[0] = now

    work = Path(tempfile.mkdtemp(prefix="dedup-", dir=workdir))
    try:
        links = _links(source, cfg, work, parts, embeddings, clock, thumbs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    nodes, small = links.compact()
    stats.update(links=sum(len(i) for i, _ in small.by_kind.values()), linked_rows=len(nodes))
    del links
    uids = _take_rows(source, schema.UID, nodes).cast(pa.string())
    # Keepers are ranked by uid last: the uid's rank among the linked rows (Arrow compares UTF-8 bytes,
    # which orders as Python compares the strings) ranks them alike without a Python string per row.
    uid_rank = pc.rank(uids, sort_keys="ascending", tiebreaker="first").to_numpy()
    q = None if quality is None else np.asarray(quality)[nodes]
    pr = None if prefer is None else np.asarray(prefer)[nodes]
    decided = keepers(small, uid_rank, q, pr, kind_codes=True)
    del small, uid_rank, q, pr
    clock("resolve")
    result = _write(source, nodes, uids, decided, out)
    clock("write")
    log.info(f"dedup in {parts} partitions: {len(nodes):,} linked rows; seconds {stats['seconds']}")
    return result


def _write(source: Source, nodes: np.ndarray, uids: pa.Array, decided: dict, out: str | None) -> pa.Table | None:
    """uid, dup_of, dup_kind for every row, a batch at a time: null except at linked rows. ``uids``: the
    linked rows' (``nodes``); ``decided``: :func:`keepers`' with kind codes. Each batch's keeper uids and
    kinds are taken as it is written, so no column of them is held whole."""
    writer, batches = None, []
    names = pa.array([None, *KINDS], pa.string())
    cluster, keeper, kind = decided["cluster"], decided["keeper"], decided["dup_kind"]
    for r0, b in source.batches([schema.UID]):
        lo, hi = np.searchsorted(nodes, [r0, r0 + b.num_rows])
        at = np.zeros(b.num_rows, np.int64)
        linked = np.zeros(b.num_rows, bool)
        at[nodes[lo:hi] - r0], linked[nodes[lo:hi] - r0] = np.arange(lo, hi), True
        duplicate, keeper_at = np.zeros(b.num_rows, bool), np.zeros(b.num_rows, np.int64)
        duplicate[linked], keeper_at[linked] = ~keeper[at[linked]], cluster[at[linked]]
        codes = np.zeros(b.num_rows, np.int8)
        codes[linked] = kind[at[linked]] + 1
        batch = pa.record_batch(
            {
                schema.UID: b.column(0),
                schema.DUP_OF: uids.take(pa.array(keeper_at, mask=~duplicate)),
                schema.DUP_KIND: names.take(pa.array(codes)),
            }
        )
        if out is None:
            batches.append(batch)
            continue
        if writer is None:
            writer = pq.ParquetWriter(out, batch.schema)
        writer.write_batch(batch)
    if out is None:
        uid_type = source.table.schema.field(schema.UID).type if source.table is not None else pa.string()
        empty = pa.schema([(schema.UID, uid_type), (schema.DUP_OF, pa.string()), (schema.DUP_KIND, pa.string())])
        return pa.Table.from_batches(batches, schema=None if batches else empty).combine_chunks()
    if writer is None:
        pq.write_table(
            pa.table({c: pa.array([], pa.string()) for c in (schema.UID, schema.DUP_OF, schema.DUP_KIND)}), out
        )
    else:
        writer.close()
    return None
