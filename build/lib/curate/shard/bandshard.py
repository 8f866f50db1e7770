"""Pass 2 of band sharding: one band shard, written from its samples' located image bytes (a runner unit).

The unit's rows say, per sample in write order, which raw tar holds its image and where (``ext``,
``offset``, ``size``, from :mod:`curate.shard.rawindex`). Each raw tar the shard draws from is read by
ranges, only this shard's samples' bytes: ``pread`` on local disk, concurrent ranged GETs on object
stores (neighbours less than ``MAX_GAP`` apart in one GET), and the images go to ``writev`` as views of
what was read. Memory is bounded by one band shard (and one raw tar's reads), whatever the pool. The
output is built on local disk — beside its final name, renamed into place, or in scratch and uploaded
in one piece — and its bytes depend only on the rows: the same samples in the same order give the same
tar, wherever it is written.
"""

from __future__ import annotations

import json
import math
import os
from json.encoder import encode_basestring

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curate.core import schema, storage
from curate.core.failpoints import failpoint
from curate.core.integrity import DIGEST
from curate.core.tarstream import TarWriter, coalesce

META_KEYS = (schema.BAND, schema.CAPTION, schema.UID, schema.URL, schema.QUALITY)
COLUMNS = [schema.UID, schema.URL, schema.CAPTION, schema.QUALITY, schema.BAND, schema.SHARD, schema.KEY]


def sample_meta(row: dict) -> bytes:
    """The sample's ``.json`` member: exactly ``json.dumps({uid, url, caption, quality, band},
    sort_keys=True, ensure_ascii=False)`` (:func:`metas` for one row)."""
    return metas(pa.Table.from_pylist([{k: row[k] for k in META_KEYS}]))[0].as_py().encode()


def metas(rows: pa.Table) -> pa.Array:
    """Every row's ``.json`` member (:func:`sample_meta`), as Arrow strings built column by column."""
    pieces: list = []
    for k in sorted(META_KEYS):  # json.dumps(sort_keys=True) order, its ", " and ": " separators
        value = _json_numbers(rows.column(k)) if k == schema.QUALITY else _json_strings(rows.column(k))
        pieces += [("{" if not pieces else ", ") + f'"{k}": ', value]
    return pc.binary_join_element_wise(*pieces, "}", "")


def _json_strings(col) -> pa.Array:
    """Each value as ``json.dumps`` writes a str or None (strings without escapes need only their quotes)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_string(col.type):
        col = col.cast(pa.string())  # a column of nulls only, large strings
    out = pc.binary_join_element_wise('"', col, '"', "")
    escape = _escaped(col)
    if escape is not None:
        mask = pa.array(escape)
        values = col.filter(mask).to_pylist()
        out = pc.replace_with_mask(out, mask, pa.array([encode_basestring(v) for v in values], pa.string()))
    return out.fill_null("null")


def _escaped(col: pa.Array) -> np.ndarray | None:
    """Which values json.dumps(ensure_ascii=False) escapes (a control character, a quote, a backslash),
    or None when none is: one pass over the column's bytes, not one regex match per value."""
    offsets = np.frombuffer(col.buffers()[1], np.int32, len(col) + 1, col.offset * 4)
    data = np.frombuffer(col.buffers()[2] or b"", np.uint8)[offsets[0] : offsets[-1]]
    bad = (data < 0x20) | (data == ord('"')) | (data == ord("\\"))
    if not bad.any():
        return None
    seen = np.concatenate([[0], np.cumsum(bad)])
    ends = offsets - offsets[0]
    return ((seen[ends[1:]] - seen[ends[:-1]]) > 0) & col.is_valid().to_numpy(zero_copy_only=False)


def _json_numbers(col) -> pa.Array:
    """Each value as ``json.dumps`` writes it: a finite float as ``repr``, null, NaN and the infinities by json.

    Arrow writes a double's shortest round-trip digits, as ``repr`` does; where ``repr`` writes them
    without an exponent (``1e-4 <= |x| < 1e16``) and Arrow did too, with a decimal point, the two texts
    are the same. The rest (whole numbers, tiny or huge ones, non-floats) go through Python.
    """
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_floating(col.type):
        return pa.array([_json_number(q) for q in col.to_pylist()], pa.string())
    col = col.cast(pa.float64())
    text = col.cast(pa.string())
    mag = np.abs(col.to_numpy(zero_copy_only=False))  # NaN where null
    plain = pc.and_(pc.match_substring(text, "."), pc.invert(pc.match_substring(text, "e"))).fill_null(False)
    other = ~((mag >= 1e-4) & (mag < 1e16) & plain.to_numpy(zero_copy_only=False))
    if other.any():
        fix = pa.array([_json_number(q) for q in col.filter(pa.array(other)).to_pylist()], pa.string())
        text = pc.replace_with_mask(text, pa.array(other), fix)
    return text


def _json_number(q) -> str:
    return float.__repr__(q) if type(q) is float and math.isfinite(q) else json.dumps(q)


# Ranges of one raw tar closer than this are read as one GET: about what a request's latency costs in
# bandwidth on S3 (~20 ms at ~50 MB/s). Where a band shard's samples lie densely in a tar (small pools,
# small images) this turns a GET per sample into a few; where they are sparse it changes nothing.
MAX_GAP = 1 << 20
MAX_BLOCK = 64 << 20
# On local disk a read costs a system call, not a round trip: only images whose tar neighbours (their
# caption and metadata members, a few kB) lie between them share one ``pread``.
LOCAL_GAP = 16 << 10


def _images(raw_dir: str, rows: pa.Table) -> list[bytes | memoryview]:
    """Each row's image, read by ranges of each raw tar (:func:`curate.core.storage.read_ranges`:
    ``pread`` locally, concurrent ranged GETs on object stores), neighbours in one read.

    Locally the images are views of blocks that hold little else (``LOCAL_GAP``), so memory is the band
    shard's image bytes. (The raw tars used to be mapped: a touched byte maps its whole page-cache folio,
    so a worker's RSS grew with the number of raw tars a shard draws from, i.e. with the pool.) Remote
    blocks may span a megabyte of other samples: each image is copied out and the blocks of one tar freed
    before the next tar is read."""
    local = storage.is_local(raw_dir)
    # Rows grouped by raw tar in one sort (tars in name order, rows in order within each): a scan of all
    # rows per tar cost rows x tars, and a shard of a large pool draws from up to one tar a sample.
    names, tar_of = np.unique(np.asarray(rows.column(schema.SHARD).to_pylist(), dtype=object), return_inverse=True)
    order = np.argsort(tar_of, kind="stable")
    bounds = np.searchsorted(tar_of[order], np.arange(len(names) + 1))
    offsets, sizes = rows.column("offset").to_numpy(), rows.column("size").to_numpy()
    out: list[bytes | memoryview] = [b""] * rows.num_rows
    for k, s in enumerate(names.tolist()):
        at = order[bounds[k] : bounds[k + 1]]
        blocks, block_of = coalesce(offsets[at], sizes[at], LOCAL_GAP if local else MAX_GAP, MAX_BLOCK)
        got = storage.read_ranges(storage.join(raw_dir, f"{s}.tar"), blocks)
        views = [memoryview(g) for g in got]
        for i, b, o, n in zip(at.tolist(), block_of.tolist(), offsets[at].tolist(), sizes[at].tolist(), strict=True):
            data = views[b][o - blocks[b][0] : o - blocks[b][0] + n]
            if len(data) != n:
                raise OSError(f"{s}.tar is shorter than its index says; index it again")
            out[i] = data if local else bytes(data)
        del got, views
    return out


def write_band_shard(dest: str, raw_dir: str, rows: pa.Table) -> tuple[int, dict]:
    """Write the band shard ``dest`` from ``rows`` (``COLUMNS`` + ext, offset, size, in write order);
    returns (samples, what :func:`curate.core.integrity.stamp` says of the bytes written: size, digest)."""
    images = _images(raw_dir, rows)
    uids, exts = rows.column(schema.UID).to_pylist(), rows.column("ext").to_pylist()
    names = [[f"{u}.{e}" for u, e in zip(uids, exts, strict=True)], [f"{u}.txt" for u in uids]]
    names.append([f"{u}.json" for u in uids])
    captions = rows.column(schema.CAPTION).combine_chunks().fill_null("").cast(pa.binary())
    digest = xxhash.xxh3_128()
    with storage.output(dest) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            w = TarWriter(fd, digest)
            w.add_columns(names, [images, captions, metas(rows).cast(pa.binary())])
            w.close()
        finally:
            os.close(fd)
    return rows.num_rows, {"size": w.bytes, DIGEST: digest.hexdigest()}


def pack(rows: pa.Table) -> bytes:
    """``rows`` as a zstd-compressed Arrow IPC stream (:func:`unpack` reads it).

    A band shard's rows (~160 kB for 1,000 samples) travel to its Ray task in ~40 kB: under the size Ray
    sends inside the task's request, instead of a round trip through the object store per task.
    """
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(rows)
    return sink.getvalue().to_pybytes()


def unpack(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


class BandShardWriter:
    """The runner's unit function for band shards: ``unit.args`` is ``(relative path, packed located rows)``."""

    def __init__(self, raw_dir: str):
        self.raw_dir = raw_dir

    def __call__(self, root: str, unit) -> dict:
        rel, packed = unit.args
        dest = storage.join(root, rel)
        n, stamp = write_band_shard(dest, self.raw_dir, unpack(packed))
        # Its stamp as written (integrity.stamp of the file, without reading it back); a store's object is
        # stamped by the runner once it is there (its size).
        files = {rel: stamp} if storage.is_local(dest) else None
        return {"samples": n, "bytes": stamp["size"], **({"files": files} if files else {})}


def after_shard(unit, info: dict) -> None:
    """Called in the driver as each shard lands: the failpoint tests kill the build at."""
    failpoint("tiers:after_shard")
