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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import schema
from curate.select.bands import FILTERED, BandConfig, assign

DUPLICATE = "duplicate"
CONTAMINATED = "contaminated"


def _lookup(keys: pa.Array | pa.ChunkedArray, table: pa.Table, key: str = schema.UID) -> np.ndarray:
    """Row index in ``table`` of every key (-1 where absent)."""
    idx = pc.index_in(keys, value_set=table.column(key).combine_chunks())
    return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _take(table: pa.Table, name: str, rows: np.ndarray, typ: pa.DataType) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(len(rows), typ)
    col = table.column(name).combine_chunks()
    idx = pa.array(np.where(rows >= 0, rows, 0), pa.int64(), mask=rows < 0)
    return col.take(idx)


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
    """One row per row of ``inputs`` (uid, url, caption, extras), in input order.

    ``downloads``: uid + download columns, one row per input uid. ``annotations``: one row per
    downloaded uid. ``filters``: uid, keep, reason, reasons aligned with ``annotations``.
    ``dedup``: uid, dup_of, dup_kind. ``quality`` and ``embeddings`` (CLIP image embeddings, only
    for balanced bands): aligned with ``annotations``.
    """
    n = inputs.num_rows
    uids = inputs.column(schema.UID)
    d_rows = _lookup(uids, downloads)
    if (d_rows < 0).any():
        missing = uids[int(np.flatnonzero(d_rows < 0)[0])].as_py()
        raise RuntimeError(f"download results lack input uid {missing!r}: every input row must have a download row")
    a_rows = _lookup(uids, annotations)
    x_rows = _lookup(uids, dedup)

    ok = (
        np.asarray(_take(downloads, schema.DOWNLOAD_STATUS, d_rows, pa.string()).to_pylist(), dtype=object)
        == "success"
    )
    if (ok & (a_rows < 0)).any():
        missing = uids[int(np.flatnonzero(ok & (a_rows < 0))[0])].as_py()
        raise RuntimeError(f"uid {missing!r} downloaded but has no annotation row: run `tiers annotate` again")

    decode_err = np.asarray(_take(annotations, schema.DECODE_ERROR, a_rows, pa.string()).to_pylist(), dtype=object)
    keep_filter = np.asarray(_take(filters, "keep", a_rows, pa.bool_()).fill_null(False).to_pylist(), bool)
    first_fail = np.asarray(_take(filters, schema.REASON, a_rows, pa.string()).to_pylist(), dtype=object)
    dup_kind = np.asarray(_take(dedup, schema.DUP_KIND, x_rows, pa.string()).to_pylist(), dtype=object)
    dup_of = _take(dedup, schema.DUP_OF, x_rows, pa.string())
    q = np.full(n, np.nan, np.float32)
    q[a_rows >= 0] = np.asarray(quality, np.float32)[a_rows[a_rows >= 0]]

    masks = _fate_masks(ok, decode_err, dup_kind, keep_filter)
    status, reason = _status_and_reason(downloads, d_rows, masks, decode_err, first_fail)
    kept, filtered = masks["kept"], masks["filtered"]

    band = np.full(n, None, dtype=object)
    if band_cfg.filtered_band:
        band[filtered] = FILTERED
    if kept.any():
        emb = None if embeddings is None else np.asarray(embeddings)[a_rows[kept]]
        band[kept] = assign(np.asarray(uids.to_pylist(), dtype=object)[kept], q[kept], band_cfg, emb)

    cols = {name: inputs.column(name) for name in inputs.column_names}
    for field in schema.DOWNLOAD:
        cols[field.name] = _take(downloads, field.name, d_rows, field.type)
    for field in schema.ANNOTATIONS:
        if field.name in annotations.column_names and field.name not in (schema.CAPTION,):
            cols[field.name] = _take(annotations, field.name, a_rows, annotations.schema.field(field.name).type)
    cols[schema.STATUS] = pa.array(status.tolist(), pa.string())
    cols[schema.REASON] = pa.array(reason.tolist(), pa.string())
    reasons = _take(filters, schema.REASONS, a_rows, pa.list_(pa.string()))
    cols[schema.REASONS] = reasons.cast(pa.list_(pa.string()))
    cols[schema.DUP_OF] = dup_of.cast(pa.string())
    cols[schema.DUP_KIND] = pa.array(dup_kind.tolist(), pa.string())
    cols[schema.QUALITY] = pa.array(np.where(a_rows >= 0, q, np.nan), pa.float32(), mask=a_rows < 0)
    cols[schema.BAND] = pa.array(band.tolist(), pa.string())
    table = pa.table(cols)
    check_counts(table, n)
    return table


def _fate_masks(ok: np.ndarray, decode_err, dup_kind, keep_filter: np.ndarray) -> dict[str, np.ndarray]:
    """One boolean mask per fate, in the module docstring's order of precedence; they partition the rows."""
    failed_decode = ok & (decode_err != None)  # noqa: E711 - elementwise on an object array
    usable = ok & ~failed_decode
    contaminated = usable & (dup_kind == "contamination")
    duplicate = usable & ~contaminated & (dup_kind != None)  # noqa: E711
    passing = usable & ~contaminated & ~duplicate
    return {
        "failed_download": ~ok,
        "failed_decode": failed_decode,
        "contaminated": contaminated,
        "duplicate": duplicate,
        "filtered": passing & ~keep_filter,
        "kept": passing & keep_filter,
    }


def _status_and_reason(downloads: pa.Table, d_rows: np.ndarray, m: dict, decode_err, first_fail):
    n = len(d_rows)
    status = np.full(n, schema.STATUS_DROPPED, dtype=object)
    status[m["failed_download"] | m["failed_decode"]] = schema.STATUS_FAILED
    status[m["kept"]] = schema.STATUS_KEPT
    reason = np.full(n, None, dtype=object)
    download_reason = _take(downloads, schema.DOWNLOAD_REASON, d_rows, pa.string()).to_pylist()
    reason[m["failed_download"]] = np.asarray(download_reason, dtype=object)[m["failed_download"]]
    reason[m["failed_decode"]] = decode_err[m["failed_decode"]]
    reason[m["contaminated"]] = CONTAMINATED
    reason[m["duplicate"]] = DUPLICATE
    reason[m["filtered"]] = first_fail[m["filtered"]]
    return status, reason


def counts(samples: pa.Table) -> dict[str, dict[str, int]]:
    """``{status: {reason: rows}}`` (reason ``"-"`` for kept rows)."""
    out: dict[str, dict[str, int]] = {}
    for s, r in zip(samples.column(schema.STATUS).to_pylist(), samples.column(schema.REASON).to_pylist(), strict=True):
        out.setdefault(s, {})
        out[s][r or "-"] = out[s].get(r or "-", 0) + 1
    return {s: dict(sorted(v.items(), key=lambda kv: -kv[1])) for s, v in sorted(out.items())}


def check_counts(samples: pa.Table, input_rows: int) -> None:
    """Raise unless every input row has exactly one fate and the fates add up."""
    total = sum(sum(v.values()) for v in counts(samples).values())
    uids = samples.column(schema.UID)
    if total != input_rows or samples.num_rows != input_rows or pc.count_distinct(uids).as_py() != input_rows:
        raise RuntimeError(f"fates do not add up: {total} fates, {samples.num_rows} rows, {input_rows} inputs")
    bad = set(samples.column(schema.STATUS).to_pylist()) - set(schema.STATUSES)
    if bad:
        raise RuntimeError(f"unknown statuses {bad}")
