"""The sample table: exactly one row, and one fate, per input row.

:func:`assemble` joins what every stage decided, in this order of precedence:

1. ``failed`` — the download failed (reason: the download's normalised reason), or the bytes did
   not decode (reason: the decoder's: ``truncated``, ``not_an_image``, ``too_many_pixels``, ...);
2. ``dropped`` / ``contaminated`` — a copy of an evaluation image;
3. ``dropped`` / ``duplicate`` — not the keeper of its duplicate cluster (``dup_kind``, ``dup_of``);
4. ``dropped`` / *first failing filter* — band ``filtered``, so the ``unfiltered`` tier has it;
5. ``kept`` — band by quality rank.

``reasons`` lists every failing filter too, whatever the fate. Counts by status and reason add up to
the input rows, and :func:`check_counts` raises if they do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import schema
from curate.select.bands import FILTERED, BandConfig, assign, band_names

DUPLICATE = "duplicate"
CONTAMINATED = "contaminated"


def _lookup(keys: pa.Array | pa.ChunkedArray, table: pa.Table, key: str = schema.UID) -> np.ndarray:
    """Row index in ``table`` of every key (-1 where absent)."""
    idx = pc.index_in(keys, value_set=table.column(key).combine_chunks())
    return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _take(table: pa.Table, name: str, rows: np.ndarray, typ: pa.DataType) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(len(rows), typ)
    col = table.column(name)
    # One chunk is taken from as it is: combine_chunks copies even then, the whole column for each call
    # (samplefile calls this per batch: 13 copies of every download column at 200,000 rows).
    col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    idx = pa.array(np.where(rows >= 0, rows, 0), pa.int64(), mask=rows < 0)
    return col.take(idx)


@dataclass(frozen=True)
class Fates:
    """What every stage decided for each input row, in input order, as Arrow columns: the decision
    columns of ``samples.parquet`` (``DECISIONS``) and, per row, its row in the download and annotation
    tables (``-1``: none), through which the rest of the sample row is gathered."""

    d_rows: np.ndarray
    a_rows: np.ndarray
    columns: dict[str, pa.Array]

    @property
    def num_rows(self) -> int:
        return len(self.d_rows)


DECISIONS = (schema.STATUS, schema.REASON, schema.REASONS, schema.DUP_OF, schema.DUP_KIND, schema.QUALITY, schema.BAND)


def fates(
    uids: pa.Array | pa.ChunkedArray,
    downloads: pa.Table,
    annotations: pa.Table,
    filters: pa.Table,
    dedup: pa.Table,
    quality: np.ndarray,
    band_cfg: BandConfig = BandConfig(),
    embeddings: np.ndarray | None = None,
) -> Fates:
    """The fate of every input row (``uids``: the inputs' uid column, in input order); see :func:`assemble`
    for the tables. Of ``annotations`` only ``uid`` and ``decode_error`` are read. Column-wise throughout:
    no Python object per row."""
    n = len(uids)
    d_rows = _lookup(uids, downloads)
    if (d_rows < 0).any():
        missing = uids[int(np.flatnonzero(d_rows < 0)[0])].as_py()
        raise RuntimeError(f"download results lack input uid {missing!r}: every input row must have a download row")
    a_rows = _lookup(uids, annotations)
    x_rows = _lookup(uids, dedup)

    ok = _mask(pc.equal(_take(downloads, schema.DOWNLOAD_STATUS, d_rows, pa.string()), "success"))
    if (ok & (a_rows < 0)).any():
        missing = uids[int(np.flatnonzero(ok & (a_rows < 0))[0])].as_py()
        raise RuntimeError(f"uid {missing!r} downloaded but has no annotation row: run `tiers annotate` again")

    decode_err = _take(annotations, schema.DECODE_ERROR, a_rows, pa.string())
    first_fail = _take(filters, schema.REASON, a_rows, pa.string())
    keep_filter = _mask(_take(filters, "keep", a_rows, pa.bool_()))
    dup_kind = _take(dedup, schema.DUP_KIND, x_rows, pa.string()).cast(pa.string())
    q = np.full(n, np.nan, np.float32)
    q[a_rows >= 0] = np.asarray(quality, np.float32)[a_rows[a_rows >= 0]]

    masks = _fate_masks(ok, decode_err, dup_kind, keep_filter)
    kept, filtered = masks["kept"], masks["filtered"]
    band = np.zeros(n, np.int64)  # 0: no band; k > 0: names[k - 1]
    names = band_names(band_cfg) + [FILTERED]
    if band_cfg.filtered_band:
        band[filtered] = len(names)
    if kept.any():
        emb = None if embeddings is None else np.asarray(embeddings)[a_rows[kept]]
        kept_uids = uids.take(pa.array(np.flatnonzero(kept)))
        got = assign(_sort_keys(kept_uids), q[kept], band_cfg, emb)
        band[kept] = _codes(got, names)
    columns = {
        schema.STATUS: _status(masks),
        schema.REASON: _reason(downloads, d_rows, masks, decode_err, first_fail),
        schema.REASONS: _take(filters, schema.REASONS, a_rows, pa.list_(pa.string())).cast(pa.list_(pa.string())),
        schema.DUP_OF: _take(dedup, schema.DUP_OF, x_rows, pa.string()).cast(pa.string()),
        schema.DUP_KIND: dup_kind,
        schema.QUALITY: pa.array(np.where(a_rows >= 0, q, np.nan), pa.float32(), mask=a_rows < 0),
        schema.BAND: _names(band, names),
    }
    return Fates(d_rows, a_rows, columns)


def assemble(
    inputs: pa.Table,
    downloads: pa.Table,
    annotations: pa.Table,
    filters: pa.Table,
    dedup: pa.Table,
    quality: np.ndarray,
    band_cfg: BandConfig = BandConfig(),
    embeddings: np.ndarray | None = None,
) -> pa.Table:
    """One row per row of ``inputs`` (uid, url, caption, extras), in input order, in memory.

    ``downloads``: uid + download columns, one row per input uid. ``annotations``: one row per
    downloaded uid. ``filters``: uid, keep, reason, reasons aligned with ``annotations``.
    ``dedup``: uid, dup_of, dup_kind. ``quality`` and ``embeddings`` (CLIP image embeddings, only
    for balanced bands): aligned with ``annotations``. A build writes the same table batch by batch
    (:mod:`curate.select.samplefile`) without holding the annotation columns.
    """
    f = fates(inputs.column(schema.UID), downloads, annotations, filters, dedup, quality, band_cfg, embeddings)
    ann = {
        name: _take(annotations, name, f.a_rows, annotations.schema.field(name).type)
        for name in carried_columns(annotations.column_names)
    }
    table = sample_table(inputs, downloads, f.d_rows, ann, f.columns)
    check_counts(table, inputs.num_rows)
    return table


def carried_columns(names: list[str]) -> list[str]:
    """Of the annotation columns ``names``, those a sample row carries, in their place (``schema.ANNOTATIONS``
    order; the caption is the input's)."""
    return [f.name for f in schema.ANNOTATIONS if f.name in names and f.name != schema.CAPTION]


# The sample table's columns the shard stage and the counts read: what a build holds instead of the table.
METADATA = [schema.UID, schema.URL, schema.CAPTION, schema.SHARD, schema.KEY]
METADATA += [schema.STATUS, schema.REASON, schema.QUALITY, schema.BAND]


def sample_table(
    inputs: pa.Table, downloads: pa.Table, d_rows: np.ndarray, annotations: dict[str, pa.Array], decisions: dict
) -> pa.Table:
    """Sample rows from their parts, all aligned with ``inputs``' rows except ``downloads`` (gathered by
    ``d_rows``): the inputs' columns, the download columns, ``annotations``, then ``decisions``."""
    cols = {name: inputs.column(name) for name in inputs.column_names}
    for field in schema.DOWNLOAD:
        cols[field.name] = _take(downloads, field.name, d_rows, field.type)
    cols.update(annotations)
    cols.update({name: decisions[name] for name in DECISIONS})
    return pa.table(cols)


def _mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean column as numpy, null as False."""
    return np.asarray(values.fill_null(False).to_numpy(zero_copy_only=False), bool)


def _sort_keys(uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """uids as a numpy array that sorts as their ``str`` objects do: where all have one length, a view of
    their UTF-8 bytes as fixed-width byte strings (UTF-8 byte order is code-point order), with no Python
    object per row; else ``str`` objects."""
    arr = uids.combine_chunks() if isinstance(uids, pa.ChunkedArray) else uids
    lo, hi = (v.as_py() for v in pc.min_max(pc.binary_length(arr)).values())
    if arr.null_count or not lo or lo != hi or not pa.types.is_string(arr.type):
        return np.asarray(arr.to_pylist(), dtype=object)
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + len(arr) + 1]
    return np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0] : offsets[-1]].view(f"S{lo}")


def _codes(values: np.ndarray, names: list[str]) -> np.ndarray:
    """1-based position in ``names`` of each value."""
    out = np.zeros(len(values), np.int64)
    for k, name in enumerate(names):
        out[values == name] = k + 1
    return out


def _names(codes: np.ndarray, names: list[str]) -> pa.Array:
    """``names[code - 1]``, null where the code is 0, as a string column."""
    return pa.array([None, *names], pa.string()).take(pa.array(codes))


def _fate_masks(ok: np.ndarray, decode_err, dup_kind, keep_filter: np.ndarray) -> dict[str, np.ndarray]:
    """One boolean mask per fate, in the module docstring's order of precedence; they partition the rows."""
    failed_decode = ok & _mask(pc.is_valid(decode_err))
    usable = ok & ~failed_decode
    contaminated = usable & _mask(pc.equal(dup_kind, "contamination"))
    duplicate = usable & ~contaminated & _mask(pc.is_valid(dup_kind))
    passing = usable & ~contaminated & ~duplicate
    return {
        "failed_download": ~ok,
        "failed_decode": failed_decode,
        "contaminated": contaminated,
        "duplicate": duplicate,
        "filtered": passing & ~keep_filter,
        "kept": passing & keep_filter,
    }


def _status(m: dict) -> pa.Array:
    codes = np.full(len(m["kept"]), 1, np.int64)  # dropped
    codes[m["failed_download"] | m["failed_decode"]] = 2
    codes[m["kept"]] = 3
    return _names(codes, [schema.STATUS_DROPPED, schema.STATUS_FAILED, schema.STATUS_KEPT])


def _reason(downloads: pa.Table, d_rows: np.ndarray, m: dict, decode_err, first_fail) -> pa.Array:
    """The reason column: the first source that applies to each row's fate, null for kept rows."""
    n = len(d_rows)
    reason = pa.nulls(n, pa.string())
    download_reason = _take(downloads, schema.DOWNLOAD_REASON, d_rows, pa.string()).cast(pa.string())
    for mask, values in (
        (m["failed_download"], download_reason),
        (m["failed_decode"], decode_err.cast(pa.string())),
        (m["contaminated"], pa.scalar(CONTAMINATED)),
        (m["duplicate"], pa.scalar(DUPLICATE)),
        (m["filtered"], first_fail.cast(pa.string())),
    ):
        reason = pc.if_else(pa.array(mask), values, reason)
    return reason


def counts(samples: pa.Table) -> dict[str, dict[str, int]]:
    """``{status: {reason: rows}}`` (reason ``"-"`` for kept rows), reasons by count, ties in order of
    first appearance; grouped in Arrow (one entry per distinct pair, not a Python object per row)."""
    reason = samples.column(schema.REASON)
    keyed = pa.table(
        {
            "s": samples.column(schema.STATUS),
            "r": pc.if_else(pc.equal(reason, ""), None, reason),  # "" counts as "-", as a missing reason
            "at": pa.array(np.arange(samples.num_rows, dtype=np.int64)),
        }
    )
    groups = keyed.group_by(["s", "r"], use_threads=False).aggregate([("at", "count"), ("at", "min")])
    rows = zip(*(groups.column(c).to_pylist() for c in ("s", "r", "at_count", "at_min")), strict=True)
    out: dict[str, dict[str, int]] = {}
    for s, r, n, _ in sorted(rows, key=lambda g: (g[0], -g[2], g[3])):
        out.setdefault(s, {})[r or "-"] = n
    return out


def check_counts(samples: pa.Table, input_rows: int) -> None:
    """Raise unless every input row has exactly one fate and the fates add up."""
    total = sum(sum(v.values()) for v in counts(samples).values())
    uids = samples.column(schema.UID)
    if total != input_rows or samples.num_rows != input_rows or pc.count_distinct(uids).as_py() != input_rows:
        raise RuntimeError(f"fates do not add up: {total} fates, {samples.num_rows} rows, {input_rows} inputs")
    bad = set(pc.unique(samples.column(schema.STATUS)).to_pylist()) - set(schema.STATUSES)
    if bad:
        raise RuntimeError(f"unknown statuses {bad}")
