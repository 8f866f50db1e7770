"""Parquet files read a batch at a time, for the steps that must not hold a table whole.

``pq.read_table`` of a URL list holds it ~2.6 times over while it reads (355 MB for a 1M-row list of
136 MB): pre-buffered column chunks, reader threads and the decoded columns at once. A
:class:`pq.ParquetFile` without pre-buffering or threads, read a batch at a time, holds about one batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from curate.core import storage
from curate.core.integrity import DamagedFile

ROWS = 1 << 16


def open_parquet(url: str | os.PathLike, fix: str | None = None) -> pq.ParquetFile:
    """A parquet file we wrote, local or in a store (ranged reads of the footer and each row group's
    columns), its page checksums verified as it is read; :class:`DamagedFile` if it cannot be opened."""
    try:
        if storage.is_local(url):
            return pq.ParquetFile(storage.local_path(url), pre_buffer=False, page_checksum_verification=True)
        fs, inside = storage.filesystem(url)
        # No read-ahead: each read a ranged GET of what the reader asks for. fsspec's default cache
        # (s3fs: "readahead", a 50 MB block) held a block beside every column chunk read.
        f = fs.open(inside, "rb", cache_type="none")
        return pq.ParquetFile(f, pre_buffer=False, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        raise DamagedFile(url, f"unreadable parquet: {e}", fix) from None


def iter_parquet(
    url: str | os.PathLike, rows: int = ROWS, columns: list[str] | None = None, fix: str | None = None
) -> Iterator[pa.RecordBatch]:
    """The file's rows as batches of at most ``rows`` (a batch never spans row groups)."""
    f = open_parquet(url, fix)
    it = f.iter_batches(rows, columns=columns, use_threads=False)
    while True:
        try:
            b = next(it)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as e:
            raise DamagedFile(url, f"unreadable parquet: {e}", fix) from None
        yield b


def exact(batches: Iterable[pa.RecordBatch | pa.Table], rows: int) -> Iterator[pa.Table]:
    """``batches`` regrouped into tables of exactly ``rows`` rows (the last one shorter), in order."""
    pending: list[pa.Table] = []
    held = 0
    for b in batches:
        t = b if isinstance(b, pa.Table) else pa.Table.from_batches([b])
        while t.num_rows:
            take = min(rows - held, t.num_rows)
            pending.append(t.slice(0, take))
            held += take
            t = t.slice(take)
            if held == rows:
                yield pa.concat_tables(pending).combine_chunks()
                pending, held = [], 0
    if held:
        yield pa.concat_tables(pending).combine_chunks()


def read_columns(url: str, columns: list[str], fix: str | None = None) -> pa.Table:
    """Of the parquet file at ``url`` (local or in a store: ranged reads), ``columns`` (those it has), read
    a batch at a time (without the whole file's bytes or pre-buffered column chunks held beside them), a
    column at a time, each joined into one chunk where its values fit in one (string offsets are 32-bit).

    One chunk, because a take from a column of many chunks first joins them all, in every call: the
    shard stage takes each band shard's rows from these columns (2,000 takes at 1M samples).
    """
    have = open_parquet(url, fix).schema_arrow
    fields = [have.field(c) for c in columns if c in have.names]
    out = []
    for field in fields:
        col = pa.chunked_array([b.column(0) for b in iter_parquet(url, columns=[field.name], fix=fix)], field.type)
        try:
            out.append(col.combine_chunks())  # the column's pieces go as it is joined: twice one column at most
        except (pa.ArrowInvalid, pa.ArrowCapacityError):
            out.append(col)  # over 2 GB of strings: left in pieces
        del col
    return pa.table(out, schema=pa.schema(fields))
