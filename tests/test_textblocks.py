"""Text list files read a block of records at a time (curate.urllist.textblocks): the table a whole read
gives, whatever the block size, and errors that name the file's line."""

from __future__ import annotations

import csv
import gzip
import json
import random

import pyarrow as pa
import pytest

from curate.core.errors import InputError
from curate.urllist import read_url_list, textblocks

CAPTIONS = ["plain", 'with "quotes" in', "quoted, with comma", "café ☕", "", "two\nlines", 'a "quoted\nnewline"']


def _csv(path, n: int, sep: str = ",", bom: bool = False, crlf: bool = False) -> list[tuple[str, str | None]]:
    rng = random.Random(n)
    rows = [(f"http://a.example/{i}.jpg", rng.choice(CAPTIONS)) for i in range(n)]
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        w = csv.writer(f, delimiter=sep, lineterminator="\r\n" if crlf else "\n")
        w.writerow(["url", "caption"])
        w.writerows(rows)
    return [(u, c or None) for u, c in rows]


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20])
def test_blocks_end_at_records_and_hold_the_file(tmp_path, size):
    p = tmp_path / "a.csv"
    _csv(p, 300, bom=True, crlf=True)
    data = p.read_bytes()
    got = list(textblocks.blocks(str(p), quoted=True, size=size))
    assert b"".join(b.data for b in got) == data.removeprefix(textblocks.BOM)
    line = byte = 0
    for b in got:
        assert (b.line0, b.byte0) == (line, byte)
        line, byte = line + b.data.count(b"\n"), byte + len(b.data)
        assert b.data.endswith(b"\n") and b.data.count(b'"') % 2 == 0  # a whole record, quotes closed
    assert len(got) > 1 or size > len(data)


@pytest.mark.parametrize("size", [64, 1000, 1 << 23])
def test_any_block_size_reads_the_table_a_whole_read_gives(tmp_path, monkeypatch, size):
    monkeypatch.setattr(textblocks, "BLOCK", size)
    rows = _csv(tmp_path / "a.csv", 400, bom=True, crlf=True)
    t = read_url_list(tmp_path / "a.csv")
    assert list(zip(t.column("url").to_pylist(), t.column("caption").to_pylist(), strict=True)) == rows
    gz = tmp_path / "a.csv.gz"
    gz.write_bytes(gzip.compress((tmp_path / "a.csv").read_bytes()))
    assert read_url_list(gz).equals(t)
    # A headerless two-column TSV (as CC3M ships): every block's columns named from the first's.
    (tmp_path / "h.tsv").write_text("".join(f"http://h/{i}.jpg\tcap {i}\n" for i in range(300)))
    h = read_url_list(tmp_path / "h.tsv")
    assert h.column("caption").to_pylist() == [f"cap {i}" for i in range(300)]
    (tmp_path / "u.txt").write_text("".join(("\n" if i % 7 == 0 else "") + f" http://t/{i}\n" for i in range(300)))
    assert read_url_list(tmp_path / "u.txt").column("url").to_pylist() == [f"http://t/{i}" for i in range(300)]
    # jsonl: a field that appears, and one null at first, in later blocks: unified as a whole read infers.
    lines = [{"url": f"http://j/{i}", "n": None if i < 250 else i} for i in range(300)]
    for r in lines[281:]:
        r["late"] = "v"
    (tmp_path / "j.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    j = read_url_list(tmp_path / "j.jsonl")
    assert j.column_names == ["uid", "url", "caption", "n", "late"] and j.schema.field("n").type == pa.int64()
    assert j.column("n").to_pylist() == [r["n"] for r in lines]
    assert j.column("late").to_pylist() == [r.get("late") for r in lines]


def test_an_error_in_a_later_block_names_the_files_line(tmp_path, monkeypatch):
    monkeypatch.setattr(textblocks, "BLOCK", 64)
    body = "".join(f"http://a/{i},cap {i}\n" for i in range(1, 40))
    p = tmp_path / "ragged.csv"
    p.write_text("url,caption\n" + body + "http://a/40,x,extra\n")
    with pytest.raises(InputError, match=r"line 41 \(data row 40\) has 3 fields, expected 2") as e:
        read_url_list(p)
    assert str(p) in str(e.value)
    q = tmp_path / "utf8.csv"
    q.write_bytes(b"url,caption\n" + body.encode() + b"http://a/40,caf\xe9\n")
    with pytest.raises(InputError, match=r"invalid UTF-8 at line 41 \(data row 40\), byte offset") as e:
        read_url_list(q)
    j = tmp_path / "bad.jsonl"
    j.write_text("".join(json.dumps({"url": f"http://j/{i}"}) + "\n" for i in range(30)) + '{"url": \n')
    with pytest.raises(InputError, match=r"corrupt jsonl: .* at data row 31$"):
        read_url_list(j)


def test_a_record_longer_than_a_block_is_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(textblocks, "BLOCK", 16)
    long = '"' + "a long\ncaption " * 50 + '"'
    (tmp_path / "l.csv").write_text(f"url,caption\nhttp://a/1,{long}\nhttp://a/2,short\n")
    t = read_url_list(tmp_path / "l.csv")
    assert t.column("caption").to_pylist() == [long.strip('"'), "short"]


def test_a_list_in_a_bucket_is_streamed_as_one_on_disk_is_read(tmp_path, monkeypatch, bucket):
    from curate.core import storage

    monkeypatch.setattr(textblocks, "BLOCK", 256)
    monkeypatch.setattr(textblocks, "READ_AHEAD", 1000)  # many ranged reads
    _csv(tmp_path / "a.tsv", 300, sep="\t")
    storage.write_bytes(f"{bucket}/lists/a.tsv.gz", gzip.compress((tmp_path / "a.tsv").read_bytes()))
    assert read_url_list(f"{bucket}/lists/a.tsv.gz").equals(read_url_list(tmp_path / "a.tsv"))


def test_a_gzipped_parquet_list_is_read_whole_with_the_same_gzip_errors(tmp_path):
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"url": ["http://a/1", "http://a/2"], "caption": ["x", None]}), buf)
    (tmp_path / "l.parquet").write_bytes(buf.getvalue())
    (tmp_path / "l.parquet.gz").write_bytes(gzip.compress(buf.getvalue()))
    assert read_url_list(tmp_path / "l.parquet.gz").equals(read_url_list(tmp_path / "l.parquet"))
    (tmp_path / "cut.parquet.gz").write_bytes(gzip.compress(buf.getvalue())[:-20])
    with pytest.raises(InputError, match="corrupt gzip data"):
        read_url_list(tmp_path / "cut.parquet.gz")
