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
    got = list(textblocks.blocks(str(p), ",", size=size))
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


# Quotes as real captions hold them: inch marks, titles quoted mid-caption or at its start, doubled quotes
# inside quoted fields, quoted newlines. img2dataset reads a list with pyarrow's csv parser, which quotes
# only at a field's start: the same list must read the same here, in any block size.
ODD_CAPTIONS = [
    'a 5" screen',
    'Winter 5" X 7" card and a 3" one',
    '"Hello" poster',
    'Poster "Hello" red',
    '"""Calm Spirit"" Jadeite Bangle"',
    '"a ""quoted\nnewline"""',
    '5"',
    "plain",
    "",
    '""',
    '"x"y"z',
    '"para\n\npara"',
]


def _odd_list(path, n: int, sep: str, end: str = "\n") -> None:
    rng = random.Random(n)
    lines = [f"url{sep}caption{sep}n"]
    for i in range(n):
        lines += [f"http://q.example/{i}.jpg{sep}{rng.choice(ODD_CAPTIONS)}{sep}{i}"] + [""] * (rng.random() < 0.05)
    path.write_bytes((end + end.join(lines) + end + end).encode())  # empty lines too, which both parsers skip


def _as_img2dataset_reads(path, sep: str) -> pa.Table:
    import pyarrow.csv as pacsv

    return pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter=sep, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={"url": pa.string(), "caption": pa.string(), "n": pa.string()},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


@pytest.mark.parametrize("sep,end", [(",", "\n"), ("\t", "\n"), (",", "\r\n")])
@pytest.mark.parametrize("size", [16, 300, 1 << 23])
def test_quotes_inside_captions_read_as_img2datasets_reader_reads_them(tmp_path, monkeypatch, sep, end, size):
    monkeypatch.setattr(textblocks, "BLOCK", size)
    p = tmp_path / ("l.csv" if sep == "," else "l.tsv")
    _odd_list(p, 500, sep, end)
    want = _as_img2dataset_reads(p, sep)
    got = read_url_list(p)
    for col in ("url", "caption", "n"):
        assert got.column(col).to_pylist() == want.column(col).to_pylist()
    assert 'a 5" screen' in got.column("caption").to_pylist()
    assert "Hello poster" in got.column("caption").to_pylist()
    plain = tmp_path / ("p.csv" if sep == "," else "p.tsv")  # blank lines in a list whose quotes are plain
    plain.write_bytes(end.join(["url" + sep + "caption" + sep + "n", "", f"http://p/1{sep}x{sep}1", "", ""]).encode())
    assert read_url_list(plain).column("url").to_pylist() == ["http://p/1"]


def test_plain_quotes_keep_polars_fast_path_and_the_cut_both_ways_agree(tmp_path):
    p = tmp_path / "a.csv"
    _csv(p, 2000)  # csv.writer quotes only whole fields: every quote is plain
    data = p.read_bytes()
    assert all(b.plain for b in textblocks.blocks(str(p), ",", size=256))
    import numpy as np

    a = np.frombuffer(data, np.uint8)
    quotes = np.flatnonzero(a == 0x22)
    opens, closes, odd = textblocks._quoted_fields(data, quotes.tolist(), ord(","))
    assert odd == len(data) and textblocks._all_plain(a, quotes, ord(","))
    for end in range(0, len(data), 997):  # the cut either way: the last newline outside quoted fields
        part = data[:end]
        o, c, _ = textblocks._quoted_fields(part, quotes[quotes < end].tolist(), ord(","))
        nl = np.flatnonzero(a[:end] == 0x0A)
        inside = np.zeros(end + 1, int)
        np.add.at(inside, o, 1)
        np.add.at(inside, np.minimum(np.array(c, int) + 1, end), -1)
        nl = nl[np.cumsum(inside)[nl] == 0]
        assert textblocks._scan(part, ord(","))[0] == (int(nl[-1]) + 1 if len(nl) else 0)
    (tmp_path / "b.csv").write_text('url,caption\nhttp://a/1,a 5" screen\n')
    assert [b.plain for b in textblocks.blocks(str(tmp_path / "b.csv"), ",")] == [False]


def test_a_block_read_by_either_parser_gives_the_same_table(tmp_path):
    from curate.urllist import delimited

    text = 'url,caption,url,caption\nhttp://a/1,,x,""\nhttp://a/2,"q, ""r""",,s\n\nhttp://a/3,"two\nlines",y,z\n'
    block = textblocks.Block(text.encode(), 0, 0)
    fast = delimited._parse("f.csv", text, ",", True, block, 0)
    slow = delimited._parse("f.csv", text, ",", True, textblocks.Block(text.encode(), 0, 0, plain=False), 0)
    assert slow.columns == fast.columns == ["url", "caption", "url_duplicated_0", "caption_duplicated_0"]
    assert slow.to_dicts() == fast.to_dicts()
    body = text.split("\n", 1)[1]
    fast, slow = (
        delimited._parse("f.csv", body, ",", False, textblocks.Block(body.encode(), 0, 0, p), 0) for p in (1, 0)
    )
    assert slow.columns == fast.columns and slow.to_dicts() == fast.to_dicts()


def test_a_ragged_row_in_a_block_with_odd_quotes_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(textblocks, "BLOCK", 64)
    body = "".join(f'http://a/{i},a {i}" screen\n' if i != 38 else f"http://a/{i}\n" for i in range(1, 40))
    p = tmp_path / "ragged.csv"
    p.write_text("url,caption\n" + body + 'http://a/40,7" tab,extra\n')
    with pytest.raises(InputError, match=r"line 41 \(data row 40\) has 3 fields, expected 2"):
        read_url_list(p)


@pytest.mark.parametrize("odd", [True, False])
@pytest.mark.parametrize("size", [16, 64, 300, 1 << 23])
def test_a_short_row_is_padded_with_nulls_wherever_it_lies(tmp_path, monkeypatch, odd, size):
    """First in a block, inside a block polars parses or one pyarrow parses, after a quoted newline, on
    the last line without its newline: a row short of fields reads as the full row with nulls for what
    it lacks (polars pads it; pyarrow alone refuses it), so where the blocks are cut changes nothing."""
    monkeypatch.setattr(textblocks, "BLOCK", size)
    rng = random.Random(size)
    captions = ODD_CAPTIONS if odd else ["plain", "", '"q, ""r"""', '"two\nlines"', '""']
    full, short, kept = ["url,caption,n"], ["url,caption,n"], []
    for i in range(300):
        fields = [f"http://s/{i}.jpg", rng.choice(captions), str(i)]
        keep = 3 if rng.random() > 0.2 else rng.choice([1, 2])
        full.append(",".join(fields))
        short.append(",".join(fields[:keep]))
        kept.append(keep)
    kept[-1] = 1  # the last line, without a newline, is short too
    short[-1] = full[-1].split(",")[0]
    (tmp_path / "full.csv").write_text("\r\n".join(full))
    (tmp_path / "short.csv").write_text("\r\n".join(short))
    want = _as_img2dataset_reads(tmp_path / "full.csv", ",")
    got = read_url_list(tmp_path / "short.csv")
    assert got.column("url").to_pylist() == want.column("url").to_pylist()
    caps, ns = want.column("caption").to_pylist(), want.column("n").to_pylist()
    assert got.column("caption").to_pylist() == [c if k >= 2 else None for c, k in zip(caps, kept, strict=True)]
    assert got.column("n").to_pylist() == [n if k >= 3 else None for n, k in zip(ns, kept, strict=True)]
    blocks = list(textblocks.blocks(str(tmp_path / "short.csv"), ","))
    assert any(not b.plain for b in blocks) == odd
