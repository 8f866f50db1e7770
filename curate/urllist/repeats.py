"""A staged URL list's parts, and the rows whose uid repeats across all of them.

Each staging job (:mod:`curate.urllist.stream`) writes its rows to a :class:`Part` and spills each row's
64-bit uid hash to :class:`Keys` (64 bucket files by the hash's top bits, one spill per process), so that
:func:`repeated_rows` holds one bucket of every spill at a time, not every row's key. The rows whose hash
repeats, a few, are read back and compared as strings: duplicate uids are refused
(:func:`reject_duplicate_uids`), a repeated (url, caption) pair is numbered (:func:`repeat_uids`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.core import schema
from curate.core.buckets import Buckets
from curate.core.errors import InputError


@dataclass
class Part:
    """One staging job's rows, canonical, in scratch files."""

    file: str  # the input file
    first_row: int  # in the file, of the part's first row (a piece of a parquet file's row groups)
    paths: list[Path]  # its canonical rows, Arrow IPC files in order (a new one where its columns changed)
    schema: pa.Schema  # every one's columns unified
    rows: int
    had_uid: bool

    def batches(self) -> Iterator[pa.RecordBatch]:
        for path in self.paths:
            with pa.OSFile(str(path)) as src:  # read, not mapped: mapped pages stay resident
                reader = pa.ipc.open_file(src)
                for k in range(reader.num_record_batches):
                    yield reader.get_batch(k)


KEY_BUCKETS, KEY_SHIFT = 64, 58  # a key's bucket: its top 6 bits
KEY_RECORD = np.dtype([("key", "<u8"), ("row", "<i8")])  # row: part << ROW_BITS | row in the part
ROW_BITS = 40


class Keys:
    """Each row's 64-bit key and where the row is, spilled to one of 64 bucket files by the key's top
    bits, so that finding the rows whose key repeats holds one bucket, not every row's key."""

    def __init__(self, directory: Path):
        self.dir = directory
        directory.mkdir()
        self.buckets = Buckets(directory, "keys", KEY_BUCKETS, KEY_RECORD)

    def add(self, keys: np.ndarray, part: int, row0: int) -> None:
        """``keys`` of rows ``row0``, ``row0 + 1``, ... of part number ``part``."""
        rec = np.empty(len(keys), KEY_RECORD)
        rec["key"], rec["row"] = keys, (part << ROW_BITS) + np.arange(row0, row0 + len(keys))
        self.buckets.add(rec, (keys >> np.uint64(KEY_SHIFT)).astype(np.int64))


def repeated_rows(dirs: list[Path], sizes: list[int]) -> np.ndarray:
    """The list's rows, ascending, whose key another row shares, from the keys spilled to ``dirs`` (by
    one process or several); one bucket of every spill at a time."""
    first = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)[:-1]]).astype(np.int64)
    spills = [Buckets(d, "keys", KEY_BUCKETS, KEY_RECORD, fresh=False) for d in dirs]
    found = [np.zeros(0, np.int64)]
    for b in range(KEY_BUCKETS):
        rec = np.concatenate([s.take(b) for s in spills])
        s = np.sort(rec["key"])
        at = rec["row"][np.isin(rec["key"], s[1:][s[1:] == s[:-1]])]
        found.append(first[at >> ROW_BITS] + (at & ((1 << ROW_BITS) - 1)))
    return np.sort(np.concatenate(found))


def gather(parts: list[Part], rows: np.ndarray, columns: list[str]) -> pa.Table:
    """``columns`` at the ascending global ``rows``, read back from the parts a batch at a time."""
    got, r0 = [], 0
    for p in parts:
        lo, hi = np.searchsorted(rows, [r0, r0 + p.rows])
        if hi > lo:
            at = 0
            for b in p.batches():
                mine = rows[lo:hi] - r0 - at
                mine = mine[(mine >= 0) & (mine < b.num_rows)]
                if len(mine):
                    got.append(pa.Table.from_batches([b.select(columns).take(pa.array(mine))]))
                at += b.num_rows
        r0 += p.rows
    names = {c: pa.string() for c in columns}
    return (
        pa.concat_tables([t.cast(pa.schema(names)) for t in got])
        if got
        else pa.table({c: pa.array([], t) for c, t in names.items()})
    )


def reject_duplicate_uids(parts: list[Part], rows: np.ndarray) -> None:
    """Raise naming the first duplicated uid (in order of first appearance) and its first two rows."""
    if not len(rows):
        return
    uids = gather(parts, rows, [schema.UID]).column(0).to_pylist()
    first_rows: dict[str, list[int]] = {}
    for r, u in zip(rows.tolist(), uids, strict=True):
        first_rows.setdefault(u, []).append(r)
    dups = {u: rs for u, rs in first_rows.items() if len(rs) > 1}
    if not dups:
        return  # equal hashes of different uids
    first = min(dups, key=lambda u: dups[u][0])
    (f1, r1), (f2, r2) = (locate(r, parts) for r in dups[first][:2])
    raise InputError(
        f"duplicate uid {first!r} at {f1} row {r1} and {f2} row {r2} ({len(dups)} duplicated uid(s) in all); "
        "uids must be unique"
    )


def repeat_uids(parts: list[Part], rows: np.ndarray) -> dict[int, str]:
    """Row -> uid of the second and later occurrences of a repeated (url, caption) pair."""
    if not len(rows):
        return {}
    t = gather(parts, rows, [schema.UID, schema.URL, schema.CAPTION])
    seen: dict[str, int] = {}
    out = {}
    for r, base, url, cap in zip(rows.tolist(), *(t.column(k).to_pylist() for k in range(3)), strict=True):
        n = seen.get(base, 0)
        seen[base] = n + 1
        if n:
            out[r] = schema.uid_hash(url, cap, n)
    return out


def locate(row: int, parts: list[Part]) -> tuple[str, int]:
    for p in parts:
        if row < p.rows:
            return p.file, p.first_row + row + 1
        row -= p.rows
    raise IndexError(row)
