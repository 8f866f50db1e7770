"""tiers download: every URL accounted for, fault kinds in their reasons, resume after kill -9, safety.

Everything talks to a synthetic web on 127.0.0.1 only. The ``private_address`` kind names an
unroutable private IPv6 host that the downloader must refuse before connecting.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.core import schema
from curate.core.errors import InputError
from curate.download import DownloadConfig, download, load_config, read_manifest, read_results, retry_failed
from curate.download.fetch import Fetcher, inspect_body
from curate.download.reasons import REASONS, reason
from curate.download.safety import AddressPolicy, parse_allow
from synthweb.bodies import bomb_png
from synthweb.build import FAULT_KINDS, PRIVATE_BASE

ROOT = Path(__file__).resolve().parents[1]

# What each kind of the synthetic web must end as: None = downloaded.
EXPECTED = {
    "clean": None,
    "http_404": "http_404",
    "http_500": "http_5xx",
    "slow": "timeout",
    "truncated": "truncated",
    "html_as_image": "not_an_image",
    "empty_body": "empty_body",
    "noai": "noai_header",
    "redirect_loop": "redirect_loop",
    "bomb": "too_large",
    "private_address": "private_address",
}
CFG = DownloadConfig(timeout=1, url_deadline=10, samples_per_shard=40, threads=8, image_size=64)
SLOW_SECONDS = 4  # the `slow` kind stalls this long: past CFG's timeout, within a retry's longer one


@pytest.fixture(scope="module")
def fault_web(tmp_path_factory):
    """120 URLs: clean images and ~8 of every fault kind."""
    from synthweb import WebConfig, build

    root = tmp_path_factory.mktemp("faultweb")
    mix = {"clean": 0.3, **{k: 0.7 / len(FAULT_KINDS) for k in FAULT_KINDS}}
    build(root, WebConfig(n=120, seed=5, mix=mix, eval_per_concept=1, retrieval_pairs=2, workers=1))
    return root


@pytest.fixture(scope="module")
def fault_server(fault_web):
    from synthweb import WebServer

    with WebServer(fault_web, slow_seconds=SLOW_SECONDS) as web:
        yield web


@pytest.fixture(scope="module")
def downloaded(fault_server, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("dl")
    summary = download(fault_server.urls_path, out, CFG, allow_private="loopback", progress=False)
    return out, summary


def raw_table(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted((Path(out) / "raw").glob("[0-9]*.parquet")))


def truth(web: Path) -> dict[str, str]:
    return {r["uid"]: r["kind"] for r in pq.read_table(web / "truth.parquet").to_pylist()}


# --- units: no Ray, no sockets ------------------------------------------------------------------


def test_policy_refuses_private_and_allows_only_what_is_listed():
    public, loop, tenet = AddressPolicy(), parse_allow("loopback"), parse_allow("10.0.0.0/8")
    for addr in ("127.0.0.1", "::1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "fd00:7e57::10", "224.0.0.1"):
        assert not public.permits(addr), addr
    for addr in ("::ffff:10.0.0.1", "64:ff9b::a00:1", "0.0.0.0", "100.64.0.1", "fe80::1"):
        assert not public.permits(addr) and not loop.permits(addr), addr
    assert loop.permits("127.0.0.1") and loop.permits("::1") and loop.permits("::ffff:127.0.0.1")
    assert not loop.permits("10.1.2.3") and not loop.permits("fd00:7e57::10")
    # A network entry adds that network only: loopback is not implied.
    assert tenet.permits("10.1.2.3") and not tenet.permits("127.0.0.1") and not tenet.permits("192.168.0.1")
    assert public.permits("8.8.8.8") and public.permits("2606:4700::1111")
    for bad in ("urls.parquet", "10.0.0.0/33", "10.1.2.3:0", "10.1.2.3:http", "[fd00::1", "", " , "):
        with pytest.raises(ValueError):
            parse_allow(bad)


def test_reasons_map_raw_messages():
    cases = {
        "HTTP Error 404: Not Found": "http_404",
        "HTTP Error 503: Service Unavailable": "http_5xx",
        "HTTP Error 403: Forbidden": "http_other",
        "HTTP Error 302: The server returned a redirect error that would lead to an infinite loop": "redirect_loop",
        "<urlopen error timed out>": "timeout",
        "The read operation timed out": "timeout",
        "<urlopen error [Errno 111] Connection refused>": "connection_error",
        "<urlopen error [Errno -2] Name or service not known>": "dns_error",
        "<urlopen error refused: private address: x resolves to 10.0.0.1, not allowed>": "private_address",
        "Use of image disallowed by X-Robots-Tag directive": "noai_header",
        "Image decoding error": "decode_error",
        "unknown url type: 'ftp'": "bad_url",
        "something new": "other",
    }
    for message, want in cases.items():
        assert reason("failed_to_download", message) == want, message
        assert want in REASONS
    assert reason("success", None) is None


def test_inspect_body_catches_what_must_not_reach_the_decoder():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    assert inspect_body(jpeg, "image/jpeg", 10_000) is None
    assert inspect_body(b"", "image/jpeg", 10_000).startswith("empty body")
    assert inspect_body(b"<!DOCTYPE html><html>", "image/jpeg", 10_000).startswith("not an image")
    assert inspect_body(jpeg[: len(jpeg) // 2], "image/jpeg", 10_000).startswith("truncated")
    assert inspect_body(bomb_png(), "image/png", 40_000_000).startswith("too large")
    assert inspect_body(jpeg, "image/jpeg", 1000).startswith("too large")  # 1200 px > 1000


def test_config_from_toml(tmp_path):
    p = tmp_path / "d.toml"
    p.write_text("[download]\nimage_size = 256\ntimeout = 3\ndisallowed_header_directives = ['noai']\n")
    cfg = load_config(p)
    assert cfg.image_size == 256 and cfg.timeout == 3 and cfg.disallowed_header_directives == ("noai",)
    p.write_text("image_size = 128\n")
    assert load_config(p).image_size == 128
    p.write_text("imagesize = 128\n")
    with pytest.raises(InputError, match=r"\[download\] unknown key\(s\): imagesize"):
        load_config(p)
    p.write_text("resize_mode = 'stretch'\n")
    with pytest.raises(InputError, match="resize_mode"):
        load_config(p)


def _redirect_server(location: str):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_redirect_to_a_private_host_is_refused_at_connect_time(fault_server):
    """The first hop is allowed (loopback, as listed); the redirect target is checked again."""
    srv = _redirect_server(f"{PRIVATE_BASE}/img/x.jpg")
    try:
        fetch = Fetcher(CFG, parse_allow("loopback"))
        key, stream, err = fetch((0, f"http://127.0.0.1:{srv.server_address[1]}/a"), 1, 0, None, None)
        assert stream is None and reason("failed_to_download", err) == "private_address", err
        # Without the flag even the first hop (127.0.0.1) is refused.
        key, stream, err = Fetcher(CFG, AddressPolicy())((0, fault_server.base_url + "/x"), 1, 0, None, None)
        assert stream is None and reason("failed_to_download", err) == "private_address", err
    finally:
        srv.shutdown()
        srv.server_close()


# --- end to end on Ray --------------------------------------------------------------------------


def test_every_fault_kind_lands_in_its_reason_and_counts_add_up(downloaded, fault_web):
    out, s = downloaded
    kinds = truth(fault_web)
    raw = raw_table(out)
    uids = raw.column(schema.UID).to_pylist()
    assert sorted(uids) == sorted(kinds), "every input uid exactly once"
    got = Counter((kinds[r[schema.UID]], r[schema.DOWNLOAD_REASON]) for r in raw.to_pylist())
    for (kind, why), n in got.items():
        assert EXPECTED[kind] == why, f"{n} rows of kind {kind} ended as {why}"
    assert {k for k, _ in got} == set(EXPECTED)
    for r in raw.to_pylist():
        assert (r[schema.DOWNLOAD_STATUS] == "success") == (r[schema.DOWNLOAD_REASON] is None)
        assert (r[schema.DOWNLOAD_ERROR] is None) == (r[schema.DOWNLOAD_REASON] is None)
    # The manifest adds up, and matches the parquets.
    assert s.status == "complete" and s.input_rows == len(kinds)
    assert s.successes + s.failures == s.input_rows
    assert sum(s.failures_by_reason.values()) == s.failures
    assert s.failures_by_reason == dict(Counter(r for r in raw.column(schema.DOWNLOAD_REASON).to_pylist() if r))
    assert json.loads((out / "raw" / "manifest.json").read_text()) == s.to_dict()
    # The tars hold exactly the successes; the annotate stage can read the layout.
    from curate.annotate.raw import list_shards, read_successes

    shards = list_shards(out / "raw")
    assert len(shards) == s.shards == 3
    assert sum(read_successes(out / "raw", sh).num_rows for sh in shards) == s.successes
    import tarfile

    members = [m.name for sh in shards for m in tarfile.open(out / "raw" / f"{sh}.tar") if m.name.endswith(".jpg")]
    assert len(members) == s.successes
    # read_results: one row per input uid, with the schema's download columns.
    res = read_results(out)
    assert res.num_rows == len(kinds) and res.schema.names == [schema.UID] + schema.DOWNLOAD.names


def test_rerun_on_a_finished_directory_does_nothing(downloaded, fault_server):
    out, s = downloaded
    before = {p.name: p.stat().st_mtime_ns for p in (out / "raw").iterdir() if p.is_file()}
    t0 = time.perf_counter()
    again = download(fault_server.urls_path, out, CFG.replace(threads=3), allow_private="loopback", progress=False)
    assert again == s and time.perf_counter() - t0 < 5
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "raw").iterdir() if p.is_file()}


def test_resume_refuses_another_list_or_other_output_settings(downloaded, fault_web, tmp_path):
    out, _ = downloaded
    other = tmp_path / "other.parquet"
    pq.write_table(pq.read_table(fault_web / "urls.parquet").slice(0, 10), other)
    with pytest.raises(InputError, match="another URL list"):
        download(other, out, CFG, allow_private="loopback", progress=False)
    with pytest.raises(InputError, match="image_size"):
        download(fault_web / "urls.parquet", out, CFG.replace(image_size=32), allow_private="loopback", progress=False)


def test_retry_failed_retries_transient_failures_and_merges(downloaded, fault_web, tmp_path, capsys):
    src, s = downloaded
    out = tmp_path / "retry"
    shutil.copytree(src, out)
    # A longer timeout outlasts the `slow` stall: those rows now succeed; the 500s fail again.
    r = retry_failed(
        out, CFG.replace(timeout=SLOW_SECONDS + 4, url_deadline=30), allow_private="loopback", progress=False
    )
    kinds = truth(fault_web)
    n_slow = sum(k == "slow" for k in kinds.values())
    n_500 = sum(k == "http_500" for k in kinds.values())
    assert r.retried == n_slow + n_500
    assert r.rounds[-1]["recovered"] == n_slow
    assert r.successes == s.successes + n_slow and "timeout" not in r.failures_by_reason
    assert r.failures_by_reason["http_5xx"] == n_500
    raw = raw_table(out)
    assert sorted(raw.column(schema.UID).to_pylist()) == sorted(kinds), "still every uid exactly once"
    for row in raw.to_pylist():
        if kinds[row[schema.UID]] == "slow":
            assert row[schema.DOWNLOAD_STATUS] == "success" and row[schema.SHARD] >= "00003"
    assert read_results(out).num_rows == len(kinds)
    # From the CLI: a reason list picks what to retry; --config changes only what it names.
    from pipelines.cli import main

    (tmp_path / "t.toml").write_text("timeout = 2\n")
    args = ["download", "--retry-failed", str(out), "--reasons", "http_404", "--config", str(tmp_path / "t.toml")]
    assert main(args + ["--allow-private-hosts", "loopback", "--no-progress"]) == 0
    n_404 = sum(k == "http_404" for k in kinds.values())
    assert f"retry round 2: {n_404} retried (http_404), 0 recovered" in capsys.readouterr().out
    again = read_manifest(out)
    assert again.failures_by_reason["http_404"] == n_404 and again.config["image_size"] == CFG.image_size
    assert sorted(raw_table(out).column(schema.UID).to_pylist()) == sorted(kinds)


def _subset(urls: Path, fault_web: Path, dest: Path, kinds: set[str]) -> Path:
    """The rows of ``kinds``, with extra columns: they travel through; names img2dataset owns are renamed."""
    t = pq.read_table(urls)
    k = truth(fault_web)
    t = t.filter(pa.array([k[u] in kinds for u in t.column("uid").to_pylist()]))
    n = t.num_rows
    t = t.append_column("status", pa.array(["x"] * n)).append_column("exif", pa.array(["e"] * n))
    t = t.append_column("when", pa.array([1_700_000_000_000] * n, pa.timestamp("ms")))
    pq.write_table(t, dest)
    return dest


def test_private_address_refused_without_flag_and_with_loopback_allowed(fault_web, fault_server, ray_local, tmp_path):
    urls = _subset(fault_server.urls_path, fault_web, tmp_path / "u.parquet", {"clean", "private_address"})
    kinds = truth(fault_web)
    cfg = CFG.replace(samples_per_shard=1000)
    s = download(urls, tmp_path / "a", cfg, progress=False)  # no flag: even 127.0.0.1 is refused
    assert s.failures_by_reason == {"private_address": s.input_rows} and s.successes == 0
    s = download(urls, tmp_path / "b", cfg, allow_private="loopback", progress=False)  # loopback only
    raw = raw_table(tmp_path / "b")
    for row in raw.to_pylist():
        want = EXPECTED[kinds[row[schema.UID]]]
        assert row[schema.DOWNLOAD_REASON] == want
        assert row["input_status"] == "x" and row["input_exif"] == "e" and row["when"].startswith("2023")
    assert s.failures_by_reason == {"private_address": sum(k == "private_address" for k in kinds.values())}


def test_kill_minus_9_then_rerun_gives_each_uid_exactly_once(fault_web, fault_server, ray_local, tmp_path):
    import ray

    out = tmp_path / "killed"
    (tmp_path / "k.toml").write_text("[download]\ntimeout = 1\nsamples_per_shard = 8\nthreads = 2\nimage_size = 64\n")
    cmd = [sys.executable, "-m", "pipelines.cli", "download", str(fault_server.urls_path), "--out", str(out)]
    cmd += ["--config", str(tmp_path / "k.toml"), "--allow-private-hosts", "loopback", "--no-progress"]
    cmd += ["--ray-address", ray.get_runtime_context().gcs_address]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = out / "raw" / "_done"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(done.glob("*.json"))) < 3:
        time.sleep(0.05)
    assert proc.poll() is None, f"finished before it could be killed: {proc.stdout.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    finished = {p.name: p.read_text() for p in done.glob("*.json")}
    assert 3 <= len(finished) < 15, "killed mid-run"
    assert not (out / "raw" / "manifest.json").exists()

    # The same command again, in this process: its Ray workers are warm, which saves ~10 s of imports.
    from pipelines.cli import main

    assert main(cmd[3:-2]) == 0
    kinds = truth(fault_web)
    raw = raw_table(out)
    uids = raw.column(schema.UID).to_pylist()
    assert len(uids) == len(set(uids)) == len(kinds) and set(uids) == set(kinds)
    m = json.loads((out / "raw" / "manifest.json").read_text())
    assert m["status"] == "complete" and m["successes"] + m["failures"] == m["input_rows"] == len(kinds)
    # Shards finished before the kill were not downloaded again.
    for name, text in finished.items():
        assert (done / name).read_text() == text
    assert not list((out / "raw").glob("_tmp/*"))


def test_a_shard_that_keeps_failing_is_retried_then_named(fault_server, ray_local, tmp_path, capsys):
    from curate.download import plan
    from curate.urllist import read_url_list
    from pipelines.cli import main

    out = tmp_path / "o"
    cfg = CFG.replace(shard_retries=1, samples_per_shard=60)
    plan.plan(out / "raw", read_url_list(fault_server.urls_path), cfg)
    good = (out / "raw" / "_input" / "00001.parquet").read_bytes()
    (out / "raw" / "_input" / "00001.parquet").write_bytes(b"not a parquet file")
    s = download(fault_server.urls_path, out, cfg, allow_private="loopback", progress=False)
    assert s.status == "incomplete" and list(s.failed_shards) == ["00001"]
    assert "after 2 attempts" in s.failed_shards["00001"]
    assert s.successes is None  # no partial counts that could pass for a result
    with pytest.raises(InputError, match="incomplete"):
        read_results(out)
    # The CLI names the shard and exits 1; once the cause is gone, a rerun finishes only that shard.
    (out / "raw" / "_input" / "00001.parquet").write_bytes(good)
    done = (out / "raw" / "_done" / "00000.json").read_text()
    (tmp_path / "c.toml").write_text("timeout = 1\nsamples_per_shard = 60\nshard_retries = 1\nimage_size = 64\n")
    args = ["download", str(fault_server.urls_path), "--out", str(out), "--config", str(tmp_path / "c.toml")]
    assert main(args + ["--allow-private-hosts", "loopback", "--no-progress"]) == 0
    assert (out / "raw" / "_done" / "00000.json").read_text() == done
    assert read_manifest(out).status == "complete" and read_results(out).num_rows == 120


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["download", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.csv" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("caption\nhello\n")
    assert main(["download", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "url" in capsys.readouterr().err
    assert main(["download", "--retry-failed", str(tmp_path / "nothing")]) == 2
    with pytest.raises(SystemExit) as e:
        main(["download", "--allow-private-hosts", "10.0.0.0/33", str(bad), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
