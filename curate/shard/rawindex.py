"""Pass 1 of band sharding: where each sample's image lies in its raw tar, one small table per raw shard.

``DIR/raw/_index/NNNNN.parquet`` holds ``key``, ``ext``, ``offset``, ``size`` for every image member of
``raw/NNNNN.tar`` (img2dataset's ``<key>.<ext>`` names, and names in folders or with upper-case
extensions from other writers; a later member of one name wins, as on extraction). Each is a unit of
:mod:`curate.core.runner` fingerprinted by the tar's size and version, so a rerun or a re-cut reads no
tar again, and a re-downloaded tar is indexed anew. Header checksums are verified; a tar that cannot
be read is an :class:`~curate.core.errors.InputError` naming it, raised before any band shard changes.

With the index joined to the sample table, each band shard (pass 2) reads exactly its samples' bytes
— ``pread`` locally, ranged GETs on object stores — so memory is bounded by one band shard however
large the pool, and no process maps a raw tar (the index pass reads header blocks only).
"""

from __future__ import annotations

import hashlib
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import runner, schema, storage
from curate.core.errors import InputError
from curate.core.tarscan import scan_file
from curate.core.tarstream import IMAGE_EXTS, Members

INDEX = "_index"
INDEX_SCHEMA = pa.schema([("key", pa.string()), ("ext", pa.string()), ("offset", pa.int64()), ("size", pa.int64())])


def index_dir(raw_dir: str) -> str:
    return storage.join(raw_dir, INDEX)


def _rpartition(strings: pa.Array, sep: str) -> tuple[pa.Array, pa.Array, pa.Array]:
    """``str.rpartition`` column-wise: (head, tail, whether ``sep`` was found); not found: ("", whole)."""
    parts = pc.split_pattern(strings, sep, max_splits=1, reverse=True)
    ends = parts.offsets.to_numpy()
    values = parts.values
    found = pc.equal(pc.list_value_length(parts), 2)
    head = pc.if_else(found, values.take(pa.array(ends[:-1])), "")
    return head, values.take(pa.array(ends[1:] - 1)), found


def _entries(members: Members) -> pa.Table:
    """Image members as (key, ext, offset, size), preferring an exact ``<key>.<ext>`` name per key.

    The rare names (in folders, upper-case extensions) rank after every exact one; among members of
    one key and rank a later one wins, as on extraction. Keys come in the order they first appear.
    Column-wise: a tar of 10,000 samples is 30,000 members, too many for a loop per member.
    """
    names = members.names
    exts = pa.array(IMAGE_EXTS, pa.string())
    stem, ext, dot = _rpartition(names, ".")
    exact = pc.index_in(ext, value_set=exts)
    plain = pc.and_(exact.is_valid(), pc.invert(pc.match_substring(stem, "/")))
    # The rest: the file name in its folder, the extension in lower case (ASCII, as every image one is).
    lower = pc.ascii_lower(ext)
    folded = pc.index_in(lower, value_set=exts)
    keep = pc.or_(plain, pc.and_(dot, folded.is_valid()))
    table = pa.table(
        {
            "key": pc.if_else(plain, stem, _rpartition(stem, "/")[1]),
            "ext": pc.if_else(plain, ext, lower),
            "offset": pa.array(members.offsets, pa.int64()),
            "size": pa.array(members.sizes, pa.int64()),
            "rank": pc.if_else(plain, exact, pc.add(folded, len(IMAGE_EXTS))),
            "pos": pa.array(np.arange(len(names), dtype=np.int64)),
        }
    ).filter(keep)
    if pc.count_distinct(table.column("key")).as_py() < table.num_rows:
        table = _best_per_key(table)
    return table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)


def _best_per_key(table: pa.Table) -> pa.Table:
    """One row per key: the lowest rank, the last of those; keys in the order they first appear."""
    table = table.take(pc.sort_indices(table, [("key", "ascending"), ("rank", "ascending"), ("pos", "descending")]))
    key = table.column("key").combine_chunks()
    starts = np.flatnonzero(np.r_[True, pc.not_equal(key[1:], key[:-1]).to_numpy(zero_copy_only=False)])
    first_seen = np.minimum.reduceat(table.column("pos").to_numpy(), starts)
    return table.take(pa.array(starts[np.argsort(first_seen)]))


def index_one(raw_dir: str, unit: runner.Unit) -> dict:
    """Index ``raw/<unit.name>.tar`` (a runner unit function)."""
    url = storage.join(raw_dir, f"{unit.name}.tar")
    try:
        # Header blocks only, read, not mapped: a map of the tar held all of it as this worker's memory.
        with storage.local_copy(url) as local:
            table = _entries(scan_file(local, where=url))
    except (OSError, tarfile.TarError) as e:
        raise InputError(f"raw shard unreadable: {e}", path=url) from None
    storage.write_parquet(table, storage.join(index_dir(raw_dir), f"{unit.name}.parquet"))
    return {"images": table.num_rows}


def _unit(raw_dir: str, shard: str) -> runner.Unit:
    try:
        st = storage.stamp(storage.join(raw_dir, f"{shard}.tar"))
    except FileNotFoundError:
        raise InputError("raw shard missing", path=storage.join(raw_dir, f"{shard}.tar")) from None
    fp = hashlib.blake2b(f"{st}".encode(), digest_size=16).hexdigest()
    return runner.Unit(shard, fp, outputs=(f"{shard}.parquet",))


def ensure(raw_dir: str, shards: list[str], executor: runner.Executor, progress: bool = False) -> None:
    """Index every raw shard in ``shards`` that has no current index; raise InputError naming unreadable tars."""
    todo = [_unit(raw_dir, s) for s in sorted(set(shards))]
    report = runner.run(
        index_dir(raw_dir), todo, _Indexer(raw_dir), executor, desc="indexing raw shards", progress=progress
    )
    report.raise_failures("raw shards")


class _Indexer:
    """``index_one`` bound to its raw dir (picklable, so Ray tasks can run it)."""

    def __init__(self, raw_dir: str):
        self.raw_dir = raw_dir

    def __call__(self, root: str, unit: runner.Unit) -> dict:
        return index_one(self.raw_dir, unit)


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
