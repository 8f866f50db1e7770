"""A URL list of any size read into one canonical parquet file, a batch at a time.

:func:`stage_url_list` reads the list's files in order, each a batch at a time (parquet by row batch,
the text formats a 1 MB block of records at a time, :mod:`curate.urllist.textblocks`), checks and
canonicalises every batch as :mod:`curate.urllist.readers` does, and writes it to a scratch file per
input file. What it keeps per
row is one 64-bit hash of the row's uid (its own, or the one made from url + caption), 8 bytes, where
reading the list whole held ~420 B a row (a 1M-row list grew the process by 420 MB with uids, 681 MB
without). Rows whose hashes are equal, a few, are then read back and compared as strings: duplicate
uids are refused, and a repeated (url, caption) pair gets its occurrence number in its uid, as
:func:`curate.core.schema.make_uids` numbers them. A second pass writes the scratch files, their
columns unified as ``pa.concat_tables(..., promote_options="permissive")`` unifies them, to one parquet
file: the same table :func:`read_url_list` returns, never held whole (:mod:`curate.urllist.repeats`).

A large list is staged by worker processes, a file each, or, where there are fewer files than workers,
a run of a parquet file's row groups each; the file written is the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core import runtime, schema, scratch, storage
from curate.core.batches import exact
from curate.core.errors import InputError
from curate.core.failpoints import failpoint
from curate.urllist.readers import ReadConfig, _canonical, file_batches, list_files, plain_parquet, row_group_rows
from curate.urllist.repeats import Keys, Part, reject_duplicate_uids, repeat_uids, repeated_rows

log = logging.getLogger(__name__)

BATCH_ROWS = 1 << 16
# A list of at least this many bytes (as stored), in two files or more or in one parquet file, is staged by
# worker processes, a file (or a run of a parquet file's row groups) each, as many at once as there are
# cores (up to MAX_WORKERS; each holds ~230 MB at its peak): that is ~75% of the work; the one pass that
# writes the parquet file after it stays in this process.
PARALLEL_BYTES = 64 << 20
MAX_WORKERS = 16


@dataclass(frozen=True)
class StagedList:
    """A URL list read into the canonical parquet file at ``path`` (uid, url, caption, then the rest)."""

    path: str
    rows: int
    captioned: int  # rows with a caption
    columns: tuple[str, ...]


@dataclass(frozen=True)
class _Piece:
    """What one staging job reads: a file, or a run of a parquet file's row groups."""

    file: str
    row_groups: tuple[int, int] | None = None  # [a, b); None: all of it
    first_row: int = 0  # in the file, of its first row


def read_url_list(spec: str | os.PathLike | list, cfg: ReadConfig = ReadConfig()) -> pa.Table:
    """Read a URL list (file, directory, glob, or a list of them) into the canonical table.

    Raises :class:`InputError` on anything the job cannot go on with; nothing is silently skipped
    except blank lines of a txt list. For lists larger than memory, :func:`staged_url_list`.
    """
    with staged_url_list(spec, cfg) as staged:
        return pq.read_table(staged.path)


@contextlib.contextmanager
def staged_url_list(
    spec: str | os.PathLike | list, cfg: ReadConfig = ReadConfig(), progress: bool = False
) -> Iterator[StagedList]:
    """:func:`stage_url_list` into a scratch directory, removed when the block ends."""
    with scratch.directory("list") as d:
        yield stage_url_list(spec, cfg, os.path.join(d, "urls.parquet"), progress=progress)


def stage_url_list(
    spec: str | os.PathLike | list, cfg: ReadConfig, dest: str, workers: int | None = None, progress: bool = False
) -> StagedList:
    """Read a URL list into the canonical parquet file ``dest`` (a local path), a batch at a time.

    ``workers``: processes staging the list's files at once. Default: one per core (up to ``MAX_WORKERS``)
    for a list of ``PARALLEL_BYTES`` or more in several files or one parquet file, where
    ``runtime.MAIN_GUARDED`` says spawned workers are safe (the ``tiers`` CLI); else this process. The
    file written is the same either way.
    ``progress``: bars of the rows read and written, for a list that takes more than a few seconds."""
    files = list_files(spec)
    with scratch.directory("parts") as work:
        with _bar("read URL list", progress) as bar:
            parts, key_dirs = _stage_files(files, cfg, Path(work), workers, bar)
        sizes = [p.rows for p in parts]
        if sum(sizes) == 0:
            raise InputError("empty URL list: no rows", path=files[0] if len(files) == 1 else ", ".join(files))
        had_uid = [p.had_uid for p in parts]
        if any(had_uid) and not all(had_uid):
            lacking = list(dict.fromkeys(p.file for p in parts if not p.had_uid))
            raise InputError(f"some files have a {cfg.uid_col!r} column and these do not: {', '.join(lacking)}")
        unified = _unified(", ".join(files), [p.schema for p in parts])
        rows = repeated_rows(key_dirs, sizes)
        if all(had_uid):
            reject_duplicate_uids(parts, rows)
            renamed: dict[int, str] = {}
        else:
            renamed = repeat_uids(parts, rows)
        with _bar("write staged list", progress, sum(sizes)) as bar:
            return _write(parts, unified, renamed, dest, bar)


def _bar(desc: str, progress: bool, total: int | None = None):
    from tqdm import tqdm

    # Shown after 2 s: a list read in less never prints one (nor before an error about it).
    return tqdm(desc=desc, total=total, unit=" rows", unit_scale=True, delay=2, disable=not progress)


def _stage_files(
    files: list[str], cfg: ReadConfig, work: Path, workers: int | None, bar
) -> tuple[list[Part], list[Path]]:
    """Every file staged (:func:`_stage_file`), here or by worker processes; (the parts in file order, the
    directories their keys were spilled to). A file that cannot be read raises as it would here, the
    first in file order."""
    n = _workers(files, workers, cfg)
    pieces = [_Piece(f) for f in files] if n <= 1 else _pieces(files, n, cfg)
    n = min(n, len(pieces))
    outs = [work / f"{k:05d}.arrow" for k in range(len(pieces))]
    if n <= 1:
        keys = Keys(work / "keys")
        jobs = enumerate(zip(pieces, outs, strict=True))
        return [_stage_file(p, cfg, o, keys, k, bar.update) for k, (p, o) in jobs], [keys.dir]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        # spawn: this process may hold threads (Ray's, a progress bar's) that a fork would copy mid-lock.
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = enumerate(zip(pieces, outs, strict=True))
            futures = [pool.submit(_stage_in_worker, p, cfg, o, k, work) for k, (p, o) in jobs]
            try:
                done = []
                for f in futures:  # in list order: the first bad row's error is the one raised
                    done.append(f.result())
                    bar.update(done[-1][0].rows)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    except BrokenProcessPool:  # a worker killed (out of memory?): one process needs a worker's memory, not n
        log.warning(f"a process staging the URL list died; staging its {len(files)} files in this one")
        (work / "here").mkdir()
        bar.reset()
        return _stage_files(files, cfg, work / "here", 1, bar)
    return [part for part, _ in done], sorted({d for _, d in done})


def _workers(files: list[str], workers: int | None, cfg: ReadConfig) -> int:
    """Processes to stage ``files`` with (1: this one). Several files, or one parquet file (whose row
    groups are shared out, :func:`_pieces`), of ``PARALLEL_BYTES`` or more."""
    if workers is not None:
        return max(1, workers)
    one_text_file = len(files) == 1 and not plain_parquet(files[0], cfg.format)  # its footer is read once, later
    if one_text_file or not runtime.MAIN_GUARDED:
        return 1
    try:
        if sum(storage.size(f) for f in files) < PARALLEL_BYTES:
            return 1
    except OSError:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, MAX_WORKERS)


def _pieces(files: list[str], n: int, cfg: ReadConfig) -> list[_Piece]:
    """The files as staging jobs for ``n`` workers: each file whole where there are at least ``n``;
    with fewer, each parquet file's row groups cut into up to ``n`` runs of about equal rows (read from
    its footer; fewer files than workers, so a few footers)."""
    if len(files) >= n:
        return [_Piece(f) for f in files]
    out = []
    for f in files:
        groups = row_group_rows(f, cfg.format)
        if not groups or len(groups) < 2:
            out.append(_Piece(f))
            continue
        before = np.concatenate([[0], np.cumsum(groups)]).astype(np.int64)
        # Cut where the rows before a group pass each k/n of the file's rows; every run holds a group.
        cuts = np.unique(np.searchsorted(before[:-1], before[-1] * np.arange(1, n) / n, side="left"))
        bounds = [0, *[int(c) for c in cuts if 0 < c < len(groups)], len(groups)]
        out += [_Piece(f, (a, b), int(before[a])) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    return out


_WORKER_KEYS: Keys | None = None  # a worker process's keys, one spill for every piece it stages


def _stage_in_worker(piece: _Piece, cfg: ReadConfig, out: Path, k: int, work: Path) -> tuple[Part, Path]:
    global _WORKER_KEYS
    failpoint("urllist:worker")
    if _WORKER_KEYS is None:
        _WORKER_KEYS = Keys(work / f"keys-{os.getpid()}")
    return _stage_file(piece, cfg, out, _WORKER_KEYS, k), _WORKER_KEYS.dir


def _stage_file(piece: _Piece, cfg: ReadConfig, out: Path, keys: Keys, index: int, read=None) -> Part:
    """One input file's rows (or a piece's), checked and canonical, into ``out`` (and, where a batch brings
    columns or types the earlier ones lacked, as a jsonl file's blocks may, ``out`` numbered on from 1,
    each file's columns the earlier ones' unified with the batch's); each row's uid hash into ``keys``, as
    row ``index`` of the list's pieces, row in it; ``read(rows)`` after each batch."""
    path = piece.file
    writer, kept, rows, had, paths = None, None, 0, False, []
    try:
        for raw in file_batches(path, cfg, BATCH_ROWS, piece.row_groups):
            table, had = _canonical(path, raw, cfg, piece.first_row + rows)
            uid = table.column(schema.UID) if had else _base_uids(table)
            rest = [n for n in table.column_names if n not in (schema.UID, schema.URL, schema.CAPTION)]
            table = pa.table(
                [uid, table.column(schema.URL), table.column(schema.CAPTION)] + [table.column(n) for n in rest],
                names=[schema.UID, schema.URL, schema.CAPTION] + rest,
            )
            unified = table.schema if kept is None else _unified(path, [kept, table.schema])
            if unified != kept:
                if writer is not None:
                    writer.close()
                paths.append(out.with_suffix(f".{len(paths)}{out.suffix}") if paths else out)
                kept, writer = unified, pa.ipc.new_file(str(paths[-1]), unified)
            writer.write_table(pa.table([_column(table, f) for f in kept], schema=kept))
            keys.add(_hash(table.column(schema.UID)), index, rows)
            rows += table.num_rows
            if read is not None:
                read(table.num_rows)
    finally:
        if writer is not None:
            writer.close()
    assert kept is not None  # file_batches gives at least one table
    return Part(path, piece.first_row, paths, kept, rows, had)


def _unified(files: str, schemas: list[pa.Schema]) -> pa.Schema:
    """The columns of ``schemas`` unified as ``pa.concat_tables(..., promote_options="permissive")`` would."""
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InputError(f"the files' columns do not agree: {e}", path=files) from None


def _base_uids(table: pa.Table) -> pa.Array:
    """Each row's uid as if its (url, caption) pair were the list's only one (occurrence 0)."""
    return schema.base_uids(table.column(schema.URL), table.column(schema.CAPTION))


def _hash(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    # polars hashes strings in native code; the hashes need only agree within this run.
    return pl.Series(col).hash(seed=0).to_numpy()


def _write(parts: list[Part], unified: pa.Schema, renamed: dict[int, str], dest: str, bar) -> StagedList:
    """Every part's batches, cast to the unified columns, uids of repeats replaced, into ``dest`` in row
    groups of ``BATCH_ROWS`` rows: the same file however the list was cut into parts and batches."""
    first = [schema.UID, schema.URL, schema.CAPTION]
    names = first + [n for n in unified.names if n not in first]
    out_schema = pa.schema([unified.field(n) for n in names])
    fixed = np.array(sorted(renamed), np.int64)
    r0, captioned = 0, 0

    def canonical() -> Iterator[pa.RecordBatch]:
        nonlocal r0, captioned
        for p in parts:
            for b in p.batches():
                cols = [_column(b, f) for f in out_schema]
                lo, hi = np.searchsorted(fixed, [r0, r0 + b.num_rows])
                if hi > lo:
                    uids = cols[0].to_pylist()
                    for r in fixed[lo:hi].tolist():
                        uids[r - r0] = renamed[r]
                    cols[0] = pa.array(uids, pa.string())
                captioned += b.num_rows - b.column(schema.CAPTION).null_count
                r0 += b.num_rows
                yield pa.record_batch(cols, schema=out_schema)

    # uid, url and caption are nearly all distinct: a dictionary for them is built, overflows and is dropped
    # in every column chunk. Without one, and with zstd at level 1 rather than snappy, 2M rows were written
    # in 0.90 s instead of 1.02, read back in 0.22 instead of 0.39, and took 110 MB instead of 189.
    writer = pq.ParquetWriter(
        dest,
        out_schema,
        write_page_checksum=True,
        compression="zstd",
        compression_level=1,
        use_dictionary=names[len(first) :],  # the list's other columns: often few distinct values
    )
    with writer:
        for t in exact(canonical(), BATCH_ROWS):
            writer.write_table(t, row_group_size=BATCH_ROWS)
            bar.update(t.num_rows)
    return StagedList(dest, r0, captioned, tuple(names))


def _column(b: pa.RecordBatch | pa.Table, field: pa.Field) -> pa.Array | pa.ChunkedArray:
    if field.name not in b.schema.names:
        return pa.nulls(b.num_rows, field.type)
    col = b.column(field.name)
    return col if col.type == field.type else pc.cast(col, field.type)
