"""Rows scattered into partition files by a key's hash, each file read back alone (the partitioned dedup's
spill, :mod:`curate.dedup.partitioned`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from curate.core.nodefiles import NodeFile


class Spill:
    """Rows scattered into ``parts`` Arrow IPC files by a partition id, each read back alone. Rows keep
    their order within a partition (batches arrive in row order, and the split is stable)."""

    def __init__(self, directory: Path, name: str, parts: int):
        self.paths = [directory / f"{name}-{p:05d}.arrow" for p in range(parts)]
        self.writers: list[pa.ipc.RecordBatchFileWriter | None] = [None] * parts

    def add(self, batch: pa.RecordBatch | pa.Table, pid: np.ndarray) -> None:
        # A stable sort of 16-bit ids is a radix sort in numpy: linear, so scattering stays cheap.
        order = np.argsort(pid.astype(np.uint16), kind="stable")
        counts = np.bincount(pid, minlength=len(self.paths))
        batch = batch.take(pa.array(order))
        start = 0
        for p in np.flatnonzero(counts):
            if self.writers[p] is None:
                self.writers[p] = pa.ipc.new_file(str(self.paths[p]), batch.schema)
            self.writers[p].write(batch.slice(start, counts[p]))
            start += counts[p]

    def close(self) -> None:
        for w in self.writers:
            if w is not None:
                w.close()

    def files(self) -> list[NodeFile]:
        """The non-empty partitions' files, for jobs to read (on any node of the cluster)."""
        self.close()
        return [NodeFile(str(p)) for p, w in zip(self.paths, self.writers, strict=True) if w is not None]

    def remove(self) -> None:
        for p in self.paths:
            p.unlink(missing_ok=True)

    def __iter__(self) -> Iterator[pa.Table]:
        """Each non-empty partition in turn, memory-mapped, its file removed once read."""
        self.close()
        for p, w in zip(self.paths, self.writers, strict=True):
            if w is None:
                continue
            with pa.memory_map(str(p)) as src:
                yield pa.ipc.open_file(src).read_all()
            p.unlink()


def part_of(keys: np.ndarray, parts: int) -> np.ndarray:
    """Partition of each 64-bit key: Fibonacci hashing (one multiply), so keys that differ only in a
    few bits, or only in low bits, still spread over all partitions."""
    mixed = (np.asarray(keys, np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return (mixed % np.uint64(parts)).astype(np.int64)


def string_part_of(values: pa.Array, parts: int) -> np.ndarray:
    # polars hashes strings in native code; the hash need only agree within this run.
    return (pl.Series(values).hash(seed=0).to_numpy() % np.uint64(parts)).astype(np.int64)
