"""Scratch directories that a killed process does not leave behind for good.

A unit's scratch directory (a band mask's partitions, the dedup task's spill files, thumbnails, a staged
URL list) is removed when its block ends, but not when its process is killed: an OOM-killed Ray worker,
a preempted node, kill -9 of a build. On a long-lived cluster those pile up in each node's temporary
directory (the dedup task's alone holds ~2.6 GB of thumbnails and vectors per million images).

So each directory made here holds an ``.owner`` file that its process keeps locked (``flock``) while the
directory lives; the kernel drops the lock when the process dies, however it dies. Every new directory
first sweeps the scratch directory: a ``clip-tiers-*`` directory of this machine whose ``.owner`` it can
lock has no owner left and is removed. A directory without ``.owner`` (made some other way) is never
touched, nor one another machine made (its name carries a tag of the host name): on a scratch directory
shared over NFS without working locks, another node's live directory would look ownerless.

The sweep also removes what has no owner to ask: a directory of this machine with no ``.owner`` an hour
after it was made (its process was killed between making it and naming its owner file; one made where
``flock`` does not work says so with an ``.unowned`` file and is never removed), and a replica of another
node's files (``clip-tiers-replica-*``, :mod:`curate.core.nodefiles`) that no task has used for a day (its
owner, on another node, removes it when done, unless that task was killed first). A replica removed while
a later task still wants it is pulled again. And a training run's local mirror (``clip-tiers-runs/*``,
:mod:`train.remote`), kept when the run is killed so that a resume here finds its newest checkpoint, once
no process holds it (:func:`owned`) and it has not changed for a week: the run's bucket has the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from curate.core import rundir, storage

PREFIX = "clip-tiers-"
OWNER = ".owner"
UNOWNED = ".unowned"  # in a directory made where flock does not work: never swept
REPLICA = f"{PREFIX}replica-"
STRAY_AFTER = 3600.0  # seconds after which a directory of ours that never got its owner file is removed
REPLICA_IDLE = 86400.0  # seconds unused after which a replica is removed
RUNS = f"{PREFIX}runs"  # training runs' local mirrors, one directory each
RUN_IDLE = 7 * 86400.0  # seconds unchanged after which a mirror no process holds is removed
HOST = hashlib.blake2b(socket.gethostname().encode(), digest_size=3).hexdigest()


@contextlib.contextmanager
def directory(kind: str) -> Iterator[Path]:
    """A new directory ``clip-tiers-<kind>-<host tag>-*`` in :func:`curate.core.storage.scratch_dir`,
    removed when the block ends (and by a later call on this machine if this process is killed first)."""
    base = storage.scratch_dir()
    sweep(base)
    d = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{HOST}-", dir=base))
    fd = None
    try:
        fd = _own(d)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def _own(d: Path) -> int | None:
    """Lock a new file and only then name it ``.owner``: a sweep never sees an owner file unlocked by a
    live process (it would, between an ``open`` and its ``flock``). None where the file system has no
    ``flock`` (some FUSE mounts): the directory is then made as before, without an owner, never swept."""
    fd, tmp = tempfile.mkstemp(prefix=".owning-", dir=d)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        os.rename(tmp, d / UNOWNED)
        return None
    try:
        os.rename(tmp, d / OWNER)
    except BaseException:
        os.close(fd)
        raise
    return fd


def sweep(base: str | os.PathLike) -> int:
    """Remove this machine's ``clip-tiers-*`` directories in ``base`` whose owner is gone, stray ones and
    idle replicas; returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(base))
    except OSError:
        return 0
    for e in entries:
        if e.name.startswith(REPLICA):
            removed += _remove_if_older(e, REPLICA_IDLE)
            continue
        if e.name == RUNS:
            removed += _sweep_runs(e.path)
            continue
        if not e.name.startswith(PREFIX) or f"-{HOST}-" not in e.name:
            continue
        try:
            fd = os.open(os.path.join(e.path, OWNER), os.O_RDONLY)
        except FileNotFoundError:  # killed before naming its owner, made without one, or gone meanwhile
            if not os.path.exists(os.path.join(e.path, UNOWNED)):
                removed += _remove_if_older(e, STRAY_AFTER)
            continue
        except OSError:  # not a directory of ours, or another user's
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its owner lives
            os.close(fd)
            continue
        try:
            shutil.rmtree(e.path, ignore_errors=True)  # holding the lock: no second sweep removes it too
            removed += 1
        finally:
            os.close(fd)
    return removed


def _remove_if_older(e: os.DirEntry, seconds: float, inside: tuple[str, ...] = ()) -> int:
    """Remove directory ``e`` if neither it nor the entries ``inside`` it have changed for ``seconds``; 1
    if removed."""
    try:
        if not e.is_dir(follow_symlinks=False):
            return 0
        changed = [e.stat(follow_symlinks=False).st_mtime]
        for name in inside:
            with contextlib.suppress(FileNotFoundError):
                changed.append(os.stat(os.path.join(e.path, name)).st_mtime)
        if time.time() - max(changed) < seconds:
            return 0
    except OSError:  # gone meanwhile
        return 0
    shutil.rmtree(e.path, ignore_errors=True)
    return 1


@contextlib.contextmanager
def owned(d: Path) -> Iterator[Path]:
    """Hold directory ``d`` (made if missing) for the block, as one of the processes using it (the ranks of
    a training run share its mirror): a sweep removes it only when none holds it. Where ``flock`` does not
    work, the directory is used without being held (and never swept)."""
    while True:
        d.mkdir(parents=True, exist_ok=True)
        try:
            fd: int | None = os.open(d / OWNER, os.O_RDONLY | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a sweep removed it between the two: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            os.close(fd)
            fd = None
            break
        if os.fstat(fd).st_nlink:  # not removed by a sweep that held it while this waited
            break
        os.close(fd)
    try:
        yield d
    finally:
        if fd is not None:
            os.close(fd)


def _sweep_runs(runs: str) -> int:
    """Remove the run mirrors in ``runs`` that no process holds and that have not changed for ``RUN_IDLE``."""
    removed = 0
    with contextlib.suppress(OSError):
        for e in list(os.scandir(runs)):
            fd = None
            try:
                fd = os.open(os.path.join(e.path, OWNER), os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except FileNotFoundError:  # made by a version without owners, or being made now: age alone
                pass
            except OSError:  # held, or no flock here
                if fd is not None:
                    os.close(fd)
                continue
            try:
                removed += _remove_if_older(e, RUN_IDLE, (rundir.CHECKPOINTS, rundir.METRICS))
            finally:
                if fd is not None:
                    os.close(fd)
    return removed
