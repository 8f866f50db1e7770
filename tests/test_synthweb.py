import hashlib
import io
import json
import re
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.urllist import read_url_list
from pipelines.cli import main
from synthweb import KINDS, WebConfig, build, parse_mix, write_url_list


def digest(root):
    return {
        name: hashlib.sha256((root / name).read_bytes()).hexdigest()
        for name in ("blobs.bin", "urls.parquet", "truth.parquet", "routes.parquet", "eval/zeroshot.parquet")
    }


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = WebConfig(n=300, seed=11, eval_per_concept=2, retrieval_pairs=10)
    build(tmp_path / "a", cfg)
    build(tmp_path / "b", WebConfig(**{**cfg.__dict__, "workers": 1}))  # in-process vs pool: same bytes
    build(tmp_path / "c", WebConfig(**{**cfg.__dict__, "seed": 12}))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a")["blobs.bin"] != digest(tmp_path / "c")["blobs.bin"]


def test_truth_counts_match_the_requested_mix(tmp_path):
    mix = parse_mix("clean=0.5,foreign=0.2,exact_dup=0.1,near_dup=0.1,http_404=0.05,bomb=0.05")
    cfg = WebConfig(n=1000, seed=1, mix=mix, eval_per_concept=1, retrieval_pairs=5)
    summary = build(tmp_path, cfg)
    truth = pq.read_table(tmp_path / "truth.parquet").to_pylist()
    got = {k: sum(t["kind"] == k for t in truth) for k in KINDS}
    assert got == summary["counts"] == {k: round(1000 * mix.get(k, 0)) for k in KINDS}
    langs = {t["lang"] for t in truth if t["kind"] == "foreign"}
    assert langs == {"de", "fr", "es", "zh", "ru"}
    uids = {t["uid"] for t in truth}
    assert all(t["dup_of"] in uids for t in truth if t["kind"] in ("exact_dup", "near_dup"))


def test_default_mix_is_a_raw_crawl_and_counts_are_exact():
    counts = WebConfig(n=20_000).counts()
    assert sum(counts.values()) == 20_000
    assert 0.4 <= 1 - counts["clean"] / 20_000 <= 0.6
    assert WebConfig(n=7, mix={"clean": 1, "foreign": 1, "http_404": 1}).counts()["clean"] >= 2


def test_urls_reveal_no_truth_and_read_cleanly(small_web):
    urls = pq.read_table(small_web / "urls.parquet")
    assert urls.column_names == ["url", "caption", "uid"]
    # Every URL has the same opaque shape, whatever it really serves.
    pattern = re.compile(r"^http://(127\.0\.0\.1|\[fd00:7e57::10\]):8765/img/[0-9a-f]{20}\.(jpg|png|webp)$")
    assert all(pattern.match(u) for u in urls.column("url").to_pylist())
    table = read_url_list(small_web / "urls.parquet")  # the input's uid column is used as-is
    assert table.column("uid").to_pylist() == urls.column("uid").to_pylist()


def test_exact_duplicates_share_bytes_near_duplicates_do_not(small_web, served_web):
    truth = pq.read_table(small_web / "truth.parquet").to_pylist()
    urls = {r["uid"]: r["url"] for r in pq.read_table(served_web.urls_path).to_pylist()}
    exact = next(t for t in truth if t["kind"] == "exact_dup")
    near = next(t for t in truth if t["kind"] == "near_dup")
    fetch = lambda uid: urllib.request.urlopen(urls[uid], timeout=5).read()  # noqa: E731
    assert fetch(exact["uid"]) == fetch(exact["dup_of"])
    assert fetch(near["uid"]) != fetch(near["dup_of"])
    Image.open(io.BytesIO(fetch(near["uid"]))).load()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def get(url, timeout=3.0):
    """(status, headers, body) through urllib, redirects not followed."""
    try:
        with urllib.request.build_opener(NoRedirect).open(url, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture(scope="module")
def by_kind(small_web, served_web):
    truth = pq.read_table(small_web / "truth.parquet").to_pylist()
    urls = pq.read_table(served_web.urls_path).to_pylist()
    out = {}
    for t, u in zip(truth, urls, strict=True):
        out.setdefault(t["kind"], u["url"])
    return out


def decodes(body):
    try:
        Image.open(io.BytesIO(body)).load()
        return True
    except Exception:
        return False


@pytest.mark.parametrize("kind", ["clean", "misaligned", "foreign", "tiny", "extreme_aspect", "blank"])
def test_image_kinds_serve_decodable_images(by_kind, kind):
    status, headers, body = get(by_kind[kind])
    assert status == 200 and headers["Content-Type"].startswith("image/") and decodes(body)
    img = Image.open(io.BytesIO(body))
    if kind == "tiny":
        assert max(img.size) < 32
    if kind == "extreme_aspect":
        assert max(img.size) / min(img.size) > 4


def test_every_fault_kind_is_observable(by_kind):
    assert get(by_kind["http_404"])[0] == 404
    assert get(by_kind["http_500"])[0] == 500
    status, headers, body = get(by_kind["noai"])
    assert status == 200 and "noai" in headers["X-Robots-Tag"] and decodes(body)
    status, headers, body = get(by_kind["truncated"])
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8" and not decodes(body)
    status, headers, body = get(by_kind["html_as_image"])
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body.lstrip().startswith(b"<!DOCTYPE html")
    status, headers, body = get(by_kind["empty_body"])
    assert status == 200 and body == b""
    status, headers, body = get(by_kind["bomb"])
    assert status == 200 and len(body) < 2000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(body))
    # redirect loop: A -> B -> A
    status, headers, _ = get(by_kind["redirect_loop"])
    assert status == 302
    base = by_kind["redirect_loop"].split("/img/")[0]
    status2, headers2, _ = get(base + headers["Location"])
    assert status2 == 302 and base + headers2["Location"] == by_kind["redirect_loop"]
    # slow: headers arrive, the body stalls past any sane timeout
    with pytest.raises(TimeoutError):
        with urllib.request.urlopen(by_kind["slow"], timeout=0.5) as r:
            r.read()
    # private address: a private host, not the server's
    assert by_kind["private_address"].startswith("http://[fd00:")


def test_eval_set_has_every_concept_and_templates(small_web):
    zs = pq.read_table(small_web / "eval" / "zeroshot.parquet")
    classes = json.loads((small_web / "eval" / "classes.json").read_text())
    assert len(classes["classnames"]) >= 10 and "{}" in classes["templates"][0]
    assert set(zs.column("label").to_pylist()) == set(range(len(classes["classnames"])))
    ret = pq.read_table(small_web / "eval" / "retrieval.parquet")
    assert ret.num_rows == 50 and decodes(ret.column("image")[0].as_py())


def test_url_list_rebased_for_another_port(small_web, tmp_path):
    dest = write_url_list(small_web, "http://127.0.0.1:9999", tmp_path / "u.parquet")
    urls = pq.read_table(dest).column("url").to_pylist()
    assert sum(u.startswith("http://127.0.0.1:9999/img/") for u in urls) == sum("127.0.0.1" in u for u in urls) > 0
    assert (
        main(["web", "urls", str(small_web), "--base", "http://127.0.0.1:9998", "--out", str(tmp_path / "v.pq")]) == 0
    )


def test_cli_build_rejects_a_bad_mix(tmp_path, capsys):
    assert main(["web", "build", str(tmp_path / "w"), "--n", "10", "--mix", "clean=1,bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_write_pairs_serves_given_images_with_their_captions_and_truth(tmp_path):
    from synthweb.pairs import write_pairs

    images = []
    for colour, fmt in (("red", "JPEG"), ("blue", "PNG")):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(buf, fmt)
        images.append(buf.getvalue())
    web = write_pairs(
        tmp_path,
        images,
        ["a red square", "a blue square"],
        columns={"photo": ["1", "2"]},
        truth={"aligned": [True, False]},
    )
    urls = pq.read_table(web / "urls.parquet").to_pydict()
    truth = pq.read_table(web / "truth.parquet").to_pydict()
    assert urls["caption"] == ["a red square", "a blue square"] and urls["photo"] == ["1", "2"]
    assert truth == {"uid": urls["uid"], "aligned": [True, False]}
    assert [u.rsplit(".", 1)[1] for u in urls["url"]] == ["jpg", "png"]
    with pytest.raises(ValueError):
        write_pairs(tmp_path / "bad", [b"not an image"], ["x"])
