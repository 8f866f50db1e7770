"""bench/hostile.py's fetch and input cases: each returns rows {case, expected, observed, handled, ...}."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRICKLE = 0.5  # seconds per byte: every byte arrives well inside the 2 s socket timeout

# 23 ways to write a private, loopback, link-local or otherwise non-public destination. None of them
# sends a packet: each is refused before connecting (the numeric forms resolve locally, with no DNS).
PRIVATE_FORMS = (
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://127.0.0.1/",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://0.0.0.0/",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "http://198.18.0.1/",
    "http://240.0.0.1/",
    "http://224.0.0.1/",
    "http://localhost/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[64:ff9b::10.0.0.1]/",
    "http://[2002:a00:1::]/",
    "http://[fe80::1]/",
    "http://[fd00::1]/",
)


def row(case: str, expected, observed, handled: bool | None = None, **extra) -> dict:
    ok = expected == observed if handled is None else handled
    return {"case": case, "expected": expected, "observed": observed, "handled": bool(ok), **extra}


def url_cases(base: str) -> list[tuple[str, str, str | None]]:
    """(case, URL, expected download reason or None for success) for every hostile behaviour."""
    from synthweb import bombs

    out = [(f"ok {f}", f"{base}/ok.{f}", None) for f in ("jpeg", "png", "webp", "gif", "bmp", "tiff", "jpeg2000")]
    out += [
        ("status line at 1 byte/0.5 s", f"{base}/slow-status", "timeout"),
        ("headers at 1 byte/0.5 s", f"{base}/slow-headers", "timeout"),
        ("body at 1 byte/0.5 s", f"{base}/slow-body", "timeout"),
        ("no answer at all", f"{base}/stall", "timeout"),
        ("endless body", f"{base}/endless", "too_large"),
        ("10 GB Content-Length", f"{base}/huge-length", "too_large"),
        ("X-Robots-Tag: noai", f"{base}/noai", "noai_header"),
        ("noai on a redirect hop only", f"{base}/redirect-noai", "noai_header"),
        ("HTML served as image/jpeg", f"{base}/html", "not_an_image"),
        ("redirect to 10.0.0.1", f"{base}/redirect?to=http://10.0.0.1/x", "private_address"),
        ("redirect to cloud metadata", f"{base}/redirect?to=http://169.254.169.254/", "private_address"),
        ("redirect to loopback, other port", f"{base}/redirect?to=http://127.0.0.1:1/x", "private_address"),
        ("redirect to [::1]", f"{base}/redirect?to=http://[::1]:1/x", "private_address"),
        ("redirect to file:///etc/passwd", f"{base}/redirect?to=file:///etc/passwd", "bad_url"),
    ]
    out += [(f"bomb {f} 8000x6000", f"{base}/bomb/{f}", "too_large") for f in bombs.FORMATS]
    out += [(f"unchecked format {f}", f"{base}/bomb/{f}", "unsupported_format") for f in bombs.UNCHECKABLE]
    out += [(f"private form {u}", u, "private_address") for u in PRIVATE_FORMS]
    return out


def fetch_cases(deadline: float, work: Path) -> list[dict]:
    """Every URL case through the downloader's fetcher, in this process; then the slow-header shard."""
    from curate.download import DownloadConfig
    from curate.download.fetch import Fetcher
    from curate.download.reasons import reason
    from curate.download.safety import parse_allow
    from synthweb.hostile import HostileServer

    cfg = DownloadConfig(timeout=2, url_deadline=deadline, image_size=64, threads=16, max_image_bytes=8 << 20)
    rows = []
    with HostileServer(trickle=TRICKLE) as server:
        fetcher = Fetcher(cfg, parse_allow(f"loopback:{server.port}"))
        try:
            for case, url, want in url_cases(server.base_url):
                t0 = time.perf_counter()
                _, stream, err = fetcher((0, url), cfg.timeout, 0, None, list(cfg.disallowed_header_directives))
                dt = time.perf_counter() - t0
                got = reason("success" if stream else "failed", err)
                limit = deadline + 2.0
                ok = got == want and dt < limit
                rows.append(row(f"fetch: {case}", want or "success", f"{got or 'success'} in {dt:.2f} s", ok))
        finally:
            fetcher.close()
        rows.append(_slow_shard(server, cfg, work))
    return rows


def _slow_shard(server, cfg, work: Path) -> dict:
    """The unit a Ray task runs, run here: a shard holding slow-header URLs ends within url_deadline + 2 s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.core import schema, units
    from curate.download import plan
    from curate.download.run import shard_fingerprint
    from curate.download.safety import parse_allow
    from curate.download.worker import run_shard
    from curate.urllist import read_url_list

    paths = ["/ok.jpeg", "/slow-headers", "/slow-status", "/ok.png", "/slow-headers?2"]
    src = work / "slow-shard.parquet"
    pq.write_table(pa.table({"url": [server.url(p) for p in paths], "caption": ["c"] * len(paths)}), src)
    raw = work / "slow-shard" / "raw"
    plan.plan(raw, read_url_list(src), cfg, str(src))
    for module in ("downloader", "resizer", "writer"):  # imported once per worker process, not per shard
        __import__(f"img2dataset.{module}")
    t0 = time.perf_counter()
    run_shard(str(raw), 0, cfg, parse_allow(f"loopback:{server.port}"), shard_fingerprint(cfg))
    dt = time.perf_counter() - t0
    reasons = [r[schema.DOWNLOAD_REASON] for r in pq.read_table(raw / "00000.parquet").to_pylist()]
    done = units.is_done(raw, "00000")
    want = [None, "timeout", "timeout", None, "timeout"]
    ok = done and reasons == want and dt < cfg.url_deadline + 2.0
    return row(
        "slow-header shard finishes",
        f"marked done, 3 timeouts, < {cfg.url_deadline + 2:g} s",
        f"{'marked done' if done else 'NOT done'}, {reasons.count('timeout')} timeouts, {dt:.2f} s",
        ok,
        seconds=round(dt, 3),
        url_deadline=cfg.url_deadline,
    )


def tiers(*args: str, timeout: float = 600) -> tuple[int, str, float]:
    """Run the tiers CLI; (exit code, stderr + stdout, seconds)."""
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    return p.returncode, (p.stderr + p.stdout).strip(), time.perf_counter() - t0


def _error_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if "error" in ln.lower()]
    return lines[-1] if lines else (out.splitlines() or [""])[-1]


def input_cases(work: Path) -> list[dict]:
    """Damaged URL lists through `tiers check` (the same reader `tiers build` uses): one line, exit 2."""
    d = work / "inputs"
    d.mkdir(exist_ok=True)
    (d / "empty_cell.csv").write_text("url,caption\nhttp://a.example/1.jpg,x\n,y\n")
    (d / "empty_cell_uid.csv").write_text("uid,url,caption\nu1,http://a.example/1.jpg,x\nu2,,y\n")
    raw = b"url,caption\n" + b"".join(b"http://a.example/%d.jpg,cap %d\n" % (i, i) for i in range(300))
    bad = bytearray(gzip.compress(raw))
    bad[12:40] = b"\xff" * 28
    (d / "corrupt.csv.gz").write_bytes(bytes(bad))
    (d / "ragged.csv").write_text("url,caption\nhttp://a.example/1.jpg,x\nhttp://a.example/2.jpg,y,extra\n")
    (d / "status.csv").write_text("url,caption,status,input_status\nhttp://a.example/1.jpg,x,s,i\n")
    rows = []
    for name, want in (
        ("empty_cell.csv", "row 2: empty URL"),
        ("empty_cell_uid.csv", "row 2: empty URL"),
        ("corrupt.csv.gz", "corrupt gzip"),
        ("ragged.csv", "line 3 (data row 2) has 3 fields"),
    ):
        code, out, _ = tiers("check", str(d / name))
        line = _error_line(out)
        ok = code == 2 and want in line and name in line and "Traceback" not in out
        rows.append(row(f"input: {name}", f"exit 2, one line with {want!r}", f"exit {code}: {line[-110:]}", ok))
    code, out, _ = tiers("check", str(d / "status.csv"))
    ok = code == 0 and "input_input_status, input_status" in out
    rows.append(row("input: status beside input_status", "both kept", out.splitlines()[-1][-90:], ok))
    return rows
