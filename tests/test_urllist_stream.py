"""A URL list read a batch at a time (curate.urllist.stream): the table a whole read gives, never held whole."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.core import failpoints, schema
from curate.core.errors import InputError
from curate.urllist import ReadConfig, read_url_list, stage_url_list, stream
from tests.memory import needs_proc, peak_growth_mb


def _rows(n: int, start: int = 0, **extra) -> list[dict]:
    return [{"url": f"http://a.example/{i}.jpg", "caption": f"cap {i % 5}", **extra} for i in range(start, start + n)]


def _lists(tmp_path):
    """Three files in three formats; repeated (url, caption) pairs inside a file, across batches and files;
    a column one file types int and another float, and one a file lacks."""
    d = tmp_path / "lists"
    d.mkdir()
    a = _rows(20, source="x") + _rows(3, source="y")  # rows 20-22 repeat rows 0-2
    for i, r in enumerate(a):
        r["score"] = i
    pq.write_table(pa.Table.from_pylist(a), d / "a.parquet", row_group_size=6)
    b = _rows(4, start=1) + [{"url": "http://a.example/1.jpg", "caption": None}]  # a null caption: no repeat
    (d / "b.jsonl").write_text("".join(json.dumps(dict(r, score=0.5)) + "\n" for r in b))
    c = _rows(5, start=18)
    (d / "c.csv").write_text("url,caption\n" + "".join(f"{r['url']},{r['caption']}\n" for r in c))
    return d, a + b + c


@pytest.mark.parametrize("batch", [1, 4, 7, 1 << 16])
def test_any_batch_size_gives_the_table_a_whole_read_gives(tmp_path, monkeypatch, batch):
    d, rows = _lists(tmp_path)
    monkeypatch.setattr(stream, "BATCH_ROWS", batch)
    t = read_url_list(d)
    urls, caps = [r["url"] for r in rows], [r["caption"] for r in rows]
    assert t.column_names == ["uid", "url", "caption", "source", "score"]
    assert t.column("url").to_pylist() == urls and t.column("caption").to_pylist() == caps
    # Repeats numbered over the whole list in order, as make_uids numbers them.
    assert t.column("uid").to_pylist() == schema.make_uids(urls, caps)
    assert len(set(t.column("uid").to_pylist())) == len(rows)
    assert t.schema.field("score").type == pa.float64()  # int in one file, float in another: promoted
    assert t.column("source").to_pylist() == ["x"] * 20 + ["y"] * 3 + [None] * 10
    assert t.column("score").to_pylist()[:24] == [float(i) for i in range(23)] + [0.5]


def test_an_error_in_a_later_batch_names_its_row_in_its_file(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "BATCH_ROWS", 4)
    p = tmp_path / "a.parquet"
    rows = _rows(10)
    rows[8]["url"] = " "
    pq.write_table(pa.Table.from_pylist(rows), p, row_group_size=3)
    with pytest.raises(InputError, match="row 9") as e:
        read_url_list(p)
    assert str(p) in str(e.value) and "empty URL" in str(e.value)

    rows = [dict(r, uid=f"u{i}") for i, r in enumerate(_rows(10))]
    rows[6]["uid"] = "../x"
    pq.write_table(pa.Table.from_pylist(rows), p)
    with pytest.raises(InputError) as e:
        read_url_list(p)
    assert "row 7" in str(e.value) and "plain token" in str(e.value)

    a, b = tmp_path / "x.parquet", tmp_path / "y.parquet"
    pq.write_table(pa.Table.from_pylist([dict(r, uid=f"u{i}") for i, r in enumerate(_rows(10))]), a)
    later = [dict(r, uid=f"v{i}") for i, r in enumerate(_rows(6, start=50))]
    later[5]["uid"], later[4]["uid"] = "u6", "u9"  # u6 and u9 repeat; u9's second copy comes first
    pq.write_table(pa.Table.from_pylist(later), b)
    with pytest.raises(InputError) as e:
        read_url_list([a, b])
    msg = str(e.value)
    assert f"duplicate uid 'u6' at {a} row 7 and {b} row 6" in msg and "2 duplicated uid(s)" in msg


def test_a_list_staged_by_worker_processes_is_the_file_staged_here(tmp_path, monkeypatch):
    """Each file staged by a process of its own gives the parquet file one process writes, byte for byte
    (repeats numbered across files staged apart); a bad file is named, the first bad one in file order;
    a uid repeated in files staged apart is named. Lists under ``PARALLEL_BYTES`` stay in this process."""
    d, _ = _lists(tmp_path)
    here = stage_url_list(d, ReadConfig(), str(tmp_path / "here.parquet"), workers=1)
    there = stage_url_list(d, ReadConfig(), str(tmp_path / "there.parquet"), workers=2)
    assert (tmp_path / "here.parquet").read_bytes() == (tmp_path / "there.parquet").read_bytes()
    assert here.rows == there.rows == 33 and (here.captioned, here.columns) == (there.captioned, there.columns)

    # A worker killed (as an out-of-memory kill would): the list is staged in this process instead.
    monkeypatch.setenv(failpoints.ENV, "urllist:worker")
    again = stage_url_list(d, ReadConfig(), str(tmp_path / "again.parquet"), workers=2)
    assert (tmp_path / "again.parquet").read_bytes() == (tmp_path / "here.parquet").read_bytes()
    assert again.rows == here.rows
    monkeypatch.delenv(failpoints.ENV)

    bad = tmp_path / "bad"
    bad.mkdir()
    for k in range(4):
        rows = _rows(10, start=10 * k)
        if k in (1, 3):
            rows[4 + k]["url"] = " "
        pq.write_table(pa.Table.from_pylist(rows), bad / f"{k}.parquet")
    with pytest.raises(InputError, match=f"{bad / '1.parquet'}: row 6: empty URL"):
        stage_url_list(bad, ReadConfig(), str(tmp_path / "bad.parquet"), workers=2)

    a, b = tmp_path / "x.parquet", tmp_path / "y.parquet"
    pq.write_table(pa.Table.from_pylist([dict(r, uid=f"u{i}") for i, r in enumerate(_rows(10))]), a)
    pq.write_table(pa.Table.from_pylist([dict(r, uid=f"v{i}" if i != 2 else "u3") for i, r in enumerate(_rows(5))]), b)
    with pytest.raises(InputError, match=f"duplicate uid 'u3' at {a} row 4 and {b} row 3"):
        stage_url_list([a, b], ReadConfig(), str(tmp_path / "dup.parquet"), workers=2)

    files, cfg = [str(p) for p in sorted(d.iterdir())], ReadConfig()
    cores = min(len(os.sched_getaffinity(0)), stream.MAX_WORKERS)
    monkeypatch.setattr(stream.runtime, "MAIN_GUARDED", True)  # as the CLI sets it
    assert stream._workers(files, None, cfg) == 1  # a few kB
    monkeypatch.setattr(stream, "PARALLEL_BYTES", 1)
    assert stream._workers(files, None, cfg) == cores
    parquet, csv = (f for f in files if f.endswith((".parquet", ".csv")))
    assert stream._workers([parquet], None, cfg) == cores and stream._workers([csv], None, cfg) == 1
    monkeypatch.setattr(stream.runtime, "MAIN_GUARDED", False)  # from Python, unless said
    assert stream._workers(files, None, cfg) == 1 and stream._workers(files, 8, cfg) == 8


def test_one_parquet_file_is_staged_by_workers_a_run_of_row_groups_each(tmp_path):
    """Fewer files than workers: a parquet file's row groups are shared out, each worker's rows numbered
    from where its run starts, so the file written, the repeats and the rows errors name are as here."""
    rows = _rows(90) + _rows(30)  # the last 30 repeat the first 30: their uids numbered on
    p = tmp_path / "one.parquet"
    pq.write_table(pa.Table.from_pylist(rows), p, row_group_size=10)  # 12 row groups
    pieces = stream._pieces([str(p)], 4, ReadConfig())
    assert [pc.row_groups for pc in pieces] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert [pc.first_row for pc in pieces] == [0, 30, 60, 90]
    here = stage_url_list(p, ReadConfig(), str(tmp_path / "here.parquet"), workers=1)
    apart = stage_url_list(p, ReadConfig(), str(tmp_path / "apart.parquet"), workers=4)
    assert (tmp_path / "here.parquet").read_bytes() == (tmp_path / "apart.parquet").read_bytes()
    assert here.rows == apart.rows == 120
    assert pq.read_table(tmp_path / "apart.parquet").column("uid").to_pylist() == schema.make_uids(
        [r["url"] for r in rows], [r["caption"] for r in rows]
    )

    bad = [dict(r) for r in rows]
    bad[104]["url"] = " "  # in the last run: row 105 of the file
    pq.write_table(pa.Table.from_pylist(bad), p, row_group_size=10)
    with pytest.raises(InputError, match=f"{p}: row 105: empty URL"):
        stage_url_list(p, ReadConfig(), str(tmp_path / "bad.parquet"), workers=4)
    uids = [dict(r, uid=f"u{i}") for i, r in enumerate(rows)]
    uids[95]["uid"] = "u7"  # row 96 repeats row 8's uid, three runs apart
    pq.write_table(pa.Table.from_pylist(uids), p, row_group_size=10)
    with pytest.raises(InputError, match=f"duplicate uid 'u7' at {p} row 8 and {p} row 96"):
        stage_url_list(p, ReadConfig(), str(tmp_path / "dup.parquet"), workers=4)
    assert stream._pieces([str(p)], 40, ReadConfig())[-1].row_groups == (11, 12)  # at most a group each


@pytest.mark.parametrize("workers", [1, 2])
def test_staging_shows_the_rows_read_and_written(tmp_path, capsys, workers):
    """Bars of the rows read (per batch here, per file from workers) and written; a list staged in under
    two seconds (all of these) shows none unless the delay is lifted, as here."""
    from tqdm import tqdm

    d, rows = _lists(tmp_path)
    stage_url_list(d, ReadConfig(), str(tmp_path / "quiet.parquet"), workers=workers, progress=True)
    assert "rows" not in capsys.readouterr().err
    tqdm_init = tqdm.__init__

    def shown(self, *a, **kw):
        tqdm_init(self, *a, **{**kw, "delay": 0})

    with pytest.MonkeyPatch.context() as m:
        m.setattr(tqdm, "__init__", shown)
        stage_url_list(d, ReadConfig(), str(tmp_path / "shown.parquet"), workers=workers, progress=True)
    err = capsys.readouterr().err.replace("\r", "\n")
    n = f"{len(rows)}.0"  # unit_scale's way with numbers under 1,000
    assert f"read URL list: {n} rows" in err and f"write staged list: 100%|██████████| {n}/{n}" in err


def test_equal_hashes_of_different_uids_are_told_apart(tmp_path, monkeypatch):
    """Every row's key collides: the rows are compared as strings, so nothing is a duplicate by accident."""
    monkeypatch.setattr(stream, "_hash", lambda col: np.zeros(len(col), np.uint64))
    d, rows = _lists(tmp_path)
    t = read_url_list(d)
    urls, caps = [r["url"] for r in rows], [r["caption"] for r in rows]
    assert t.column("uid").to_pylist() == schema.make_uids(urls, caps)
    p = tmp_path / "u.parquet"
    pq.write_table(pa.Table.from_pylist([dict(r, uid=f"u{i}") for i, r in enumerate(_rows(9))]), p)
    assert read_url_list(p).column("uid").to_pylist() == [f"u{i}" for i in range(9)]


def test_a_staged_list_and_a_plan_made_from_it_equal_those_made_from_the_table(tmp_path):
    from curate.download import plan
    from curate.download.config import DownloadConfig

    d, _ = _lists(tmp_path)
    staged = stage_url_list(d, ReadConfig(), str(tmp_path / "staged.parquet"))
    table = read_url_list(d)
    assert pq.read_table(staged.path).equals(table)
    assert (staged.rows, staged.captioned) == (table.num_rows, table.num_rows - table.column("caption").null_count)
    cfg = DownloadConfig(samples_per_shard=7)
    a = plan.plan(str(tmp_path / "a"), table, cfg)
    b = plan.plan(str(tmp_path / "b"), staged.path, cfg)
    assert a == b and a["shards"] == [0, 1, 2, 3, 4]
    for s in a["shards"]:
        name = f"_input/{s:05d}.parquet"
        assert pq.read_table(tmp_path / "a" / name).equals(pq.read_table(tmp_path / "b" / name))
    assert plan.plan(str(tmp_path / "b"), staged.path, cfg) == b  # the same list again: the same plan
    with pytest.raises(InputError, match="another URL list"):
        plan.plan(str(tmp_path / "b"), table.slice(1), cfg)


@needs_proc
@pytest.mark.parametrize("fmt", ["parquet", "tsv"])
def test_staging_a_list_holds_a_batch_not_the_list(tmp_path, fmt):
    """What staging grows a process by does not grow with the list: 150,000 and 600,000 rows (a 20 and an
    80 MB table) within 25 MB, where the whole read grew it by ~420 B a row (420 MB at 1M rows; ~190 MB
    more at 600,000 than at 150,000). What it holds, ~110 MB either way, is a few batches of 65,536 rows
    on their way through, the reader's buffers and the libraries' first use. A TSV list is read a block
    of records at a time too (read whole, it grew the process by ~14 times the file's size)."""

    def grew(n: int) -> int:
        p = tmp_path / f"list-{n}.{fmt}"
        urls = [f"http://img.example/{i:08d}/{i * 7919 % 100_003:06x}.jpg" for i in range(n)]
        caps = [f"a photo of a red square number {i} on a plain background" for i in range(n)]
        if fmt == "tsv":
            p.write_text("url\tcaption\n" + "".join(f"{u}\t{c}\n" for u, c in zip(urls, caps, strict=True)))
        else:
            pq.write_table(pa.table({"url": urls, "caption": caps}), p, row_group_size=1 << 16)
        setup = "import sys\nfrom curate.urllist import ReadConfig, stage_url_list\n"
        work = "stage_url_list(sys.argv[1], ReadConfig(), sys.argv[2])\n"
        mb = peak_growth_mb(setup, work, p, tmp_path / f"staged-{n}.parquet")
        assert pq.ParquetFile(tmp_path / f"staged-{n}.parquet").metadata.num_rows == n
        return mb

    small, large = grew(150_000), grew(600_000)
    assert large - small < 25, f"staging 150,000 rows grew the process by {small} MB, 600,000 by {large} MB"
