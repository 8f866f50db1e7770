"""The dedup stage over a build directory: ``tiers dedup DIR``.

Reads the annotation table (and CLIP image embeddings when annotate made them), decides duplicates
with :func:`curate.dedup.deduplicate`, optionally removes copies of evaluation images, and writes
``DIR/dedup.parquet`` (uid, dup_of, dup_kind; null for unique samples and keepers; one row per
decoded image: an undecodable one has failed already and takes no part) with a summary
in ``DIR/dedup.json``. Nothing is decoded from the pool, so a rerun with other thresholds takes
seconds; a rerun with the same settings over the same annotations does nothing. With ``partition_rows``
set, no step holds a column of the pool whole: the annotation files are read a batch at a time
(:func:`_decide_in_partitions`); the decisions and files are the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import runner, schema, scratch, storage
from curate.core.errors import InputError
from curate.core.runtime import ray_running
from curate.dedup import DedupConfig, deduplicate
from curate.dedup.decide import LARGE_POOL
from curate.dedup.decontaminate import eval_hashes, find_contaminated, set_name
from curate.dedup.thumbstore import spilled_thumbs

log = logging.getLogger(__name__)

DEDUP = "dedup.parquet"
SUMMARY = "dedup.json"
CONTAMINATION = "contamination"


def _stored_annotations(build_dir: str) -> list[str]:
    """The annotation files in the build directory, whatever raw shards it has."""
    ann = storage.join(build_dir, "annotations")
    return [storage.join(ann, name) for name in storage.listdir(ann) if name.endswith(".parquet")]


def _annotations_state(build_dir: str) -> str:
    """A fingerprint of the finished annotation units: dedup is redone when they change."""
    h = hashlib.sha256()
    for path in _stored_annotations(build_dir):
        size, version = storage.stamp(path)
        h.update(f"{storage.name(path)}:{size}:{version}".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class DedupSummary:
    """What ``DIR/dedup.parquet`` decided (also ``DIR/dedup.json``); ``key`` says what it was decided from."""

    key: dict
    rows: int  # decoded images that took part
    duplicates: int  # dropped as a duplicate of a keeper
    by_kind: dict[str, int]  # exact, pixels, near, semantic, caption, contamination
    contaminated: dict[str, int]  # evaluation set -> pool samples that copy its images
    semantic: bool  # whether CLIP embeddings took part


def _key(build_dir: str, cfg: DedupConfig, quality, prefer, decontaminate) -> dict:
    def digest(a, dtype):
        return None if a is None else hashlib.sha256(np.asarray(a, dtype).tobytes()).hexdigest()[:16]

    return {
        "rule": 2,  # 2: near copies verified by the stored thumbnails (decisions of rule 1 are redone)
        "config": asdict(cfg),
        "annotations": _annotations_state(build_dir),
        "decontaminate": [p if not storage.is_local(p) else str(Path(p).resolve()) for p in decontaminate],
        "quality": digest(quality, np.float32),
        "prefer": digest(prefer, bool),
    }


def run_dedup(
    build_dir: str | os.PathLike,
    cfg: DedupConfig = DedupConfig(),
    quality: np.ndarray | None = None,
    prefer: np.ndarray | None = None,
    decontaminate: tuple[str, ...] = (),
) -> DedupSummary:
    """Decide and write duplicates for ``build_dir``; returns the summary.

    ``quality`` and ``prefer`` (aligned with the annotation table) rank keepers; ``prefer`` is
    typically "passes the filters", so a cluster keeps a sample that will be kept. One unit of
    :mod:`curate.core.runner` (``DIR/_done/dedup.json``), fingerprinted by the annotations, the
    settings and the rankings: a rerun with the same ones does nothing.
    """
    build_dir = storage.normalise(build_dir)
    # The pHash search chosen by the pool's size here, once, so the key says what the task will use.
    cfg = _search_for(cfg, _pool_rows(build_dir, quality, prefer))
    key = _key(build_dir, cfg, quality, prefer, decontaminate)
    fp = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    unit = runner.Unit("dedup", fp, outputs=(DEDUP, SUMMARY), args=(key, cfg, quality, prefer, decontaminate))
    # With Ray up (a build) the decision runs in a worker: its working set (hash tables, candidate pairs,
    # links) grows with the pool, and the driver keeps only the metadata columns the other stages need.
    # Its worker exits after it: glibc and pymalloc keep part of a freed heap, and band-shard tasks
    # scheduled into that worker next would carry it (measured in bench/scale.py's shard stage).
    executor = runner.Executor("tasks", max_calls=1) if ray_running() else runner.Executor("local")
    report = runner.run(build_dir, [unit], _decide_unit, executor)
    report.raise_failures("dedup")
    summary = DedupSummary(**storage.read_json(storage.join(build_dir, SUMMARY)))
    if report.ran:
        for name, n in summary.contaminated.items():
            log.info(f"decontamination: {n} pool samples copy images of {name}")
    return summary


def _search_for(cfg: DedupConfig, rows: int) -> DedupConfig:
    """``cfg`` with its pHash search chosen for ``rows`` rows (:meth:`DedupConfig.for_rows`); says so where a
    large pool gets the large pools' search."""
    chosen = cfg.for_rows(rows)
    if rows >= LARGE_POOL and not (cfg.near_bands and cfg.near_tables):
        log.info(
            f"dedup: {rows:,} rows, so the pHash search uses {chosen.near_bands} bands x {chosen.near_tables} "
            "tables (at this size 3 x 10 makes far more random candidates; [dedup] near_bands, near_tables)"
        )
    return chosen


def _pool_rows(build_dir: str, quality, prefer) -> int:
    """The annotation table's rows: the rankings' length (they are aligned with it), else the footers of the
    annotation files :func:`_annotations_state` fingerprints."""
    for ranking in (quality, prefer):
        if ranking is not None:
            return len(ranking)
    from curate.dedup.source import Source

    return Source(_stored_annotations(build_dir)).num_rows


def _decide_unit(build_dir: str, unit: runner.Unit) -> dict:
    # In a Ray worker (a build) the neighbour search and the near-copy verification, nearly all of the
    # task's time, the pHash band masks and the group keys' partitions run as Ray tasks across the
    # cluster, one job each; the task itself waits on them. Tasks on other nodes read this node's spilled
    # files through curate.core.nodefiles (a replica of the thumbnails, vectors and distinct pHash
    # values; a group partition's file, once).
    from curate.core import raypool
    from curate.dedup.copies import verifying_with

    with verifying_with(raypool.fan_out if ray_running() else None):
        if unit.args[1].partition_rows:
            return _decide_in_partitions(build_dir, unit)
        return _decide_whole(build_dir, unit)


def _decide_whole(build_dir: str, unit: runner.Unit) -> dict:
    from curate.annotate import annotation_columns, read_annotations

    key, cfg, quality, prefer, decontaminate = unit.args
    cols = [schema.UID, schema.SHA256, schema.PIXEL_HASH, schema.PHASH, schema.WIDTH, schema.HEIGHT]
    cols += [schema.ORIGINAL_WIDTH, schema.ORIGINAL_HEIGHT]
    # Near copies are verified by aligned thumbnails (curate.dedup.copies), spilled to a scratch file
    # a shard at a time rather than read into the table (1.8 KB a row).
    verify = cfg.near and cfg.verify and schema.THUMB in annotation_columns(build_dir)
    table = read_annotations(build_dir, columns=cols + [schema.CAPTION, schema.DECODE_ERROR])
    # An image that did not decode has failed already; its bytes (an HTML page, a bomb) are often
    # shared by many URLs, and must not make those URLs "duplicates" of anything.
    decoded = table.column(schema.DECODE_ERROR).is_null().to_numpy(zero_copy_only=False)
    all_uids = table.column(schema.UID)
    table = table.filter(pa.array(decoded))
    quality = None if quality is None else np.asarray(quality)[decoded]
    prefer = None if prefer is None else np.asarray(prefer)[decoded]
    embeddings = _embeddings(build_dir, all_uids, decoded) if cfg.semantic else None
    with _spilled_thumbs(build_dir) if verify else contextlib.nullcontext() as thumbs:
        out = deduplicate(table, cfg, embeddings=embeddings, quality=quality, prefer=prefer, thumbs=thumbs)
    out, per_set = _decontaminate(out, table, cfg, decontaminate)

    kinds = out.column(schema.DUP_KIND).to_pylist()
    summary = DedupSummary(
        key=key,
        rows=table.num_rows,
        duplicates=sum(k is not None and k != CONTAMINATION for k in kinds),
        by_kind={k: kinds.count(k) for k in sorted({k for k in kinds if k is not None})},
        contaminated=per_set,
        semantic=embeddings is not None,
    )
    storage.write_parquet(out, storage.join(build_dir, DEDUP))
    storage.write_json(storage.join(build_dir, SUMMARY), asdict(summary))
    return {"rows": summary.rows, "duplicates": summary.duplicates}


def _decide_in_partitions(build_dir: str, unit: runner.Unit) -> dict:
    """:func:`_decide_unit`'s decisions and files with ``partition_rows`` set, holding no column of the pool
    whole: :func:`curate.dedup.partitioned.deduplicate_partitioned` reads the decoded rows' columns from
    the annotation files a batch at a time and writes its decisions to a scratch file, which is then
    copied to ``DIR/dedup.parquet`` a batch at a time, with the copies of evaluation images marked and
    the kinds counted. What it holds per row: the rankings it was given, one bool (decoded) and the
    width and height the verification reads (plus the embeddings, when semantic dedup is on)."""
    import pyarrow.parquet as pq

    from curate.annotate import annotation_columns, annotation_files, annotation_fix, annotation_tables
    from curate.dedup.partitioned import deduplicate_partitioned
    from curate.dedup.source import BATCH_ROWS, Source

    key, cfg, quality, prefer, decontaminate = unit.args
    source = Source(annotation_files(build_dir), where_null=schema.DECODE_ERROR, fix=annotation_fix(build_dir))
    decoded = source.kept
    quality = None if quality is None else np.asarray(quality)[decoded]
    prefer = None if prefer is None else np.asarray(prefer)[decoded]
    embeddings = None
    if cfg.semantic:
        uids = [u for t in annotation_tables(build_dir, [schema.UID]) for u in t.column(0).chunks]
        embeddings = _embeddings(build_dir, pa.chunked_array(uids, None if uids else pa.string()), decoded)
    verify = cfg.near and cfg.verify and schema.THUMB in annotation_columns(build_dir)
    evals = {set_name(p): eval_hashes(p) for p in decontaminate}
    per_set: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    with scratch.directory("dedup") as work:
        decided = os.path.join(work, DEDUP)
        with _spilled_thumbs(build_dir) if verify else contextlib.nullcontext() as thumbs:
            deduplicate_partitioned(
                source,
                cfg,
                embeddings=embeddings,
                quality=quality,
                prefer=prefer,
                out=decided,
                workdir=work,
                thumbs=thumbs,
            )
        hits = _contaminated_rows(source, cfg, evals)
        with storage.output(storage.join(build_dir, DEDUP)) as tmp:
            reader = pq.ParquetFile(decided)
            writer = pq.ParquetWriter(tmp, reader.schema_arrow, write_page_checksum=True)
            r0 = 0
            for b in reader.iter_batches(BATCH_ROWS):
                b = _mark_contaminated(b, r0, hits, per_set)
                r0 += b.num_rows
                for c in pc.value_counts(b.column(schema.DUP_KIND).drop_null()).to_pylist():
                    by_kind[c["values"]] = by_kind.get(c["values"], 0) + c["counts"]
                writer.write_batch(b)
            writer.close()
    summary = DedupSummary(
        key=key,
        rows=source.num_rows,
        duplicates=sum(n for k, n in by_kind.items() if k != CONTAMINATION),
        by_kind=dict(sorted(by_kind.items())),
        contaminated=per_set,
        semantic=embeddings is not None,
    )
    storage.write_json(storage.join(build_dir, SUMMARY), asdict(summary))
    return {"rows": summary.rows, "duplicates": summary.duplicates}


def _contaminated_rows(source, cfg: DedupConfig, evals: dict) -> dict[int, str]:
    """Row -> ``"<set>:<item>"`` for the source's rows that copy an evaluation image, found a batch at a
    time (each row is matched against the evaluation sets alone, so batches find what the whole would)."""
    hits: dict[int, str] = {}
    if not evals:
        return hits
    cols = [schema.SHA256, schema.PIXEL_HASH, schema.PHASH, schema.WIDTH, schema.HEIGHT]
    cols += [schema.ORIGINAL_WIDTH, schema.ORIGINAL_HEIGHT]
    for r0, b in source.batches(cols):
        found = find_contaminated(pa.Table.from_batches([b]), evals, cfg.near_k, cfg.near_shape_tolerance)
        hits.update({r0 + r: src for r, src in found.items()})
    return hits


def _mark_contaminated(b: pa.RecordBatch, r0: int, hits: dict[int, str], per_set: dict[str, int]) -> pa.RecordBatch:
    """Batch ``b`` (rows from ``r0``) with its rows in ``hits`` marked ``contamination``, counted per set."""
    rows = sorted(r for r in hits if r0 <= r < r0 + b.num_rows)
    if not rows:
        return b
    dup_of, kind = b.column(schema.DUP_OF).to_pylist(), b.column(schema.DUP_KIND).to_pylist()
    for r in rows:
        src = hits[r]
        dup_of[r - r0], kind[r - r0] = src, CONTAMINATION
        per_set[src.rsplit(":", 1)[0]] = per_set.get(src.rsplit(":", 1)[0], 0) + 1
    return pa.record_batch(
        [b.column(schema.UID), pa.array(dup_of, pa.string()), pa.array(kind, pa.string())], schema=b.schema
    )


def _spilled_thumbs(build_dir: str):
    """The decoded rows' thumbnails (:func:`curate.dedup.thumbstore.spilled_thumbs`), a shard at a time."""
    from curate.annotate import annotation_tables

    tables = annotation_tables(build_dir, [schema.THUMB, schema.DECODE_ERROR])
    return spilled_thumbs(t.filter(pc.is_null(t.column(schema.DECODE_ERROR))).column(schema.THUMB) for t in tables)


def _embeddings(build_dir: str, all_uids, decoded: np.ndarray) -> np.ndarray | None:
    """CLIP image embeddings of the decoded rows, or None when annotate ran without CLIP."""
    from curate.annotate import load_embeddings

    try:
        uids, embeddings = load_embeddings(build_dir)
    except InputError as e:
        if "no CLIP embeddings" not in str(e):
            raise
        return None
    if uids != all_uids.to_pylist():
        raise InputError("embeddings and annotations disagree on row order; re-run `tiers annotate`")
    return embeddings[decoded].astype(np.float32)


def _decontaminate(out: pa.Table, table: pa.Table, cfg: DedupConfig, sets: tuple[str, ...]):
    """Mark pool rows that copy an evaluation image (``dup_kind = contamination``); counts per set."""
    per_set: dict[str, int] = {}
    if not sets:
        return out, per_set
    evals = {set_name(p): eval_hashes(p) for p in sets}
    hits = find_contaminated(table, evals, cfg.near_k, cfg.near_shape_tolerance)
    if not out.num_rows:
        return out, per_set
    batch = out.combine_chunks().to_batches()[0]  # one chunk: one batch
    return pa.Table.from_batches([_mark_contaminated(batch, 0, hits, per_set)]), per_set


def read_dedup(build_dir: str | os.PathLike) -> pa.Table:
    p = storage.join(build_dir, DEDUP)
    if not storage.exists(p):
        raise InputError("no dedup decisions yet; run `tiers dedup`", path=p)
    return storage.read_parquet(p)
