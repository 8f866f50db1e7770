"""Thumbnails of a pool in a local scratch file, read back a block of rows at a time.

The near-copy search (:mod:`curate.dedup.copies`) reads every decoded image's thumbnail (1,792 bytes)
and a search vector derived from it (768 bytes): 512 MB for 200,000 images, 2.5 GB for a million,
which it held whole. Here both are written once, in row order, to files under the scratch directory,
and each step reads only the rows it works on (a block of rows, one inverted-file cell, a block of
candidate pairs) through a short-lived memory map, copied out and unmapped: the process holds a
block, whatever the pool's size, and the arithmetic on each block is the in-memory path's.
"""

from __future__ import annotations

import contextlib
import mmap
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.core import schema, storage


class Spilled:
    """Rows of an array in a file, read by slice or by row numbers (a copy each time). ``part``: the
    slice of each row's values this view shows (a thumbnail's colour or grey bytes), shaped ``row_shape``."""

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...], rows: int, part: slice = slice(None)):
        self.path, self.dtype, self.row_shape, self.rows, self.part = path, np.dtype(dtype), row_shape, rows, part

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, key) -> np.ndarray:
        if not self.rows:
            return np.empty((0, *self.row_shape), self.dtype)
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            a = np.frombuffer(m, self.dtype).reshape(self.rows, -1)
            try:
                out = np.array(a[key][:, self.part])
            finally:
                del a  # the map closes only once no array looks into it
        return out.reshape(len(out), *self.row_shape)

    def view(self, part: slice, row_shape: tuple[int, ...]) -> Spilled:
        return Spilled(self.path, self.dtype, row_shape, self.rows, part)


def write_rows(path: Path, blocks: Iterable[np.ndarray], dtype, row_shape: tuple[int, ...]) -> Spilled:
    """Write ``blocks`` (arrays of rows) to ``path`` in order; the rows read back as a :class:`Spilled`."""
    rows = 0
    with open(path, "wb") as f:
        for b in blocks:
            np.ascontiguousarray(b, dtype=dtype).tofile(f)
            rows += len(b)
    return Spilled(path, dtype, row_shape, rows)


def _stored_rows(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(rows with a thumbnail, their bytes (k, THUMB_BYTES) uint8) of one chunk of a ``thumb`` column."""
    size = schema.THUMB_BYTES
    raw = np.frombuffer(column.buffers()[1], np.uint8)[column.offset * size : (column.offset + len(column)) * size]
    raw = raw.reshape(len(column), size)
    if not column.null_count:
        return np.arange(len(column)), raw
    valid = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
    return valid, raw[valid]


@contextlib.contextmanager
def spilled_thumbs(chunks: Iterable[pa.Array | pa.ChunkedArray]) -> Iterator[tuple[np.ndarray, Spilled, str]]:
    """``(rows, thumbs, directory)``: the rows (numbered over all ``chunks`` in order) that have a
    thumbnail, their thumbnails' bytes in a scratch file, and the scratch directory (for files derived
    from them); all removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="clip-tiers-thumbs-", dir=storage.scratch_dir()) as d:
        rows, at = [], 0

        def blocks():
            nonlocal at
            for chunk in chunks:
                for arr in chunk.chunks if isinstance(chunk, pa.ChunkedArray) else [chunk]:
                    valid, raw = _stored_rows(arr)
                    rows.append(valid + at)
                    at += len(arr)
                    yield raw

        store = write_rows(Path(d) / "thumbs.u8", blocks(), np.uint8, (schema.THUMB_BYTES,))
        yield (np.concatenate(rows) if rows else np.zeros(0, np.int64)), store, d
