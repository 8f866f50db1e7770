"""The bytes of a band shard's members: tar headers as tarfile reads them (and never a path), and each
sample's ``.json`` member exactly as ``json.dumps`` writes it, strings and floats alike."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pytest

from curate.core.tarstream import header


def test_header_refuses_path_like_names():
    for bad in ("../x.jpg", "/etc/passwd.txt", "a/b.jpg", ".hidden.jpg", "x.exe"):
        with pytest.raises(ValueError):
            header(bad, 1)


def test_header_is_what_tarfile_reads():
    h = header("abc.json", 70_000)
    member = tarfile.open(fileobj=io.BytesIO(h + bytes(70_000 + (-70_000 % 512) + 1024))).getmembers()[0]
    assert (member.name, member.size, member.mode, member.mtime, member.uid, member.isreg()) == (
        "abc.json",
        70_000,
        0o644,
        0,
        0,
        True,
    )


def test_headers_in_bulk_equal_one_by_one_and_refuse_the_same_things():
    from curate.core.tarstream import headers

    names = ["a.jpg", "0123456789abcdef0123.json", "x" * 96 + ".txt", "u_1-2.webp"]
    sizes = [0, 511, 8**11 - 1, 123_456]
    assert [row.tobytes() for row in headers(names, sizes)] == [
        header(n, k) for n, k in zip(names, sizes, strict=True)
    ]
    with pytest.raises(ValueError, match="unsafe"):
        headers(["ok.jpg", "../x.jpg"], [1, 1])
    with pytest.raises(ValueError, match="cannot hold"):
        headers(["big.jpg"], [8**11])


@pytest.mark.parametrize(
    "row",
    [
        {"uid": "a", "url": 'http://x/ü?"q"', "caption": "line\nbreak \u2028 \x00 \t é 😀 \\", "quality": 0.1234567},
        {"uid": "b", "url": None, "caption": None, "quality": None},
        {"uid": "c", "url": "", "caption": "", "quality": float("nan")},
        {"uid": "d", "url": "u", "caption": "c", "quality": float("-inf")},
        {"uid": "e", "url": "u", "caption": "c", "quality": 1e-300},
        {"uid": "f", "url": "u", "caption": "c", "quality": 3},
    ],
)
def test_sample_json_member_is_exactly_json_dumps(row):
    from curate.shard.writer import _sample_meta

    row = {**row, "band": "q000-010"}
    assert _sample_meta(row) == json.dumps(row, sort_keys=True, ensure_ascii=False).encode()


def test_qualities_are_written_as_json_dumps_writes_them():
    """Arrow's float text stands in for repr only where the two agree; checked over every magnitude."""
    import math

    from curate.shard.bandshard import _json_numbers

    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            rng.random(50_000),
            rng.random(50_000).astype(np.float32).astype(np.float64),
            np.ldexp(rng.random(100_000) + 0.5, rng.integers(-1074, 1024, 100_000)) * rng.choice([-1, 1], 100_000),
            np.round(rng.random(10_000) * 1000) / 8,
            [0.0, -0.0, 1.0, 1e16, 1e-4, 9.999999999999999e-05, 9999999999999998.0, 1e15, np.nan, np.inf, -np.inf],
        ]
    )
    want = [float.__repr__(v) if math.isfinite(v) else json.dumps(v) for v in x.tolist()]
    assert _json_numbers(pa.array(x)).to_pylist() == want
    assert _json_numbers(pa.array([0.5, None, 3.0], pa.float32())).to_pylist() == ["0.5", "null", "3.0"]


def test_strings_are_written_as_json_dumps_writes_them():
    import random

    from curate.shard.bandshard import _json_strings

    rng = random.Random(0)
    alphabet = ["a", " ", '"', "\\", "\n", "\x00", "\x1f", "\x7f", "é", "😀", "\u2028", "/"]
    values = [None if rng.random() < 0.1 else "".join(rng.choices(alphabet, k=rng.randint(0, 8))) for _ in range(5000)]
    column = pa.array(values, pa.string())
    for col in (column, column.slice(37, 2000), pa.array(["plain", "x"]), pa.array([None, None])):
        assert _json_strings(col).to_pylist() == [json.dumps(v, ensure_ascii=False) for v in col.to_pylist()]
