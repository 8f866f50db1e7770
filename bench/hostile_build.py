"""bench/hostile.py's build cases: a real `tiers build` against the running hostile server, then a careless user."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.hostile_cases import ROOT, TRICKLE, row, tiers, url_cases

CONFIG = """
[download]
image_size = 64
timeout = 2
url_deadline = {deadline}
samples_per_shard = 64
threads = 16
max_image_bytes = 8388608
[filters]
preset = "synthetic-basic"
image_size = 64
[shards]
shard_size = 8
"""


def _fates(out: Path) -> list[dict]:
    return pq.read_table(out / "samples.parquet").select(["uid", "status", "reason", "band"]).to_pylist()


def _shards(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "tiers" / "bands").rglob("*.tar"))}


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 40):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _last(out: str) -> str:
    """The error line of a tiers run (stderr comes first in ``out``), else its last line."""
    lines = out.strip().splitlines() or [""]
    return next((ln for ln in lines if "tiers: error:" in ln), lines[-1])


def build_cases(deadline: float, work: Path) -> list[dict]:
    from synthweb import WebConfig, WebServer, build
    from synthweb.hostile import HostileServer

    web_root = work / "web"
    build(web_root, WebConfig(n=80, seed=14, eval_per_concept=1, retrieval_pairs=2, workers=1))
    cfg = work / "build.toml"
    cfg.write_text(CONFIG.format(deadline=deadline))
    rows: list[dict] = []
    with WebServer(web_root, slow_seconds=3) as web, HostileServer(trickle=TRICKLE) as hostile:
        cases = url_cases(hostile.base_url)
        t = pq.read_table(web.urls_path).select(["url", "caption"])
        extra = pa.table(
            {"url": [u for _, u, _ in cases], "caption": [f"a red circle {i}" for i in range(len(cases))]}
        )
        urls = work / "urls.parquet"
        pq.write_table(pa.concat_tables([t, extra]), urls)
        allow = ("--allow-private-hosts", f"loopback:{web.port},loopback:{hostile.port}")
        common = ("--config", cfg, *allow)
        out = work / "build"
        code, log, seconds = tiers("build", urls, "--out", out, *common)
        observed = f"exit {code} in {seconds:.0f} s"
        rows.append(row("build: tiers build of the hostile list", "exit 0", observed, code == 0, seconds=seconds))
        if code != 0:
            rows[-1]["observed"] += f": {_last(log)}"
            return rows
        by_url = {r["url"]: r for r in pq.read_table(out / "samples.parquet").to_pylist()}
        for case, url, want in cases:
            r = by_url[url]
            got = r["reason"] if r["status"] == "failed" else "success"
            rows.append(row(f"build: {case}", want or "success", got))
        rows += _concurrent_and_kill(urls, common, out, work)
        rows += _damage(urls, common, out, work)
        rows += _recut_train_empty(urls, cfg, out, work)
    rows += _tar_members(work)
    return rows


def _import_seconds() -> float:
    """What starting `tiers build` costs before it can take the lock: the interpreter and its imports."""
    t0 = time.perf_counter()
    code = "import pipelines.cli, pipelines.build, pipelines.commands.build"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return time.perf_counter() - t0


def _concurrent_and_kill(urls: Path, common: tuple, ref: Path, work: Path) -> list[dict]:
    from curate.core.dirlock import read_holder

    out = work / "concurrent"
    cmd = [sys.executable, "-m", "pipelines.cli", "build", str(urls), "--out", str(out), *map(str, common)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        cmd + ["--no-progress"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    t0 = time.monotonic()
    while read_holder(out).get("pid") != first.pid and time.monotonic() - t0 < 120:
        time.sleep(0.1)
    time.sleep(3)  # into the download: the slow URLs hold it for url_deadline
    code, log, seconds = tiers("build", urls, "--out", out, *common)
    startup = _import_seconds()
    line = _last(log)
    ok = code == 4 and f"pid {first.pid}" in line and first.poll() is None
    rows = [
        row(
            "9: second build on a directory in use",
            "exit 4 at once, naming the first",
            f"exit {code} in {seconds:.1f} s (importing the build command alone: {startup:.1f} s): {line[-90:]}",
            ok,
            refuse_seconds=round(seconds, 2),
            import_seconds=round(startup, 2),
        )
    ]
    first.send_signal(signal.SIGKILL)  # kill -9 mid-build: its lock must not outlive it
    first.wait()
    first.stderr.close()
    code, log, seconds = tiers("build", urls, "--out", out, *common)
    same = code == 0 and _fates(out) == _fates(ref) and _shards(out).keys() == _shards(ref).keys()
    observed = f"exit {code}, fates {'equal' if same else 'DIFFER'} to an uninterrupted build"
    rows.append(row("9: kill -9 mid-build, rerun", "exit 0, same fates and shards", observed, same))
    shutil.rmtree(out, ignore_errors=True)
    return rows


def _damage(urls: Path, common: tuple, ref: Path, work: Path) -> list[dict]:
    out = work / "damaged"
    shutil.copytree(ref, out)
    fates, shards = _fates(ref), _shards(ref)
    tars = sorted((out / "tiers" / "bands").rglob("*.tar"))
    tars[0].write_bytes(tars[0].read_bytes()[: tars[0].stat().st_size // 3])
    data = bytearray(tars[-1].read_bytes())
    data[len(data) // 2] ^= 0x20
    tars[-1].write_bytes(bytes(data))
    code, log, _ = tiers("retier", out)
    rows = [
        row(
            "10: band shard cut to a third + one flipped byte",
            "rewritten, bytes equal",
            f"exit {code}, bytes {'equal' if _shards(out) == shards else 'DIFFER'}",
            code == 0 and _shards(out) == shards,
        )
    ]
    _garble(out / "samples.parquet")
    (out / "raw" / "manifest.json").write_text('{"status": "compl')
    code, log, _ = tiers("retier", out)
    ok = code == 0 and _fates(out) == fates
    rows.append(
        row(
            "11: garbled samples.parquet + raw/manifest.json",
            "recomputed",
            f"exit {code}, fates {'equal' if ok else 'DIFFER'}",
            ok,
        )
    )
    named = [
        (out / "inputs.parquet", _garble, "tiers build"),
        (out / "annotations" / "00000.parquet", _garble, "tiers annotate"),
        (out / "raw" / "00001.parquet", _garble, "tiers build"),
        (out / "raw" / "00000.tar", Path.unlink, "tiers build"),
    ]
    for path, damage, fix in named:
        saved = path.read_bytes()
        damage(path)
        code, log, _ = tiers("retier", out)
        line = _last(log)
        ok = code == 2 and str(path) in line and fix in line and "Traceback" not in log
        rows.append(
            row(
                f"11: retier with {path.relative_to(out)} {'deleted' if damage is Path.unlink else 'garbled'}",
                f"exit 2 naming it and `{fix}`",
                f"exit {code}: {line[-110:]}",
                ok,
            )
        )
        path.write_bytes(saved)
    for path, damage, _ in named:
        damage(path)
    code, log, _ = tiers("build", urls, "--out", out, *common)
    ok = code == 0 and _fates(out) == fates
    rows.append(
        row(
            "11: tiers build with all four damaged",
            "repaired from the sources",
            f"exit {code}, fates {'equal' if ok else 'DIFFER'}",
            ok,
        )
    )
    shutil.rmtree(out, ignore_errors=True)
    return rows


def _recut_train_empty(urls: Path, cfg: Path, ref: Path, work: Path) -> list[dict]:
    out = work / "recut"
    shutil.copytree(ref, out)
    tiers("retier", out, "--edges", "0.5,1.0")
    bands = json.loads((out / "tiers" / "manifest.json").read_text())["bands"]
    code, _, _ = tiers("build", urls, "--out", out, "--config", cfg, "--allow-private-hosts", "loopback")
    kept = json.loads((out / "tiers" / "manifest.json").read_text())["bands"] == bands
    rows = [
        row(
            "12: tiers build after tiers retier",
            "the re-cut stays",
            f"exit {code}, {'kept' if kept else 'UNDONE'}",
            code == 0 and kept,
        )
    ]
    run = work / "run"
    args = ("train", "--tiers", out, "--tier", "kept", "--model", "ct-vit-micro-32", "--out", run, "--no-progress")
    code, log, _ = tiers(*args, "--samples-seen", "4", "--batch-size", "16")
    left = (run / "config.json").exists()
    code2, _, _ = tiers(*args, "--samples-seen", "32", "--batch-size", "16", "--workers", "0")
    ok = code == 2 and not left and code2 == 0
    rows.append(
        row(
            "12: train refused (budget < a batch), then corrected",
            "exit 2 writing nothing, then exit 0",
            f"exit {code} ({'config.json left' if left else 'nothing written'}), then exit {code2}",
            ok,
        )
    )
    strict = work / "strict.toml"
    strict.write_text(cfg.read_text() + '[[filters.filters]]\ntype = "min_side"\nvalue = 100000\n')
    code, log, _ = tiers("retier", out, "--config", strict)
    line = _last(log)
    rows.append(
        row(
            "13: a filter drops everything",
            "exit 3, one line naming min_side",
            f"exit {code}: {line[-110:]}",
            code == 3 and "min_side" in line,
        )
    )
    code, log, _ = tiers("train", "--tiers", out, "--tier", "kept", "--samples-seen", "64", "--out", work / "run2")
    line = _last(log)
    rows.append(
        row(
            "13: train on an empty tier",
            "exit 2, one line",
            f"exit {code}: {line[-110:]}",
            code == 2 and "no samples" in line and "Traceback" not in log,
        )
    )
    code, log, _ = tiers("build", urls, "--out", work / "refused", "--config", cfg)
    line = _last(log)
    ok = code == 3 and "private_address" in line and "--allow-private-hosts" in line
    rows.append(
        row(
            "13: build with every URL refused (flag forgotten)",
            "exit 3, names private_address and the flag",
            f"exit {code}: {line[-110:]}",
            ok,
        )
    )
    shutil.rmtree(out, ignore_errors=True)
    return rows


def _tar_members(work: Path) -> list[dict]:
    """A raw shard whose tar holds ../, absolute, symlink and hardlink members: `tiers annotate` reads the
    listed keys only, follows no link, writes nothing outside the directory."""
    from synthweb import bombs

    d = work / "tarbuild"
    raw = d / "raw"
    raw.mkdir(parents=True)
    jpeg = bombs.sample("jpeg")
    members = [("000000.jpg", jpeg), ("000000.txt", b"a red circle"), ("../../escape.jpg", jpeg)]
    members += [("/tmp/hostile-absolute.jpg", jpeg), ("000001.txt", b"a blue square")]
    with tarfile.open(raw / "00000.tar", "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for kind, name, target in (
            (tarfile.SYMTYPE, "000001.jpg", "/etc/passwd"),
            (tarfile.LNKTYPE, "000002.jpg", "000000.jpg"),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    keys = ["000000", "000001", "000002"]
    t = pa.table(
        {
            "uid": [f"u{k}" for k in keys],
            "url": [f"http://x/{k}" for k in keys],
            "caption": ["c"] * 3,
            "key": keys,
            "status": ["success"] * 3,
        }
    )
    pq.write_table(t, raw / "00000.parquet")
    code, log, _ = tiers("annotate", d)
    ann = pq.read_table(d / "annotations" / "00000.parquet").to_pylist() if code == 0 else []
    errors = {r["uid"]: r["decode_error"] for r in ann}
    escaped = (work.parent / "escape.jpg").exists() or Path("/tmp/hostile-absolute.jpg").exists()
    ok = (
        code == 0
        and errors == {"u000000": None, "u000001": "missing_in_tar", "u000002": "missing_in_tar"}
        and not escaped
    )
    return [
        row(
            "tar members ../, absolute, symlink, hardlink",
            "listed key read, links not followed, nothing escapes",
            f"exit {code}, {errors}, {'ESCAPED' if escaped else 'nothing outside'}",
            ok,
        )
    ]
