"""Records spilled to bucket files and read back a bucket at a time: for steps whose per-row state would
otherwise grow with the pool (a URL list's uid hashes, the near-copy search's cells and pairs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np


class Buckets:
    """Records appended to one of ``buckets`` files each, read back a bucket at a time, in bucket order
    (each bucket's records in the order they came), each file removed once read. An empty bucket is
    skipped."""

    def __init__(self, directory: Path, name: str, buckets: int, dtype, fresh: bool = True):
        """``fresh``: start empty (records are appended: none may be left from a search that stopped
        half-way); False: read the buckets another process spilled there."""
        self.paths = [Path(directory) / f"{name}-{b:05d}.bin" for b in range(buckets)]
        self.dtype = np.dtype(dtype)
        for p in self.paths if fresh else ():
            p.unlink(missing_ok=True)

    def add(self, records: np.ndarray, bucket: np.ndarray) -> None:
        if len(self.paths) == 1:
            with open(self.paths[0], "ab") as f:
                records.tofile(f)
            return
        counts = np.bincount(bucket, minlength=len(self.paths))
        starts = np.cumsum(counts) - counts
        records = records[np.argsort(bucket, kind="stable")]
        for b in np.flatnonzero(counts).tolist():
            with open(self.paths[b], "ab") as f:
                records[starts[b] : starts[b] + counts[b]].tofile(f)

    def __iter__(self) -> Iterator[np.ndarray]:
        for b in range(len(self.paths)):
            if self.paths[b].exists():
                yield self.take(b)

    def take(self, b: int) -> np.ndarray:
        """Bucket ``b``'s records (none if it is empty), its file removed."""
        p = self.paths[b]
        if not p.exists():
            return np.empty(0, self.dtype)
        records = np.fromfile(p, self.dtype)
        p.unlink()
        return records
