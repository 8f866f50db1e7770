"""The build directory against a careless user: concurrent runs, damaged files, undone re-cuts, empty results.

One small ``tiers build`` of a synthetic web plus hostile URLs (a real server on 127.0.0.1), copied
per test and damaged in the ways issue 14 found; every test checks the rerun repairs it or one line
names the file and the command that does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
[download]
image_size = 64
timeout = 1
url_deadline = 3
samples_per_shard = 40
threads = 8
[filters]
preset = "synthetic-basic"
image_size = 64
[shards]
shard_size = 8
"""
HOSTILE = {"/slow-headers": "timeout", "/bomb/jpeg2000": "too_large", "/redirect-noai": "noai_header"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A 60-URL synthetic web and a hostile server, both served on loopback, and one URL list of both."""
    from synthweb import WebConfig, WebServer, build
    from synthweb.hostile import HostileServer

    root = tmp_path_factory.mktemp("guardweb")
    build(root, WebConfig(n=60, seed=11, eval_per_concept=1, retrieval_pairs=2, workers=1))
    with WebServer(root, slow_seconds=2) as web, HostileServer(trickle=0.3) as hostile:
        t = pq.read_table(web.urls_path).select(["url", "caption"])
        extra = pa.table({"url": [hostile.url(p) for p in HOSTILE], "caption": ["a red circle"] * len(HOSTILE)})
        urls = root / "urls.parquet"
        pq.write_table(pa.concat_tables([t, extra]), urls)
        (root / "build.toml").write_text(CONFIG)
        yield root, urls, hostile


@pytest.fixture(scope="module")
def built(sources, ray_local, tmp_path_factory):
    root, urls, hostile = sources
    out = tmp_path_factory.mktemp("guarded") / "build"
    assert rebuild(root, urls, out) == 0
    return out


def rebuild(root: Path, urls: Path, out: Path, config: str = "build.toml") -> int:
    return tiers("build", urls, "--out", out, "--config", root / config, "--allow-private-hosts", "loopback")


def tiers(*args) -> int:
    return main([str(a) for a in args] + ["--no-progress"])


def copy(built: Path, tmp_path: Path) -> Path:
    out = tmp_path / "build"
    shutil.copytree(built, out)
    return out


def snapshot(out: Path) -> dict:
    """What must come back after a repair: the fates and every band shard's bytes."""
    samples = pq.read_table(out / "samples.parquet").select(["uid", "status", "reason", "band"])
    shards = {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "tiers" / "bands").rglob("*.tar"))}
    return {"samples": samples.to_pylist(), "shards": shards}


def test_hostile_urls_end_with_their_reasons_inside_a_build(sources, built):
    _, _, hostile = sources
    rows = {r["url"]: r for r in pq.read_table(built / "samples.parquet").to_pylist()}
    for path, reason in HOSTILE.items():
        row = rows[hostile.url(path)]
        assert (row["status"], row["reason"]) == ("failed", reason), row["download_error"]
    assert json.loads((built / "raw" / "manifest.json").read_text())["status"] == "complete"


# --- 9: one run at a time ---------------------------------------------------------------------------

HOLD = """
import sys, time
from curate.core.dirlock import hold
with hold(sys.argv[1], command="tiers build (other)"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_run_is_refused_at_once_and_a_killed_holder_blocks_nothing(built, tmp_path, capsys):
    out = copy(built, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert tiers("retier", out, "--edges", "0.5,1.0") == 4
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"pid {holder.pid}" in err and "tiers build (other)" in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    assert tiers("retier", out, "--edges", "0.5,1.0") == 0  # the dead holder's lock is gone with it


# --- 10: damaged band shards ------------------------------------------------------------------------


def test_truncated_and_bit_flipped_band_shards_are_rewritten(sources, built, tmp_path):
    root, urls, _ = sources
    out = copy(built, tmp_path)
    before = snapshot(out)
    shards = sorted((out / "tiers" / "bands").rglob("*.tar"))
    cut, flipped = shards[0], shards[-1]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x20
    flipped.write_bytes(bytes(data))
    assert tiers("retier", out) == 0
    assert snapshot(out) == before
    cut.write_bytes(b"")
    assert rebuild(root, urls, out) == 0
    assert snapshot(out) == before


# --- 11: damaged derived files ----------------------------------------------------------------------


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 40):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_damaged_tables_are_recomputed_or_named_with_their_fix(sources, built, tmp_path, capsys):
    root, urls, _ = sources
    out = copy(built, tmp_path)
    before = snapshot(out)
    # Derived from stored tables: recomputed by retier itself.
    _garble(out / "samples.parquet")
    (out / "raw" / "manifest.json").write_text('{"status": "compl')
    assert tiers("retier", out) == 0
    assert snapshot(out) == before and json.loads((out / "raw" / "manifest.json").read_text())["successes"]
    # Derived from what retier cannot see (the URL list, the raw shards): one line naming file and fix.
    cases = [
        (out / "inputs.parquet", _garble, "tiers build"),
        (out / "annotations" / "00000.parquet", _garble, "tiers annotate"),
        (out / "raw" / "00001.parquet", _garble, "tiers build"),
        (out / "raw" / "00000.tar", Path.unlink, "tiers build"),
    ]
    for path, damage, fix in cases:
        saved = path.read_bytes()
        damage(path)
        capsys.readouterr()
        assert tiers("retier", out) == 2, path
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(path) in err and fix in err and "Traceback" not in err, err
        path.write_bytes(saved)
    # `tiers build` repairs them all from their sources: the URL list, a new download, a new annotation.
    for path, damage, _ in cases:
        damage(path)
    assert rebuild(root, urls, out) == 0
    assert snapshot(out)["samples"] == before["samples"]


# --- 12: a rebuild keeps a re-cut; a refused training leaves nothing --------------------------------


def test_a_rebuild_keeps_the_retier_cut_until_the_build_config_changes(sources, built, tmp_path):
    root, urls, _ = sources
    out = copy(built, tmp_path)
    assert tiers("retier", out, "--edges", "0.5,1.0") == 0
    recut = json.loads((out / "tiers" / "manifest.json").read_text())["bands"]
    assert rebuild(root, urls, out) == 0
    assert json.loads((out / "tiers" / "manifest.json").read_text())["bands"] == recut
    changed = root / "changed.toml"
    changed.write_text(CONFIG + "[bands]\nedges = [0.2, 1.0]\n")
    assert tiers("build", urls, "--out", out, "--config", changed, "--allow-private-hosts", "loopback") == 0
    bands = json.loads((out / "tiers" / "manifest.json").read_text())["bands"]
    assert set(bands) == {"q000-020", "q020-100", "filtered"}


def test_a_refused_training_writes_nothing_and_the_corrected_command_runs(built, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--tiers", built, "--tier", "kept", "--model", "ct-vit-micro-32", "--out", run]
    assert tiers(*args, "--samples-seen", "4", "--batch-size", "16") == 2
    assert "less than one global batch" in capsys.readouterr().err and not (run / "config.json").exists()
    assert tiers(*args, "--samples-seen", "32", "--batch-size", "16", "--workers", "0") == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


# --- 13: empty results ----------------------------------------------------------------------------


def test_nothing_kept_is_one_line_exit_3_and_an_empty_tier_cannot_be_trained(sources, built, tmp_path, capsys):
    root, urls, _ = sources
    out = copy(built, tmp_path)
    strict = root / "strict.toml"
    strict.write_text(CONFIG + '[[filters.filters]]\ntype = "min_side"\nvalue = 100000\n')
    capsys.readouterr()
    assert tiers("retier", out, "--config", strict) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nothing kept" in err and "min_side" in err and "drop" in err, err
    run = tmp_path / "run"
    assert tiers("train", "--tiers", out, "--tier", "kept", "--samples-seen", "64", "--out", run) == 2
    err = capsys.readouterr().err
    assert "holds no samples" in err and "Traceback" not in err and not run.exists()
    # Every URL refused (no --allow-private-hosts): exit 3, and the line says which flag is missing.
    assert tiers("build", urls, "--out", tmp_path / "none", "--config", root / "build.toml") == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "private_address" in err and "--allow-private-hosts" in err, err
