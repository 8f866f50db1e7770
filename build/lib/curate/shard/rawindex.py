"""Pass 1 of band sharding for raw tars the annotate stage did not index: where each image lies.

The index (:mod:`curate.core.tarindex`: ``DIR/raw/_index/NNNNN.parquet``, one unit per raw tar,
fingerprinted by the tar's size and version) is written by the annotate stage as it reads each tar;
:func:`ensure` indexes any tar without a current one (a build from before, a re-downloaded tar), so a
rerun or a re-cut reads no tar again. Header checksums are verified; a tar that cannot be read is an
:class:`~curate.core.errors.InputError` naming it, raised before any band shard changes.

With the index joined to the sample table, each band shard (pass 2) reads exactly its samples' bytes
— ``pread`` locally, ranged GETs on object stores — so memory is bounded by one band shard however
large the pool, and no process maps a raw tar (the index pass reads header blocks only).
"""

from __future__ import annotations

import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import runner, schema, storage
from curate.core.errors import InputError
from curate.core.tarindex import index_dir, unit, write
from curate.core.tarscan import scan_file


def index_one(raw_dir: str, todo: runner.Unit) -> dict:
    """Index ``raw/<todo.name>.tar`` (a runner unit function)."""
    url = storage.join(raw_dir, f"{todo.name}.tar")
    try:
        # Header blocks only, read, not mapped: a map of the tar held all of it as this worker's memory.
        with storage.local_copy(url) as local:
            members = scan_file(local, where=url)
    except (OSError, tarfile.TarError) as e:
        raise InputError(f"raw shard unreadable: {e}", path=url) from None
    return write(raw_dir, todo.name, members)


def ensure(raw_dir: str, shards: list[str], executor: runner.Executor, progress: bool = False) -> None:
    """Index every raw shard in ``shards`` that has no current index; raise InputError naming unreadable tars."""
    todo = [unit(raw_dir, s) for s in sorted(set(shards))]
    report = runner.run(
        index_dir(raw_dir), todo, _Indexer(raw_dir), executor, desc="indexing raw shards", progress=progress
    )
    report.raise_failures("raw shards")


class _Indexer:
    """``index_one`` bound to its raw dir (picklable, so Ray tasks can run it)."""

    def __init__(self, raw_dir: str):
        self.raw_dir = raw_dir

    def __call__(self, root: str, todo: runner.Unit) -> dict:
        return index_one(self.raw_dir, todo)


def locations(raw_dir: str, rows: pa.Table) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """``ext``, ``offset`` and ``size`` of each row's image (``rows``: ``shard``, ``key`` and ``uid``), in
    row order; each raw tar's index read once.

    Raises :class:`InputError` naming the raw tar and uid of the first row whose image is not there.
    """
    n = rows.num_rows
    exts, ats = [], []  # the ext column in pieces, one a shard, and the rows each piece is for
    offset = np.zeros(n, np.int64)
    size = np.zeros(n, np.int64)
    shard_col = rows.column(schema.SHARD).combine_chunks()
    for shard in pc.unique(shard_col).to_pylist():
        at = np.flatnonzero(pc.equal(shard_col, shard).to_numpy(zero_copy_only=False))
        index = storage.read_parquet(storage.join(index_dir(raw_dir), f"{shard}.parquet"))
        keys = rows.column(schema.KEY).take(pa.array(at)).combine_chunks()
        pos = pc.index_in(keys, value_set=index.column("key").combine_chunks())
        if pos.null_count:
            i = int(np.flatnonzero(pos.is_null().to_numpy(zero_copy_only=False))[0])
            uid = rows.column(schema.UID)[int(at[i])].as_py()
            raise InputError(
                f"no image for key {keys[i].as_py()!r} (uid {uid})", path=storage.join(raw_dir, f"{shard}.tar")
            )
        p = pos.to_numpy(zero_copy_only=False)
        exts.append(index.column("ext").combine_chunks().take(pa.array(p)).cast(pa.string()))
        ats.append(at)
        offset[at] = index.column("offset").to_numpy()[p]
        size[at] = index.column("size").to_numpy()[p]
    # Column-wise, not a Python string per row: the pieces in shard order, put back in row order.
    order = np.concatenate(ats) if ats else np.zeros(0, np.int64)
    back = np.empty(n, np.int64)
    back[order] = np.arange(len(order))
    ext = pa.concat_arrays(exts).take(pa.array(back)) if exts else pa.nulls(n, pa.string())
    return ext, offset, size
