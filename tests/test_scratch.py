"""Scratch directories: removed when their block ends, and by the next one made on this machine when
their process was killed inside the block; never while their process lives."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from curate.core import scratch

ROOT = Path(__file__).resolve().parents[1]
# Makes a scratch directory, says where, and waits inside the block until killed.
HOLDER = """
import sys, time
from curate.core import scratch
with scratch.directory(sys.argv[1]) as d:
    (d / "spill").write_bytes(b"x" * 1000)
    print(d, flush=True)
    time.sleep(120)
"""


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_TIERS_SCRATCH", str(tmp_path))
    return tmp_path


def holder(kind: str) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", HOLDER, kind], stdout=subprocess.PIPE, text=True, env=env)
    return p, Path(p.stdout.readline().strip())


def test_a_killed_owners_directory_goes_with_the_next_one_made_a_live_ones_stays(base):
    dead, dead_dir = holder("band")
    live, live_dir = holder("dedup")
    foreign = base / "clip-tiers-other-made-elsewhere"  # no owner file: never ours to remove
    foreign.mkdir()
    elsewhere = base / "clip-tiers-band-zzzzzz-abcd1234"  # another host's (on a shared scratch dir)
    elsewhere.mkdir()
    (elsewhere / scratch.OWNER).touch()  # unlocked here, as a live one looks where locks are not shared
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        assert (dead_dir / "spill").exists()  # kill -9: nothing of the process's ran
        with scratch.directory("pairs") as mine:
            assert not dead_dir.exists()
            assert (live_dir / "spill").exists() and foreign.exists() and elsewhere.exists()
            assert mine.parent == base and mine.name.startswith(f"clip-tiers-pairs-{scratch.HOST}-")
            assert scratch.sweep(base) == 0  # its own directory is locked by this process too
        assert not mine.exists()
    finally:
        live.kill()
        live.wait()
    assert scratch.sweep(base) == 1 and not live_dir.exists() and foreign.exists() and elsewhere.exists()


def test_a_directory_is_removed_when_its_block_raises(base):
    with pytest.raises(RuntimeError), scratch.directory("list") as d:
        (d / "f").write_text("x")
        raise RuntimeError("boom")
    assert not d.exists() and list(base.iterdir()) == []


def test_where_the_file_system_has_no_flock_the_directory_is_made_without_an_owner(base, monkeypatch):
    def no_flock(fd, op):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(scratch.fcntl, "flock", no_flock)
    with scratch.directory("thumbs") as d:
        assert d.is_dir() and [p.name for p in d.iterdir()] == [scratch.UNOWNED]  # no owner, no temporary
        aged(d, scratch.STRAY_AFTER + 60)
        assert scratch.sweep(base) == 0 and d.exists()  # said to be made without an owner: never swept
    assert not d.exists()


def aged(d: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(d, (t, t))


def test_a_directory_that_never_got_its_owner_goes_an_hour_after_it_was_made(base):
    """A process killed between making its directory and naming its owner file leaves one without it."""
    stray, fresh = (base / f"clip-tiers-band-{scratch.HOST}-{k}" for k in ("aaaa", "bbbb"))
    for d in (stray, fresh):
        d.mkdir()
        (d / ".owning-x").touch()
    aged(stray, scratch.STRAY_AFTER + 60)
    aged(fresh, scratch.STRAY_AFTER - 60)  # being made (or just killed): left
    assert scratch.sweep(base) == 1 and not stray.exists() and fresh.exists()


def test_a_replica_goes_a_day_after_its_last_use_and_each_use_keeps_it(base, monkeypatch):
    """A replica of another node's file (its owner killed before it removed them) is swept once no task
    has used it for a day; a task reading it through ``nodefiles.local`` marks it used."""
    from curate.core import nodefiles

    origin_dir = base / "origin"
    origin_dir.mkdir()
    (origin_dir / "thumbs.u8").write_bytes(b"t" * 10)
    monkeypatch.setattr(nodefiles, "this_node", lambda: "node-b")  # a task on another node than "node-a"
    used, idle = nodefiles.replica_dir(str(origin_dir), "node-a"), nodefiles.replica_dir("/elsewhere", "node-a")
    for d in (used, idle):
        d.mkdir()
        (d / "thumbs.u8").write_bytes(b"t" * 10)
        aged(d, scratch.REPLICA_IDLE + 60)
    assert nodefiles.local(origin_dir / "thumbs.u8", "node-a", 10) == used / "thumbs.u8"  # no pull: there
    assert scratch.sweep(base) == 1 and used.exists() and not idle.exists()


def test_a_killed_runs_mirror_goes_a_week_after_its_last_change_never_while_held(base):
    """A training run's local mirror (train.remote) is held by the run's processes; one left by a killed
    run is removed once nothing holds it and neither it, its checkpoints nor its metrics changed for a
    week. The run's bucket holds its checkpoints, so a later resume starts from there."""
    runs = base / scratch.RUNS
    week = scratch.RUN_IDLE + 60
    old, held, busy, legacy = (runs / k for k in ("old", "held", "busy", "legacy"))
    with scratch.owned(old), scratch.owned(held), scratch.owned(busy):
        pass  # made and held once, as a run does, then let go (a killed run lets go too)
    legacy.mkdir()  # a mirror from before owners: age alone
    (busy / "checkpoints").mkdir()  # a checkpoint written lately: not idle
    for d in (old, held, busy, legacy):
        aged(d, week)
    with scratch.owned(held), scratch.owned(held):  # two ranks of a live run share it
        assert scratch.sweep(base) == 2
    assert not old.exists() and not legacy.exists() and held.exists() and busy.exists()
    assert scratch.sweep(base) == 1 and not held.exists() and busy.exists()  # let go: a week old, it goes


def test_a_resume_that_waits_on_a_sweep_makes_its_mirror_again(base):
    """A sweep holds a mirror's owner file while it removes the mirror; a run starting then waits for it,
    finds its owner file gone with the directory, and makes both again (it pulls from the bucket)."""
    mirror = base / scratch.RUNS / "abc"
    with scratch.owned(mirror):
        pass
    fd = os.open(mirror / scratch.OWNER, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a sweep that is about to remove it
    got = []

    def start():
        with scratch.owned(mirror) as d:
            got.append((d / scratch.OWNER).exists() and os.stat(d / scratch.OWNER).st_nlink)

    t = threading.Thread(target=start)
    t.start()
    time.sleep(0.2)
    assert not got  # waiting for the sweep
    shutil.rmtree(mirror)
    os.close(fd)
    t.join(10)
    assert got == [1] and mirror.is_dir()
