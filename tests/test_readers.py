import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.core import schema
from curate.core.errors import InputError
from curate.urllist import ReadConfig, read_url_list
from pipelines.cli import main

ROWS = [
    {"url": "http://a.example/1.jpg", "caption": "a red circle", "source": "x", "score": 0.5},
    {"url": "http://a.example/2.jpg", "caption": "a blue square", "source": "y", "score": 0.7},
    {"url": "http://a.example/3.jpg", "caption": None, "source": "z", "score": 0.1},
]


def write(path, fmt, rows=ROWS):
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        keys = list(rows[0])
        lines = [sep.join(keys)] + [sep.join("" if r[k] is None else str(r[k]) for k in keys) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "txt":
        path.write_text("".join(r["url"] + "\n\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl", "txt"])
def test_every_format_reads_to_the_canonical_table(tmp_path, fmt):
    t = read_url_list(write(tmp_path / f"list.{fmt}", fmt))
    assert t.column_names[:3] == ["uid", "url", "caption"]
    assert t.column("url").to_pylist() == [r["url"] for r in ROWS]
    assert t.schema.field("url").type == pa.string()
    if fmt == "txt":
        assert t.column("caption").null_count == 3
    else:
        assert t.column("caption").to_pylist()[:2] == ["a red circle", "a blue square"]
        assert t.column("source").to_pylist() == ["x", "y", "z"]  # extra columns survive
    assert len(set(t.column("uid").to_pylist())) == 3


def test_gzipped_csv_and_custom_column_names(tmp_path):
    rows = [{"URL": r["url"], "TEXT": r["caption"] or ""} for r in ROWS]
    p = tmp_path / "list.csv.gz"
    write(tmp_path / "plain.csv", "csv", rows)
    p.write_bytes(gzip.compress((tmp_path / "plain.csv").read_bytes()))
    t = read_url_list(p, ReadConfig(url_col="URL", caption_col="TEXT"))
    assert t.column("url").to_pylist() == [r["url"] for r in ROWS]
    assert t.column("caption").to_pylist()[0] == "a red circle"


def test_headerless_tsv_like_cc3m(tmp_path):
    p = tmp_path / "cc3m.tsv"
    p.write_text("a dog on a beach\thttp://x.example/1.jpg\nthe moon\thttp://x.example/2.jpg\n")
    t = read_url_list(p)
    assert t.column("url").to_pylist() == ["http://x.example/1.jpg", "http://x.example/2.jpg"]
    assert t.column("caption").to_pylist() == ["a dog on a beach", "the moon"]


def test_directory_and_glob_read_as_one_list_in_name_order(tmp_path):
    d = tmp_path / "lists"
    d.mkdir()
    write(d / "b.parquet", "parquet", ROWS[1:])
    write(d / "a.jsonl", "jsonl", ROWS[:1])
    (d / "README.md").write_text("not a list")
    for spec in (d, str(d / "*.*[lt]")):
        t = read_url_list(spec)
        assert t.column("url").to_pylist() == [r["url"] for r in ROWS]


def test_uid_is_stable_and_repeated_pairs_are_disambiguated(tmp_path):
    rows = [ROWS[0], ROWS[1], ROWS[0]]
    t1 = read_url_list(write(tmp_path / "a.parquet", "parquet", rows))
    t2 = read_url_list(write(tmp_path / "b.parquet", "parquet", rows[:2]))
    uids = t1.column("uid").to_pylist()
    assert len(set(uids)) == 3
    assert uids[:2] == t2.column("uid").to_pylist()  # appending a repeat changes no existing uid
    assert uids == schema.make_uids([r["url"] for r in rows], [r["caption"] for r in rows])


def test_column_wise_uids_are_the_per_row_hash():
    """``base_uids`` (a list's staging) hashes the bytes ``uid_hash`` hashes: null, empty and NUL-holding
    captions, captions that end in the flag bytes, non-ASCII text, over chunked columns."""
    urls = ["http://a/1", "http://a/1", "http://a/1", "http://é/ü", "http://a/\x00", "u", "http://a/2"]
    caps = [None, "", "\x00\x01", "日本 caption", "x\x02", "\x01", "a" * 5000]
    want = [schema.uid_hash(u, c, 0) for u, c in zip(urls, caps, strict=True)]
    chunked = (pa.chunked_array([pa.array(x[:3], pa.string()), pa.array(x[3:], pa.string())]) for x in (urls, caps))
    assert schema.base_uids(*chunked).to_pylist() == want
    assert schema.base_uids(pa.array(urls), pa.array(caps, pa.string())).to_pylist() == want
    assert len(set(want)) == len(want)  # (url, None), (url, "") and (url, "\x00\x01") stay apart
    assert schema.base_uids(pa.array([], pa.string()), pa.array([], pa.string())).to_pylist() == []


def test_input_uid_column_is_used_and_integers_become_strings(tmp_path):
    rows = [dict(r, uid=i + 10) for i, r in enumerate(ROWS)]
    t = read_url_list(write(tmp_path / "a.parquet", "parquet", rows))
    assert t.column("uid").to_pylist() == ["10", "11", "12"]


def test_reserved_input_columns_are_prefixed(tmp_path):
    rows = [dict(r, status="live", width=3) for r in ROWS]
    t = read_url_list(write(tmp_path / "a.parquet", "parquet", rows))
    assert "input_status" in t.column_names and "input_width" in t.column_names
    assert "status" not in t.column_names


def _error(spec, cfg=ReadConfig()):
    with pytest.raises(InputError) as e:
        read_url_list(spec, cfg)
    return str(e.value)


def test_missing_url_column_names_the_file(tmp_path):
    p = write(tmp_path / "a.parquet", "parquet", [{"link": "http://x", "caption": "c"}])
    msg = _error(p)
    assert str(p) in msg and "'url'" in msg and "link" in msg


def test_corrupt_parquet_and_missing_file(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"PAR1 this is not parquet")
    assert str(p) in _error(p) and "corrupt" in _error(p)
    assert "no such file" in _error(tmp_path / "nope.csv")


def test_empty_list(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("\n\n")
    assert "empty URL list" in _error(p)
    p2 = tmp_path / "zero.parquet"
    pq.write_table(pa.table({"url": pa.array([], pa.string())}), p2)
    assert "empty URL list" in _error(p2)


def test_invalid_utf8_names_the_row(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_bytes(b"url,caption\nhttp://a/1,fine\nhttp://a/2,caf\xe9\n")
    msg = _error(p)
    assert str(p) in msg and "line 3" in msg and "data row 2" in msg
    # Parquet does not validate string bytes on write: we must catch them on read.
    q = tmp_path / "bad.parquet"
    arr = pa.array([b"http://a/1", b"http://a/\xff"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"url": arr}), q)
    msg = _error(q)
    assert "row 2" in msg and "UTF-8" in msg


def test_non_string_and_empty_urls(tmp_path):
    p = write(tmp_path / "a.parquet", "parquet", [{"url": 1}, {"url": 2}])
    assert "must be strings" in _error(p)
    q = tmp_path / "b.jsonl"
    q.write_text('{"url": "http://a/1"}\n{"url": 5}\n')
    assert str(q) in _error(q)
    r = write(tmp_path / "c.parquet", "parquet", [{"url": "http://a/1"}, {"url": " "}])
    assert "row 2" in _error(r) and "empty URL" in _error(r)


def test_malformed_jsonl(tmp_path):
    q = tmp_path / "b.jsonl"
    q.write_text('{"url": "http://a/1"}\n{"url": \n')
    assert "corrupt jsonl" in _error(q)


def test_duplicate_and_unsafe_uids(tmp_path):
    d = tmp_path / "lists"
    d.mkdir()
    write(d / "a.parquet", "parquet", [dict(ROWS[0], uid="u1"), dict(ROWS[1], uid="u2")])
    write(d / "b.parquet", "parquet", [dict(ROWS[2], uid="u1")])
    msg = _error(d)
    assert "duplicate uid 'u1'" in msg and "a.parquet row 1" in msg and "b.parquet row 1" in msg
    p = write(tmp_path / "c.parquet", "parquet", [dict(ROWS[0], uid="../../etc/passwd")])
    assert "row 1" in _error(p) and "plain token" in _error(p)


def test_unknown_suffix_asks_for_format(tmp_path):
    p = tmp_path / "list.dat"
    p.write_text("http://a/1\n")
    assert "--format" in _error(p)
    assert read_url_list(p, ReadConfig(format="txt")).num_rows == 1


def test_cli_check_exits_2_with_one_line_naming_the_file(tmp_path, capsys):
    p = write(tmp_path / "a.parquet", "parquet", [{"link": "http://x"}])
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(p) in err and err.startswith("tiers: error:")
    ok = write(tmp_path / "ok.csv", "csv")
    assert main(["check", str(ok)]) == 0
    assert "3 rows" in capsys.readouterr().out


def test_an_empty_url_cell_names_its_row_with_or_without_a_uid_column(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("url,caption\nhttp://a/1,x\n,y\nhttp://a/3,z\n")
    msg = _error(p)
    assert str(p) in msg and "row 2" in msg and "empty URL" in msg
    q = tmp_path / "b.csv"
    q.write_text("uid,url,caption\nu1,http://a/1,x\nu2,,y\n")
    assert "row 2" in _error(q) and "empty URL" in _error(q)
    r = tmp_path / "c.jsonl"
    r.write_text('{"url": "http://a/1"}\n{"url": null}\n')
    assert "row 2" in _error(r)


def test_corrupt_gzip_is_one_clear_error(tmp_path):
    raw = b"url,caption\n" + b"".join(b"http://a/%d,cap %d\n" % (i, i) for i in range(200))
    data = bytearray(gzip.compress(raw))
    data[12:40] = b"\xff" * 28  # the deflate stream, not just the trailer
    p = tmp_path / "list.csv.gz"
    p.write_bytes(bytes(data))
    msg = _error(p)
    assert str(p) in msg and "corrupt gzip" in msg
    p.write_bytes(gzip.compress(raw)[:-30])  # cut short
    assert "corrupt gzip" in _error(p)


def test_a_column_clip_tiers_owns_never_overwrites_another_input_column(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("url,caption,status,input_status,exif\nhttp://a/1,x,s1,i1,e1\n")
    t = read_url_list(p)
    assert t.select(["input_input_status", "input_status", "exif"]).to_pylist() == [
        {"input_input_status": "s1", "input_status": "i1", "exif": "e1"}
    ]
    from curate.download.plan import img2dataset_safe

    t2 = t.append_column("input_exif", pa.array(["ie"]))  # and img2dataset's names likewise
    safe = img2dataset_safe(t2)
    assert safe.select(["input_input_exif", "input_exif"]).to_pylist() == [
        {"input_input_exif": "e1", "input_exif": "ie"}
    ]


def test_a_ragged_csv_names_its_row(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text('url,caption\nhttp://a/1,x\n"http://a/2","a, quoted"\nhttp://a/3,z,extra,more\n')
    msg = _error(p)
    assert str(p) in msg and "line 4 (data row 3)" in msg and "4 fields, expected 2" in msg
    q = tmp_path / "b.tsv"
    q.write_text("url\tcaption\nhttp://a/1\tx\ty\n")
    assert "line 2 (data row 1)" in _error(q)


def test_quiet_prints_nothing_but_errors(tmp_path, capsys):
    p = tmp_path / "u.csv"
    p.write_text("url,caption\nhttp://a/1.jpg,x\n")
    assert main(["check", str(p), "--quiet"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert main(["check", str(tmp_path / "missing.csv"), "-q"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("tiers: error:") and len(out.err.strip().splitlines()) == 1
