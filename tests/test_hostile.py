"""Hostile servers against the downloader: every URL ends in time, with the right reason.

A real HTTP server on 127.0.0.1 (``curate.download.hostile``) trickles status lines, headers and
bodies, serves bombs in every image format, and puts ``noai`` on redirect hops. No Ray here, except
where a whole shard runs in this process as a Ray task would run it.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.core import imagecheck, schema, units
from curate.download import DownloadConfig
from curate.download.fetch import Fetcher
from curate.download.reasons import reason
from curate.download.safety import parse_allow
from synthweb import bombs
from synthweb.hostile import HostileServer

DEADLINE = 2.0
CFG = DownloadConfig(timeout=1, url_deadline=DEADLINE, image_size=64, threads=8, samples_per_shard=20)
DIRECTIVES = list(CFG.disallowed_header_directives)


@pytest.fixture(scope="module")
def hostile():
    with HostileServer(trickle=0.3) as s:  # a byte every 0.3 s: well inside the 1 s socket timeout
        yield s


def fetch(url: str, allow: str, cfg: DownloadConfig = CFG) -> tuple[str | None, str | None, float]:
    """(reason, raw message, seconds) for one URL."""
    fetcher = Fetcher(cfg, parse_allow(allow))
    t0 = time.perf_counter()
    try:
        _, stream, err = fetcher((0, url), cfg.timeout, cfg.retries, None, DIRECTIVES)
    finally:
        fetcher.close()
    return reason("success" if stream else "failed", err), err, time.perf_counter() - t0


# --- 1: every URL ends within url_deadline ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/slow-status", "/slow-headers", "/slow-body"])
def test_trickling_servers_end_at_the_url_deadline(hostile, path):
    why, err, seconds = fetch(hostile.url(path), "loopback")
    assert why == "timeout" and "url deadline" in err, err
    assert DEADLINE - 0.1 < seconds < DEADLINE + 1.0, seconds


def test_the_deadline_spans_retries(hostile):
    why, err, seconds = fetch(hostile.url("/slow-headers"), "loopback", CFG.replace(retries=3))
    assert why == "timeout" and seconds < DEADLINE + 1.0


def test_a_shard_with_slow_headers_finishes_within_the_deadline(hostile, tmp_path):
    """The unit a Ray task runs, run here: the slow URL fails as timeout and the shard is marked done."""
    from curate.download import plan
    from curate.download.run import shard_fingerprint
    from curate.download.worker import run_shard
    from curate.urllist import read_url_list

    urls = [hostile.url(p) for p in ("/ok.jpeg", "/slow-headers", "/ok.png", "/slow-status", "/ok.webp")]
    src = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": urls, "caption": [f"c{i}" for i in range(len(urls))]}), src)
    raw = tmp_path / "out" / "raw"
    plan.plan(raw, read_url_list(src), CFG, str(src))
    for module in ("downloader", "resizer", "writer"):  # imported once per worker process, not per shard
        __import__(f"img2dataset.{module}")
    t0 = time.perf_counter()
    info = run_shard(str(raw), 0, CFG, parse_allow(f"loopback:{hostile.port}"), shard_fingerprint(CFG))
    seconds = time.perf_counter() - t0
    assert units.is_done(raw, "00000") and info["rows"] == 5
    rows = pq.read_table(raw / "00000.parquet").to_pylist()
    assert [r[schema.DOWNLOAD_REASON] for r in rows] == [None, "timeout", None, "timeout", None]
    assert seconds < DEADLINE + 2.0, seconds


# --- 2: bombs in every format are refused before decoding ----------------------------------------


@pytest.mark.parametrize("fmt", sorted(bombs.FORMATS))
def test_every_accepted_format_has_its_declared_size_checked(fmt):
    ok = imagecheck.check(bombs.sample(fmt), 40_000_000)
    assert ok.format == fmt and ok.width * ok.height <= 64 * 48
    t0 = time.perf_counter()
    with pytest.raises(imagecheck.Refused) as e:
        imagecheck.check(bombs.bomb(fmt), 40_000_000)
    assert e.value.reason == "too_many_pixels" and "8000x6000" in str(e.value)
    assert time.perf_counter() - t0 < 0.05  # a header read, not a decode


def test_formats_whose_size_cannot_be_checked_are_refused():
    for fmt in bombs.UNCHECKABLE:
        with pytest.raises(imagecheck.Refused) as e:
            imagecheck.check(bombs.bomb(fmt), 40_000_000)
        assert e.value.reason == "unsupported_format"
    with pytest.raises(imagecheck.Refused, match="not_an_image"):
        imagecheck.check(b"<!DOCTYPE html><html>", 10)
    with pytest.raises(imagecheck.Refused, match="empty"):
        imagecheck.check(b"", 10)
    # PIL's other plugins never see pool bytes: an EPS would be handed to Ghostscript.
    with pytest.raises(imagecheck.Refused, match="unsupported_format"):
        imagecheck.check(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8000 6000\n", 10**9)


def test_every_decoder_that_sees_pool_bytes_refuses_bombs():
    from curate.annotate.image import decode
    from train.augment import decode_image

    for fmt in [*bombs.FORMATS, *bombs.UNCHECKABLE]:
        data = bombs.bomb(fmt, 10_000, 10_000) if fmt in bombs.FORMATS else bombs.bomb(fmt)
        want = "too_many_pixels" if fmt in bombs.FORMATS else "unsupported_format"
        assert decode(data)[1] == want, fmt  # annotate (limit 64 Mpx)
        with pytest.raises(imagecheck.Refused):  # the trainer's loader (limit 40 Mpx)
            decode_image(data)
        sample = bombs.sample(fmt) if fmt in bombs.FORMATS else None
        if sample:
            assert decode(sample)[1] is None and decode_image(sample).size[0] in (48, 64), fmt


@pytest.mark.parametrize("fmt", ["jpeg2000", "tiff", "gif", "bmp", "ico", "psd", "heic", "ppm"])
def test_downloaded_bombs_fail_with_a_reason(hostile, fmt):
    why, err, seconds = fetch(hostile.url(f"/bomb/{fmt}"), "loopback")
    assert why == ("unsupported_format" if fmt in bombs.UNCHECKABLE else "too_large"), err
    assert seconds < 0.5


# --- 3: a scoped allow-list ------------------------------------------------------------------------


def test_allow_list_entries_are_scoped_to_host_and_port(hostile):
    p = hostile.port
    policy = parse_allow(f"10.1.2.3:9000,mirror.internal,[fd00::1]:443,loopback:{p}")
    assert policy.permits("10.1.2.3", "10.1.2.3", 9000) and not policy.permits("10.1.2.3", "10.1.2.3", 9001)
    assert not policy.permits("10.1.2.4", "10.1.2.4", 9000) and not policy.permits("127.0.0.1", "x", 9000)
    assert policy.permits("10.9.9.9", "mirror.internal", 80) and policy.permits("10.9.9.9", "Mirror.Internal.", 8)
    assert not policy.permits("10.9.9.9", "other.internal", 80)
    assert policy.permits("fd00::1", "fd00::1", 443) and not policy.permits("fd00::1", "fd00::1", 80)
    assert policy.permits("127.0.0.1", "127.0.0.1", p) and not policy.permits("127.0.0.1", "127.0.0.1", p + 1)
    assert "10.1.2.3:9000" in policy.describe()


def test_only_the_listed_port_is_reachable_and_redirects_elsewhere_stay_refused(hostile):
    p = hostile.port
    assert fetch(hostile.url("/ok.jpeg"), f"loopback:{p}")[0] is None
    assert fetch(hostile.url("/ok.jpeg"), f"127.0.0.1:{p}")[0] is None
    assert fetch(f"http://localhost:{p}/ok.jpeg", f"localhost:{p}")[0] is None
    assert fetch(hostile.url("/ok.jpeg"), f"localhost:{p}")[0] == "private_address"  # a name entry: that name only
    assert fetch(hostile.url("/ok.jpeg"), f"loopback:{p + 1}")[0] == "private_address"
    assert fetch(hostile.url("/ok.jpeg"), "10.0.0.0/8")[0] == "private_address"  # loopback is never implied
    for target in ("http://127.0.0.1:1/x", "http://10.0.0.1/x", "http://[::1]:1/x", "http://169.254.169.254/"):
        why, err, _ = fetch(hostile.url(f"/redirect?to={target}"), f"loopback:{p}")
        assert why == "private_address", (target, err)
    assert fetch(hostile.url("/redirect?to=file:///etc/passwd"), f"loopback:{p}")[0] == "bad_url"


def test_the_cli_wants_explicit_entries(tmp_path, capsys):
    from pipelines.cli import main

    urls = tmp_path / "u.csv"
    urls.write_text("url\nhttp://127.0.0.1:1/x\n")
    with pytest.raises(SystemExit) as e:  # a bare flag no longer means "loopback"
        main(["download", str(urls), "--out", str(tmp_path / "o"), "--allow-private-hosts"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["download", str(urls), "--out", str(tmp_path / "o"), "--allow-private-hosts", "10.1.2.3:x"])
    assert "port" in capsys.readouterr().err


# --- 4: noai on a redirect hop ------------------------------------------------------------------


def test_noai_on_an_intermediate_redirect_hop_is_honoured(hostile):
    why, err, _ = fetch(hostile.url("/redirect-noai"), "loopback")
    assert why == "noai_header" and "redirect" in err, err
    assert fetch(hostile.url("/noai"), "loopback")[0] == "noai_header"
    # With no directives to honour, the chain is followed to the image.
    fetcher = Fetcher(CFG, parse_allow("loopback"))
    _, stream, err = fetcher((0, hostile.url("/redirect-noai")), 1, 0, None, None)
    fetcher.close()
    assert stream is not None, err


# --- what already held, kept held ----------------------------------------------------------------


def test_endless_bodies_huge_lengths_and_stalls_end(hostile):
    assert fetch(hostile.url("/endless"), "loopback", CFG.replace(max_image_bytes=1 << 20))[0] == "too_large"
    assert fetch(hostile.url("/huge-length"), "loopback")[0] == "too_large"
    why, _, seconds = fetch(hostile.url("/stall"), "loopback")
    assert why == "timeout" and seconds < CFG.timeout + 0.5
    assert fetch(hostile.url("/html"), "loopback")[0] == "not_an_image"


def test_the_hostile_bench_fast_subset_handles_every_case(tmp_path):
    """bench/hostile.py --fast: every fetch and input case (the build cases run in the bench itself)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "hostile.json"
    cmd = [sys.executable, str(root / "bench" / "hostile.py"), "--fast", "--deadline", "2", "--json", str(out)]
    p = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    doc = json.loads(out.read_text())
    failed = [r for r in doc["results"] if not r["handled"]]
    assert p.returncode == 0 and not failed, failed or p.stderr[-2000:]
    assert doc["cases"] >= 60 and f"{doc['cases']}/{doc['cases']} handled" in p.stdout
