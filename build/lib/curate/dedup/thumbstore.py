"""Thumbnails of a pool in a local scratch file, read back a block of rows at a time.

The near-copy search (:mod:`curate.dedup.copies`) reads every decoded image's thumbnail (1,792 bytes)
and a search vector derived from it (768 bytes): 512 MB for 200,000 images, 2.5 GB for a million,
which it held whole. Here both are written once, in row order, to files under the scratch directory,
and each step reads only the rows it works on (a block of rows, one inverted-file cell, a block of
candidate pairs) with ``pread``: the process holds a block, whatever the pool's size, and the
arithmetic on each block is the in-memory path's. The files stay on the node that wrote them; a Ray task on
another node that reads one (a search or verification job fanned out over the cluster) reads a replica
pulled to its own node's scratch directory (:mod:`curate.core.nodefiles`), removed with the files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.core import nodefiles, schema, scratch

HERE = "here"  # a Spilled's origin when not given: the Ray node of the process that makes it, if any


class Spilled:
    """Rows of an array in a file, read by slice or by row numbers (a copy each time). ``part``: the
    slice of each row's values this view shows (a thumbnail's colour or grey bytes), shaped ``row_shape``.
    ``origin``: the Ray node whose disk holds the file; a task on another node reads a replica of it
    (:func:`curate.core.nodefiles.local`), so jobs that carry it can run anywhere in the cluster."""

    def __init__(
        self, path: Path, dtype, row_shape: tuple[int, ...], rows: int, part=slice(None), full=None, origin=HERE
    ):
        self.path, self.dtype, self.row_shape, self.rows, self.part = path, np.dtype(dtype), row_shape, rows, part
        self.full_shape = row_shape if full is None else full  # a stored row's shape (a view's is a part of it)
        self.origin = nodefiles.this_node() if origin == HERE else origin

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, key) -> np.ndarray:
        """Rows by slice or row numbers, read with ``pread`` (runs of consecutive rows in one call). Not
        through a memory map: a fault maps the pages around it too, and a block of scattered rows then
        held most of the file as resident memory (300 MB of 330 at 200,000 thumbnails)."""
        return self._shaped(*self._read(key))

    def _read(self, key) -> tuple[np.ndarray, np.ndarray | None]:
        """(the distinct stored rows ``key`` names, whole, as bytes; each wanted row's place among them, or
        None where ``key`` names each row once, in order)."""
        width = self.dtype.itemsize * int(np.prod(self.full_shape))
        if isinstance(key, slice):
            start, stop, _ = key.indices(self.rows)
            wanted = np.arange(start, max(start, stop))
        else:
            wanted = np.asarray(key, np.int64)
        if len(wanted) < 2 or (np.diff(wanted) > 0).all():  # ascending and distinct already (a cell, a block)
            rows, inverse = wanted, None
        else:
            rows, inverse = np.unique(wanted, return_inverse=True)
        buf = np.empty((len(rows), width), np.uint8)
        if len(rows):
            starts = np.flatnonzero(np.r_[True, np.diff(rows) != 1])
            stops = np.r_[starts[1:], len(rows)]
            size = self.rows * width
            with open(nodefiles.local(Path(self.path), self.origin, size), "rb", buffering=0) as f:
                fd = f.fileno()
                for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
                    data = os.pread(fd, (b - a) * width, int(rows[a]) * width)
                    buf[a:b] = np.frombuffer(data, np.uint8).reshape(b - a, width)
        return buf, None if inverse is None else inverse.reshape(-1)

    def _shaped(self, buf: np.ndarray, inverse: np.ndarray | None) -> np.ndarray:
        flat = buf.view(self.dtype).reshape(len(buf), int(np.prod(self.full_shape)))
        if inverse is None:  # every row once, in order
            part = flat if self.part == slice(None) else flat[:, self.part]
            return part.reshape(len(buf), *self.row_shape)
        return flat[inverse, self.part].reshape(len(inverse), *self.row_shape)

    def view(self, part: slice, row_shape: tuple[int, ...]) -> Spilled:
        return Spilled(self.path, self.dtype, row_shape, self.rows, part, self.full_shape, self.origin)


def take(views: tuple, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """``view[rows]`` for each of ``views``; views of one spilled file (a thumbnail's colour and grey
    parts) read each row once for all of them."""
    first = views[0]
    if all(isinstance(v, Spilled) and v.path == first.path and v.full_shape == first.full_shape for v in views):
        buf, inverse = first._read(rows)
        return tuple(v._shaped(buf, inverse) for v in views)
    return tuple(v[rows] for v in views)


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
    with scratch.directory("thumbs") as d:
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
        try:
            yield (np.concatenate(rows) if rows else np.zeros(0, np.int64)), store, d
        finally:
            nodefiles.drop(d)  # replicas other nodes pulled of its files (the search vectors' too)
