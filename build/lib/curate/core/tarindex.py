"""Where each image lies in a raw tar: ``DIR/raw/_index/NNNNN.parquet``, pass 1 of band sharding.

Each holds ``key``, ``ext``, ``offset``, ``size`` for every image member of ``raw/NNNNN.tar``
(img2dataset's ``<key>.<ext>`` names, and names in folders or with upper-case extensions from other
writers; a later member of one name wins, as on extraction), and is a unit of
:mod:`curate.core.runner` fingerprinted by the tar's size and version: a re-downloaded tar is indexed
anew. The annotate stage writes it as it reads each raw tar (:func:`record`: it has scanned the headers
already, and on object storage it has the tar's only download); the shard stage indexes any tar without
a current one (:mod:`curate.shard.rawindex`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import runner, storage
from curate.core.errors import InputError
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


def entries(members: Members) -> pa.Table:
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


def unit(raw_dir: str, shard: str) -> runner.Unit:
    """``shard``'s index unit, fingerprinted by its tar's stamp as it is now (take it before reading the tar)."""
    try:
        st = storage.stamp(storage.join(raw_dir, f"{shard}.tar"))
    except FileNotFoundError:
        raise InputError("raw shard missing", path=storage.join(raw_dir, f"{shard}.tar")) from None
    fp = hashlib.blake2b(f"{st}".encode(), digest_size=16).hexdigest()
    return runner.Unit(shard, fp, outputs=(f"{shard}.parquet",))


def write(raw_dir: str, shard: str, members: Members) -> dict:
    """Write ``shard``'s index from its tar's scanned ``members`` (the runner's unit work)."""
    table = entries(members)
    storage.write_parquet(table, storage.join(index_dir(raw_dir), f"{shard}.parquet"))
    return {"images": table.num_rows}


def record(raw_dir: str, todo: runner.Unit, members: Members) -> None:
    """``todo``'s index and its marker from the members of its tar, read after ``todo`` was made (a tar
    rewritten in between leaves an index the shard stage finds stale), unless a current one is there."""
    if not runner.finished(index_dir(raw_dir), todo):
        runner.execute(index_dir(raw_dir), todo, lambda root, u: write(raw_dir, u.name, members))
