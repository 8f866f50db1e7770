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
file: the same table :func:`read_url_list` returns, never held whole.
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
from curate.core.buckets import Buckets
from curate.core.errors import InputError
from curate.core.failpoints import failpoint
from curate.urllist.readers import ReadConfig, _canonical, file_batches, list_files

log = logging.getLogger(__name__)

BATCH_ROWS = 1 << 16
# A list of at least this many bytes (as stored) in two files or more is staged by a process per file, as
# many at once as there are cores (up to MAX_WORKERS; each holds ~230 MB at its peak): a file's staging is
# ~75% of the work, the one pass that writes the parquet file after it stays in this process.
PARALLEL_BYTES = 64 << 20
MAX_WORKERS = 16


@dataclass(frozen=True)
class StagedList:
    """A URL list read into the canonical parquet file at ``path`` (uid, url, caption, then the rest)."""

    path: str
    rows: int
    captioned: int  # rows with a caption
    columns: tuple[str, ...]


@dataclass
class _Part:
    file: str  # the input file
    paths: list[Path]  # its canonical rows, Arrow IPC files in order (a new one where its columns changed)
    schema: pa.Schema  # every one's columns unified
    rows: int
    had_uid: bool

    def batches(self) -> Iterator[pa.RecordBatch]:
        for path in self.paths:
            with pa.OSFile(str(path)) as src:  # read, not mapped: mapped pages stay resident
                reader = pa.ipc.open_file(src)
                for k in range(reader.num_record_batches):
                    yield reader.get_batch(k)


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
    for a list of ``PARALLEL_BYTES`` or more in several files, where ``runtime.MAIN_GUARDED`` says spawned
    workers are safe (the ``tiers`` CLI); else this process. The file written is the same either way.
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
            lacking = [f for f, h in zip(files, had_uid, strict=True) if not h]
            raise InputError(f"some files have a {cfg.uid_col!r} column and these do not: {', '.join(lacking)}")
        unified = _unified(", ".join(files), [p.schema for p in parts])
        rows = _repeated_rows(key_dirs, sizes)
        if all(had_uid):
            _reject_duplicate_uids(parts, rows)
            renamed: dict[int, str] = {}
        else:
            renamed = _repeat_uids(parts, rows)
        with _bar("write staged list", progress, sum(sizes)) as bar:
            return _write(parts, unified, renamed, dest, bar)


def _bar(desc: str, progress: bool, total: int | None = None):
    from tqdm import tqdm

    # Shown after 2 s: a list read in less never prints one (nor before an error about it).
    return tqdm(desc=desc, total=total, unit=" rows", unit_scale=True, delay=2, disable=not progress)


def _stage_files(
    files: list[str], cfg: ReadConfig, work: Path, workers: int | None, bar
) -> tuple[list[_Part], list[Path]]:
    """Every file staged (:func:`_stage_file`), here or by worker processes; (the parts in file order, the
    directories their keys were spilled to). A file that cannot be read raises as it would here, the
    first in file order."""
    n = _workers(files, workers)
    outs = [work / f"{k:05d}.arrow" for k in range(len(files))]
    if n <= 1:
        keys = _Keys(work / "keys")
        jobs = enumerate(zip(files, outs, strict=True))
        return [_stage_file(f, cfg, o, keys, k, bar.update) for k, (f, o) in jobs], [keys.dir]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        # spawn: this process may hold threads (Ray's, a progress bar's) that a fork would copy mid-lock.
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = enumerate(zip(files, outs, strict=True))
            futures = [pool.submit(_stage_in_worker, f, cfg, o, k, work) for k, (f, o) in jobs]
            try:
                done = []
                for f in futures:  # in file order: the first file's error is the one raised
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


def _workers(files: list[str], workers: int | None) -> int:
    if workers is not None:
        return max(1, min(workers, len(files)))
    if len(files) < 2 or not runtime.MAIN_GUARDED:
        return 1
    try:
        if sum(storage.size(f) for f in files) < PARALLEL_BYTES:
            return 1
    except OSError:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(len(files), cores, MAX_WORKERS)


_WORKER_KEYS: _Keys | None = None  # a worker process's keys, one spill for every file it stages


def _stage_in_worker(path: str, cfg: ReadConfig, out: Path, k: int, work: Path) -> tuple[_Part, Path]:
    global _WORKER_KEYS
    failpoint("urllist:worker")
    if _WORKER_KEYS is None:
        _WORKER_KEYS = _Keys(work / f"keys-{os.getpid()}")
    return _stage_file(path, cfg, out, _WORKER_KEYS, k), _WORKER_KEYS.dir


def _stage_file(path: str, cfg: ReadConfig, out: Path, keys: _Keys, file: int, read=None) -> _Part:
    """One input file's rows, checked and canonical, into ``out`` (and, where a batch brings columns or
    types the earlier ones lacked, as a jsonl file's blocks may, ``out`` numbered on from 1, each file's
    columns the earlier ones' unified with the batch's); each row's uid hash into ``keys``, as row ``file``
    of the list's files, row in it; ``read(rows)`` after each batch."""
    writer, kept, rows, had, paths = None, None, 0, False, []
    try:
        for raw in file_batches(path, cfg, BATCH_ROWS):
            table, had = _canonical(path, raw, cfg, rows)
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
            keys.add(_hash(table.column(schema.UID)), file, rows)
            rows += table.num_rows
            if read is not None:
                read(table.num_rows)
    finally:
        if writer is not None:
            writer.close()
    assert kept is not None  # file_batches gives at least one table
    return _Part(path, paths, kept, rows, had)


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


KEY_BUCKETS, KEY_SHIFT = 64, 58  # a key's bucket: its top 6 bits
KEY_RECORD = np.dtype([("key", "<u8"), ("row", "<i8")])  # row: file << ROW_BITS | row in the file
ROW_BITS = 40


class _Keys:
    """Each row's 64-bit key and where the row is, spilled to one of 64 bucket files by the key's top
    bits, so that finding the rows whose key repeats holds one bucket, not every row's key."""

    def __init__(self, directory: Path):
        self.dir = directory
        directory.mkdir()
        self.buckets = Buckets(directory, "keys", KEY_BUCKETS, KEY_RECORD)

    def add(self, keys: np.ndarray, file: int, row0: int) -> None:
        rec = np.empty(len(keys), KEY_RECORD)
        rec["key"], rec["row"] = keys, (file << ROW_BITS) + np.arange(row0, row0 + len(keys))
        self.buckets.add(rec, (keys >> np.uint64(KEY_SHIFT)).astype(np.int64))


def _repeated_rows(dirs: list[Path], sizes: list[int]) -> np.ndarray:
    """The list's rows, ascending, whose key another row shares, from the keys spilled to ``dirs`` (by
    one process or several); one bucket of every spill at a time."""
    first = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)[:-1]]).astype(np.int64)
    spills = [Buckets(d, "keys", KEY_BUCKETS, KEY_RECORD, fresh=False) for d in dirs]
    found = [np.zeros(0, np.int64)]
    for b in range(KEY_BUCKETS):
        rec = np.concatenate([s.take(b) for s in spills])
        s = np.sort(rec["key"])
        at = rec["row"][np.isin(rec["key"], s[1:][s[1:] == s[:-1]])]
        found.append(first[at >> ROW_BITS] + (at & ((1 << ROW_BITS) - 1)))
    return np.sort(np.concatenate(found))


def _gather(parts: list[_Part], rows: np.ndarray, columns: list[str]) -> pa.Table:
    """``columns`` at the ascending global ``rows``, read back from the parts a batch at a time."""
    got, r0 = [], 0
    for p in parts:
        lo, hi = np.searchsorted(rows, [r0, r0 + p.rows])
        if hi > lo:
            at = 0
            for b in p.batches():
                mine = rows[lo:hi] - r0 - at
                mine = mine[(mine >= 0) & (mine < b.num_rows)]
                if len(mine):
                    got.append(pa.Table.from_batches([b.select(columns).take(pa.array(mine))]))
                at += b.num_rows
        r0 += p.rows
    names = {c: pa.string() for c in columns}
    return (
        pa.concat_tables([t.cast(pa.schema(names)) for t in got])
        if got
        else pa.table({c: pa.array([], t) for c, t in names.items()})
    )


def _reject_duplicate_uids(parts: list[_Part], rows: np.ndarray) -> None:
    """Raise naming the first duplicated uid (in order of first appearance) and its first two rows."""
    if not len(rows):
        return
    uids = _gather(parts, rows, [schema.UID]).column(0).to_pylist()
    first_rows: dict[str, list[int]] = {}
    for r, u in zip(rows.tolist(), uids, strict=True):
        first_rows.setdefault(u, []).append(r)
    dups = {u: rs for u, rs in first_rows.items() if len(rs) > 1}
    if not dups:
        return  # equal hashes of different uids
    first = min(dups, key=lambda u: dups[u][0])
    (f1, r1), (f2, r2) = (_locate(r, parts) for r in dups[first][:2])
    raise InputError(
        f"duplicate uid {first!r} at {f1} row {r1} and {f2} row {r2} ({len(dups)} duplicated uid(s) in all); "
        "uids must be unique"
    )


def _repeat_uids(parts: list[_Part], rows: np.ndarray) -> dict[int, str]:
    """Row -> uid of the second and later occurrences of a repeated (url, caption) pair."""
    if not len(rows):
        return {}
    t = _gather(parts, rows, [schema.UID, schema.URL, schema.CAPTION])
    seen: dict[str, int] = {}
    out = {}
    for r, base, url, cap in zip(rows.tolist(), *(t.column(k).to_pylist() for k in range(3)), strict=True):
        n = seen.get(base, 0)
        seen[base] = n + 1
        if n:
            out[r] = schema.uid_hash(url, cap, n)
    return out


def _locate(row: int, parts: list[_Part]) -> tuple[str, int]:
    for p in parts:
        if row < p.rows:
            return p.file, row + 1
        row -= p.rows
    raise IndexError(row)


def _write(parts: list[_Part], unified: pa.Schema, renamed: dict[int, str], dest: str, bar) -> StagedList:
    """Every part's batches, cast to the unified columns, uids of repeats replaced, into ``dest``."""
    first = [schema.UID, schema.URL, schema.CAPTION]
    names = first + [n for n in unified.names if n not in first]
    out_schema = pa.schema([unified.field(n) for n in names])
    fixed = np.array(sorted(renamed), np.int64)
    r0, captioned = 0, 0
    with pq.ParquetWriter(dest, out_schema, write_page_checksum=True) as writer:
        for p in parts:
            for b in p.batches():
                cols = [_column(b, f) for f in out_schema]
                lo, hi = np.searchsorted(fixed, [r0, r0 + b.num_rows])
                if hi > lo:
                    uids = cols[0].to_pylist()
                    for r in fixed[lo:hi].tolist():
                        uids[r - r0] = renamed[r]
                    cols[0] = pa.array(uids, pa.string())
                writer.write_batch(pa.record_batch(cols, schema=out_schema))
                captioned += b.num_rows - b.column(schema.CAPTION).null_count
                r0 += b.num_rows
                bar.update(b.num_rows)
    return StagedList(dest, r0, captioned, tuple(names))


def _column(b: pa.RecordBatch | pa.Table, field: pa.Field) -> pa.Array | pa.ChunkedArray:
    if field.name not in b.schema.names:
        return pa.nulls(b.num_rows, field.type)
    col = b.column(field.name)
    return col if col.type == field.type else pc.cast(col, field.type)
