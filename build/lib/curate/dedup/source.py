"""The rows of the annotation table a batch at a time, for the decisions that must not hold the pool.

:class:`Source` reads chosen columns of an in-memory table, or of the annotation parquet files (local
paths or storage URLs: ranged reads of each row group's columns) a batch at a time, their page
checksums verified, optionally only the rows whose image decoded, numbered in order among themselves:
the partitioned dedup (:mod:`curate.dedup.partitioned`) reads every pass from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core.batches import iter_parquet, open_parquet
from curate.core.integrity import DamagedFile

BATCH_ROWS = 1 << 18


class Source:
    """The rows of the annotation table in a fixed order, read as batches of chosen columns: an
    in-memory table, or parquet files (paths or storage URLs) read a row group at a time, their page
    checksums verified. ``where_null``: only the files' rows where that column is null are the source's
    rows (e.g. those whose image decoded), numbered in order among themselves; ``kept`` then marks them
    among all the rows read (one bool a row), else it is None."""

    def __init__(
        self,
        data: pa.Table | Sequence[str],
        batch_rows: int = BATCH_ROWS,
        where_null: str | None = None,
        fix: str | None = None,
    ):
        self.batch_rows, self.where_null, self.fix = batch_rows, where_null, fix
        self.kept: np.ndarray | None = None
        if isinstance(data, pa.Table):
            if where_null is not None:
                self.kept = _is_null(data.column(where_null))
                data = data.filter(pa.array(self.kept))
            self.table, self.paths = data, []
            self.schema, self.num_rows = data.schema, data.num_rows
        else:
            self.table, self.paths = None, [str(p) for p in data]
            files = [self._open(p) for p in self.paths]
            self.schema = files[0].schema_arrow if files else pa.schema([])
            if where_null is None:
                self.num_rows = sum(f.metadata.num_rows for f in files)
            else:
                masks = [
                    _is_null(self._read(p, f, [where_null]).column(0)) for p, f in zip(self.paths, files, strict=True)
                ]
                self.kept = np.concatenate([np.zeros(0, bool), *masks])
                self.num_rows = int(self.kept.sum())

    @property
    def names(self) -> list[str]:
        return self.schema.names

    def _open(self, path: str) -> pq.ParquetFile:
        # Without pre-buffering and reader threads a read holds about one batch, not a row group's
        # column chunks several times over (measured: 150 MB less at 256k rows of hashes).
        return open_parquet(path, self.fix)

    def _read(self, path: str, f: pq.ParquetFile, columns: list[str]) -> pa.Table:
        try:
            return f.read(columns=columns, use_threads=False)
        except (OSError, pa.ArrowException) as e:
            raise DamagedFile(path, f"unreadable: {e}", self.fix) from None

    def batches(self, columns: Sequence[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(first row, batch) with those of ``columns`` that exist, in row order."""
        cols = [c for c in columns if c in self.names]
        r0 = 0
        if self.table is not None:
            parts: Iterator[pa.RecordBatch] = iter(self.table.select(cols).to_batches(self.batch_rows))
        else:
            parts = self._file_batches(cols)
        for b in parts:
            yield r0, b
            r0 += b.num_rows

    def _file_batches(self, cols: list[str]) -> Iterator[pa.RecordBatch]:
        where = self.where_null
        read = cols if where is None or where in cols else [*cols, where]
        for path in self.paths:
            for b in iter_parquet(path, self.batch_rows, read, self.fix):
                if where is not None:
                    b = b.filter(pc.is_null(b.column(where))).select(cols)
                if b.num_rows:
                    yield b

    def read(self, columns: Sequence[str]) -> pa.Table:
        """Those of ``columns`` that exist, whole (typed and empty when no row is left)."""
        cols = [c for c in columns if c in self.names]
        schema = pa.schema([self.schema.field(c) for c in cols])
        return pa.Table.from_batches([b for _, b in self.batches(cols)], schema=schema)


def _is_null(col) -> np.ndarray:
    return pc.is_null(col).to_numpy(zero_copy_only=False)
