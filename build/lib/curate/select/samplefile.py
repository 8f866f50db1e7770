"""``samples.parquet`` written a batch of rows at a time, so the driver never holds the annotation columns.

The sample table is the inputs' columns, the download columns, the annotation columns and the decision
columns, one row per input row (:mod:`curate.select.samples`). A build holds the first two and the
decisions (a few hundred bytes a row); the annotation columns (hashes, language scores, the 1,792-byte
thumbnail: several KB a row together) are read from the stored annotation shards for one batch of
``BATCH_ROWS`` sample rows at a time, each shard a batch needs read once, its chosen columns only. So
the memory this takes is a batch and a shard's columns, whatever the pool's size. The table is the one
:func:`curate.select.samples.assemble` makes in memory, in row groups of ``BATCH_ROWS`` rows.

A rerun that decides the same table does not rewrite the file: it is read back a batch at a time and
compared, and writing stops nothing that reads it (the manifest goes first when the table changes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.core import batches as parquet_batches
from curate.core import storage
from curate.select.samples import Fates, sample_table

log = logging.getLogger(__name__)

BATCH_ROWS = 16_384  # sample rows per batch and per row group (with thumbnails, ~40 MB)


class StoredRows:
    """Rows of a table stored as parquet files (in row order) read by row number, ``columns`` only."""

    def __init__(self, files: list[str], columns: list[str], fix: str | None = None):
        self.files, self.columns, self.fix = files, columns, fix
        self.offsets = np.cumsum([0] + [_num_rows(f) for f in files])
        self.types = _types(files[0], columns) if files else {}
        self._cached: tuple[int, pa.Table] | None = None

    def _read(self, k: int) -> pa.Table:
        if self._cached is None or self._cached[0] != k:
            self._cached = None  # the previous file goes before the next is read
            # One chunk a column (a no-op for a file of one row group): a take from several chunks would
            # first join the file's whole column.
            self._cached = (k, storage.read_parquet(self.files[k], self.columns, self.fix).combine_chunks())
        return self._cached[1]

    def take(self, rows: np.ndarray) -> dict[str, pa.ChunkedArray]:
        """``columns`` at ``rows`` (row numbers of the whole table; -1: a null row), each file read once.

        Rows that run through the files in order (a build's annotation rows follow its input rows, but for
        a failed download's null) are taken from each file straight into place, one chunk a file: each
        value is copied once, and the writer joins the chunks. Rows in another order are gathered a file at
        a time, then put in order."""
        rows = np.asarray(rows, np.int64)
        file_of = np.where(rows >= 0, np.searchsorted(self.offsets, rows, side="right") - 1, -1)
        listed = file_of[file_of >= 0]
        if not len(listed):
            return {name: pa.chunked_array([pa.nulls(len(rows), self.types[name])]) for name in self.columns}
        if (listed[1:] >= listed[:-1]).all():
            return self._in_order(rows, file_of, int(listed[0]))
        return self._gathered(rows, file_of)

    def _in_order(self, rows: np.ndarray, file_of: np.ndarray, first: int) -> dict[str, pa.ChunkedArray]:
        # A null row goes with the file of the last row before it (the first file for leading nulls).
        last = np.maximum.accumulate(np.where(file_of >= 0, np.arange(len(rows)), -1))
        piece = np.where(last >= 0, file_of[np.maximum(last, 0)], first)
        chunks: dict[str, list] = {name: [] for name in self.columns}
        for k, start, stop in _runs(piece):
            part = self._read(k).take(_indices(rows[start:stop], self.offsets[k]))
            for name in self.columns:
                chunks[name] += part.column(name).chunks
        return {name: pa.chunked_array(chunks[name], self.types[name]) for name in self.columns}

    def _gathered(self, rows: np.ndarray, file_of: np.ndarray) -> dict[str, pa.ChunkedArray]:
        valid = np.flatnonzero(file_of >= 0)
        order = np.argsort(file_of[valid], kind="stable")
        pos, files = valid[order], file_of[valid][order]
        parts = [self._read(k).take(_indices(rows[pos[a:b]], self.offsets[k])) for k, a, b in _runs(files)]
        at = np.full(len(rows), -1, np.int64)
        at[pos] = np.arange(len(pos))
        index = pa.array(at, pa.int64(), mask=at < 0)
        out = {}
        for name in self.columns:
            joined = pa.concat_arrays([c for p in parts for c in p.column(name).chunks])
            out[name] = pa.chunked_array([joined.take(index)])
        return out


def _indices(rows: np.ndarray, offset: int) -> pa.Array:
    """Row numbers of one file from the whole table's (``offset``: the file's first row); -1 stays null."""
    return pa.array(np.where(rows >= 0, rows - offset, 0), pa.int64(), mask=rows < 0)


def _runs(values: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(value, start, stop) of each run of equal values in a sorted array."""
    if not len(values):
        return
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    stops = np.r_[starts[1:], len(values)]
    yield from zip(values[starts].tolist(), starts.tolist(), stops.tolist(), strict=True)


def _num_rows(url: str) -> int:
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def _types(url: str, columns: list[str]) -> dict[str, pa.DataType]:
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        stored = pq.ParquetFile(f).schema_arrow
    return {name: stored.field(name).type for name in columns}


def batches(
    inputs: pa.Table | str, downloads: pa.Table, fates: Fates, annotations: StoredRows, fix: str | None = None
) -> Iterator[pa.Table]:
    """The sample table, ``BATCH_ROWS`` rows at a time (one empty batch for an empty table). ``inputs``: the
    input table, or the URL of the parquet file that holds it, read here a batch at a time (so the URLs and
    captions, ~100 B a row, are never held whole; ``fix``: what its error says to do if it is damaged)."""
    n = fates.num_rows
    for start, part in zip(range(0, max(n, 1), BATCH_ROWS), _input_batches(inputs, n, fix), strict=True):
        k = min(BATCH_ROWS, n - start)
        if part.num_rows != k:
            raise RuntimeError(f"the inputs changed while the samples were written: {part.num_rows} rows, not {k}")
        ann = annotations.take(fates.a_rows[start : start + k])
        decisions = {name: col.slice(start, k) for name, col in fates.columns.items()}
        yield sample_table(part, downloads, fates.d_rows[start : start + k], ann, decisions)


def _input_batches(inputs: pa.Table | str, n: int, fix: str | None) -> Iterator[pa.Table]:
    if isinstance(inputs, pa.Table):
        yield from (inputs.slice(start, BATCH_ROWS) for start in range(0, max(n, 1), BATCH_ROWS))
    elif n == 0:
        yield parquet_batches.open_parquet(inputs, fix).schema_arrow.empty_table()
    else:
        yield from parquet_batches.exact(parquet_batches.iter_parquet(inputs, fix=fix), BATCH_ROWS)


def holds(path: str, tables: Iterator[pa.Table], rows: int) -> bool:
    """Does ``path`` hold exactly the table ``tables`` yields (``rows`` rows)? Read back a batch at a time;
    a missing or damaged file does not (it is derived: it gets written again)."""
    if not storage.exists(path):
        return False
    try:
        with storage.local_copy(path) as local:
            # Without pre-buffering and reader threads the reader holds about a batch, not the file.
            stored = pq.ParquetFile(local, page_checksum_verification=True, pre_buffer=False)
            if stored.metadata.num_rows != rows:
                return False
            reader, pending = stored.iter_batches(batch_size=BATCH_ROWS, use_threads=False), []
            for mine in tables:
                if not stored.schema_arrow.equals(mine.schema) or not _next(reader, pending, mine.num_rows).equals(
                    mine
                ):
                    return False
            return True
    except (OSError, pa.ArrowException) as e:
        log.warning(f"{path}: unreadable ({str(e).splitlines()[0][:200]}); computing it again")
        return False


def _next(reader: Iterator[pa.RecordBatch], pending: list[pa.RecordBatch], rows: int) -> pa.Table:
    """The next ``rows`` rows of ``reader`` (``pending``: what was read past the last call's rows)."""
    have = sum(b.num_rows for b in pending)
    while have < rows and (batch := next(reader, None)) is not None:
        pending.append(batch)
        have += batch.num_rows
    table = pa.Table.from_batches(pending) if pending else None
    pending.clear()
    if table is None:
        return pa.table({})
    if table.num_rows > rows:
        pending.extend(table.slice(rows).to_batches())
    return table.slice(0, rows)


def write(path: str, tables: Iterator[pa.Table]) -> None:
    """Write the batches as one parquet file with page checksums, committed as :func:`storage.output` commits."""
    with storage.output(path) as tmp:
        writer = None
        try:
            for table in tables:
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, write_page_checksum=True)
                writer.write_table(table.combine_chunks(), row_group_size=BATCH_ROWS)
        finally:
            if writer is not None:
                writer.close()
