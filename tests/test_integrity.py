"""The build directory's guards, as units: the lock, file stamps, checked parquet."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.core.dirlock import DirectoryBusy, hold, read_holder
from curate.core.integrity import DamagedFile, check_file, read_parquet, stamp, write_parquet

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from curate.core.dirlock import hold
with hold(sys.argv[1], command="tiers build (test holder)"):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(directory: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_is_refused_at_once_naming_the_holder(tmp_path):
    proc = _holder(tmp_path)
    try:
        t0 = time.perf_counter()
        with pytest.raises(DirectoryBusy) as e, hold(tmp_path):
            pass
        assert time.perf_counter() - t0 < 1.0
        msg = str(e.value)
        assert f"pid {proc.pid}" in msg and "test holder" in msg and "started" in msg and str(tmp_path) in msg
    finally:
        proc.send_signal(signal.SIGKILL)  # killed holding the lock: the kernel releases it
        proc.wait()
        proc.stdout.close()
    assert read_holder(tmp_path)["pid"] == proc.pid  # the stale file is still there ...
    with hold(tmp_path) as me:  # ... and blocks nothing
        assert me["pid"] == os.getpid()
        with hold(tmp_path):  # re-entrant in one process (build -> download)
            pass
    with hold(tmp_path):  # released on exit
        pass


def test_stamps_catch_truncation_growth_and_flipped_bytes(tmp_path):
    p = tmp_path / "000000.tar"
    p.write_bytes(os.urandom(100_000))
    marker = stamp(p)
    assert check_file(p, marker) is None
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    assert "bytes" in check_file(p, marker)
    flipped = bytearray(data)
    flipped[54_321] ^= 0x10
    p.write_bytes(bytes(flipped))
    assert "differs" in check_file(p, marker)
    assert check_file(p, marker, digest=False) is None  # size alone cannot see a flipped byte
    p.unlink()
    assert check_file(p, marker) == "missing"
    p.write_bytes(b"x")
    assert check_file(p, {"fingerprint": "old marker"}) is None  # older markers: existence only


def test_parquet_page_checksums_catch_every_flipped_data_byte(tmp_path):
    rng = np.random.default_rng(0)
    t = pa.table({"width": rng.integers(0, 1 << 30, 5000).astype(np.int32)})
    path = tmp_path / "t.parquet"
    write_parquet(t, path)
    assert read_parquet(path).equals(t)
    data = path.read_bytes()
    silent_before = caught = 0
    for k in range(40):
        bad = bytearray(data)
        i = random.Random(k).randrange(4, len(data) - 400)  # inside the data pages, before the footer
        bad[i] ^= 0x40
        path.write_bytes(bytes(bad))
        try:
            silent_before += not pq.read_table(path).equals(t)  # plain reads can return wrong values
        except (OSError, pa.ArrowException):
            pass
        with pytest.raises(DamagedFile) as e:
            read_parquet(path, fix="run `tiers build` again")
        caught += 1
        assert str(path) in str(e.value) and "tiers build" in str(e.value)
    assert caught == 40 and silent_before > 0


def test_an_empty_or_nearly_empty_result_gets_one_line_with_the_cause_and_the_fix():
    from curate.core.outcome import judge

    o = judge({"failed": {"private_address": 590, "http_404": 10}})
    assert o.empty and o.kept == 0 and "\n" not in o.message
    assert "private_address 590 (98%)" in o.message and "--allow-private-hosts" in o.message
    o = judge({"failed": {"http_404": 40}, "dropped": {"min_side": 560}})
    assert o.empty and "min_side 560" in o.message and 'drop = ["min_side"]' in o.message
    o = judge({"failed": {"http_404": 40}, "dropped": {"min_side": 545}, "kept": {"-": 15}})
    assert not o.empty and o.kept == 15 and "545 of 560 (97%) dropped as min_side" in o.message
    assert judge({"failed": {"http_404": 40}, "dropped": {"min_side": 140}, "kept": {"-": 420}}).message is None
    assert judge({}).empty
