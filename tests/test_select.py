import numpy as np
import pyarrow as pa
import pytest

from curate.select.bands import BandConfig
from curate.select.samples import assemble, check_counts, counts


def tables():
    uids = [f"u{i}" for i in range(10)]
    inputs = pa.table(
        {"uid": uids, "url": [f"http://x/{i}" for i in range(10)], "caption": ["c"] * 10, "src": list("abcdefghij")}
    )
    dl_ok = [True] * 8 + [False, False]
    downloads = pa.table(
        {
            "uid": uids[::-1],  # any order
            "download_status": ["success" if ok else "failed" for ok in dl_ok][::-1],
            "download_reason": [None if ok else "http_404" for ok in dl_ok][::-1],
            "download_error": [None] * 10,
            "shard": ["00000"] * 10,
            "key": [f"k{i}" for i in range(10)][::-1],
        }
    )
    ann_uids = uids[:8]
    annotations = pa.table(
        {
            "uid": ann_uids,
            "decode_error": [None] * 7 + ["truncated"],
            "width": pa.array([100] * 8, pa.int32()),
        }
    )
    keep = [True, True, True, False, True, True, True, False]
    filters = pa.table(
        {
            "uid": ann_uids,
            "keep": keep,
            "reason": [None if k else "language" for k in keep],
            "reasons": [[] if k else ["language", "min_words"] for k in keep],
        }
    )
    dedup = pa.table(
        {
            "uid": ann_uids[:7],
            "dup_of": [None, None, None, None, "u0", None, "zs:3"],
            "dup_kind": [None, None, None, None, "near", None, "contamination"],
        }
    )
    quality = np.linspace(1, 0, 8).astype(np.float32)
    return inputs, downloads, annotations, filters, dedup, quality


def test_every_row_gets_one_fate_by_precedence():
    t = assemble(*tables(), BandConfig(edges=(0.5, 1.0)))
    rows = {r["uid"]: r for r in t.to_pylist()}
    assert t.column("uid").to_pylist() == [f"u{i}" for i in range(10)]  # input order
    assert rows["u8"]["status"] == "failed" and rows["u8"]["reason"] == "http_404" and rows["u8"]["band"] is None
    assert rows["u7"]["status"] == "failed" and rows["u7"]["reason"] == "truncated"
    assert rows["u6"]["status"] == "dropped" and rows["u6"]["reason"] == "contaminated"
    assert rows["u4"]["status"] == "dropped" and rows["u4"]["reason"] == "duplicate" and rows["u4"]["dup_of"] == "u0"
    assert (
        rows["u3"]["status"] == "dropped" and rows["u3"]["reason"] == "language" and rows["u3"]["band"] == "filtered"
    )
    assert rows["u3"]["reasons"] == ["language", "min_words"]
    kept = [u for u, r in rows.items() if r["status"] == "kept"]
    assert kept == ["u0", "u1", "u2", "u5"]
    assert [rows[u]["band"] for u in kept] == ["q000-050", "q000-050", "q050-100", "q050-100"]
    assert rows["u0"]["src"] == "a" and rows["u0"]["width"] == 100  # extras and annotations carried
    c = counts(t)
    assert sum(sum(v.values()) for v in c.values()) == 10
    assert c["failed"] == {"http_404": 2, "truncated": 1}


def test_missing_download_row_or_annotation_is_an_error_not_a_silent_loss():
    inputs, downloads, annotations, filters, dedup, q = tables()
    with pytest.raises(RuntimeError, match="download results lack"):
        assemble(inputs, downloads.slice(1), annotations, filters, dedup, q)
    with pytest.raises(RuntimeError, match="no annotation row"):
        assemble(inputs, downloads, annotations.slice(0, 6), filters.slice(0, 6), dedup, q[:6])


def test_check_counts_catches_duplicated_rows():
    t = assemble(*tables())
    with pytest.raises(RuntimeError):
        check_counts(pa.concat_tables([t, t.slice(0, 1)]), 10)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_the_sample_file_written_a_batch_at_a_time_is_the_assembled_table(where, tmp_path, monkeypatch):
    """A build writes samples.parquet from the decisions and the stored annotation shards, a few rows at a
    time (rows of one batch in several shards, shards out of input order, one shard read per batch): the
    file must hold exactly the table `assemble` makes in memory, a rerun must recognise it, and a changed
    decision must not."""
    import uuid

    from curate.core import schema, storage
    from curate.select import samplefile
    from curate.select.samples import carried_columns, fates

    inputs, downloads, annotations, filters, dedup, quality = tables()
    thumbs = pa.array([bytes([k]) * schema.THUMB_BYTES for k in range(8)], pa.binary(schema.THUMB_BYTES))
    annotations = annotations.append_column(schema.THUMB, thumbs).append_column(
        schema.SHA256, pa.array([f"h{k}" for k in range(8)])
    )
    order = [5, 6, 7, 0, 1, 2, 3, 4]  # the annotation table's row order is not the inputs'
    annotations, filters = annotations.take(order), filters.take(order)
    quality = quality[order]
    root = str(tmp_path) if where == "local" else f"memory://samples-{uuid.uuid4().hex}"
    files = []
    for k, (a, b) in enumerate([(0, 3), (3, 5), (5, 8)]):
        files.append(storage.join(root, "annotations", f"{k:05d}.parquet"))
        storage.write_parquet(annotations.slice(a, b - a), files[-1])
    want = assemble(inputs, downloads, annotations, filters, dedup, quality, BandConfig(edges=(0.5, 1.0)))

    monkeypatch.setattr(samplefile, "BATCH_ROWS", 3)
    f = fates(inputs.column("uid"), downloads, annotations, filters, dedup, quality, BandConfig(edges=(0.5, 1.0)))
    stored = samplefile.StoredRows(files, carried_columns(annotations.column_names))
    path = storage.join(root, "samples.parquet")
    assert not samplefile.holds(path, samplefile.batches(inputs, downloads, f, stored), inputs.num_rows)
    samplefile.write(path, samplefile.batches(inputs, downloads, f, stored))
    assert storage.read_parquet(path).equals(want)
    assert samplefile.holds(path, samplefile.batches(inputs, downloads, f, stored), inputs.num_rows)
    other = fates(inputs.column("uid"), downloads, annotations, filters, dedup, quality, BandConfig(edges=(0.2, 1.0)))
    assert not samplefile.holds(path, samplefile.batches(inputs, downloads, other, stored), inputs.num_rows)

    # A build reads its inputs from their stored file a batch at a time (row groups of 2 rows here,
    # batches of 3): the same file, and the shard stage's columns read back are the assembled ones.
    import pyarrow.parquet as pq

    from curate.core import batches
    from curate.select.samples import METADATA

    stored_inputs = storage.join(root, "inputs.parquet")
    with storage.output(stored_inputs) as tmp:
        pq.write_table(inputs, tmp, row_group_size=2)
    assert samplefile.holds(path, samplefile.batches(stored_inputs, downloads, f, stored), inputs.num_rows)
    again = storage.join(root, "again.parquet")
    samplefile.write(again, samplefile.batches(stored_inputs, downloads, f, stored))
    assert storage.read_parquet(again).equals(want)
    meta = batches.read_columns(again, METADATA)
    assert meta.column_names == [c for c in METADATA if c in want.column_names] == METADATA
    assert meta.equals(want.select(METADATA))


def _stored_rows(tmp_path, files=4, rows=4000, thumb=1000):
    """StoredRows over ``files`` parquet files of ``rows`` rows each: a uid and a ``thumb``-byte binary."""
    from curate.core import storage
    from curate.select import samplefile

    paths, n = [], 0
    for k in range(files):
        thumbs = [(n + i).to_bytes(4, "little") * (thumb // 4) for i in range(rows)]
        t = pa.table({"uid": [f"u{n + i:07d}" for i in range(rows)], "thumb": pa.array(thumbs, pa.binary(thumb))})
        paths.append(str(tmp_path / f"{k:05d}.parquet"))
        storage.write_parquet(t, paths[-1])
        n += rows
    whole = pa.concat_tables([storage.read_parquet(p) for p in paths]).combine_chunks()
    return samplefile.StoredRows(paths, ["uid", "thumb"]), whole


@pytest.mark.parametrize(
    "pick",
    [
        lambda n: np.arange(2000, 14000),  # in order, across files
        lambda n: np.where(np.arange(n) % 7 == 0, -1, np.arange(n)),  # in order, nulls inside and first
        lambda n: np.r_[-1, -1, np.arange(5, 9000, 3), -1],  # leading and trailing nulls
        lambda n: np.r_[np.arange(100)[::-1], np.arange(4000, 4100)[::-1], 7, -1],  # files in order, rows not
        lambda n: np.random.default_rng(0).permutation(n)[:5000],  # any order
        lambda n: np.r_[12000, 5, -1, 3, 8000],  # files out of order
        lambda n: np.full(5, -1),
        lambda n: np.zeros(0, np.int64),
    ],
)
def test_stored_rows_take_gives_the_rows_asked_for(pick, tmp_path):
    stored, whole = _stored_rows(tmp_path)
    rows = pick(whole.num_rows)
    got = stored.take(rows)
    want = whole.take(pa.array(np.where(rows >= 0, rows, 0), pa.int64(), mask=rows < 0))
    for name in ("uid", "thumb"):
        assert got[name].equals(want.column(name)), name


def test_stored_rows_take_copies_each_value_once(tmp_path):
    """A batch of ``samples.parquet`` takes its annotation columns from the stored shards: rows in the
    shards' order (a build's) are taken straight into place, so the batch costs about its own size
    plus one shard's columns, not several copies of itself (the driver's peak in `decide`)."""
    import gc

    stored, whole = _stored_rows(tmp_path)
    rows = np.arange(2000, 14000)  # a batch across three of the files, a failed download every 7th row
    rows[::7] = -1
    del whole
    pool = pa.proxy_memory_pool(pa.default_memory_pool())  # counts what take allocates, and its peak
    before = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        got = stored.take(rows)
        size = sum(col.nbytes for col in got.values())
        del got, stored  # what came from ``pool`` goes before it does
        gc.collect()
    finally:
        pa.set_memory_pool(before)
    assert pool.bytes_allocated() == 0
    # The batch, plus a file's columns (a third of it) as it is read and taken from: 1.5x; 3.8x with the
    # pieces joined, then put in order.
    assert pool.max_memory() < 2 * size, (pool.max_memory(), size)
