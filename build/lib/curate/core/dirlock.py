"""One run at a time per build directory: a lock that names its holder and dies with it.

Two ``tiers build`` on one ``--out`` interleave their stages: one erases markers the other just
wrote, and the survivor reports a wrong cause. :func:`hold` takes an exclusive ``flock`` on
``DIR/.lock`` without waiting; the kernel releases it when the holding process ends however it
ends (``kill -9`` included), so a lock left by a killed run never blocks anything, and no age or
heartbeat has to be guessed. The file holds the holder's pid, host, start time and command, so a
refused run says who has the directory. A file without a live ``flock`` on it is just history.

A filesystem that does not support ``flock`` (some network filesystems) cannot be locked this way:
the run goes on, with a warning, rather than refusing every run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from curate.core import storage
from curate.core.errors import EXIT_BUSY, InputError

LOCK = ".lock"


class DirectoryBusy(InputError):
    """Another live process holds the directory's lock. ``holder``: what it wrote (pid, host, started, command)."""

    exit_code = EXIT_BUSY

    def __init__(self, directory: Path, holder: dict):
        self.holder = holder
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
        cmd = holder.get("command")
        super().__init__(
            f"in use by another run ({who}{': ' + cmd if cmd else ''}); wait for it to finish or stop it, "
            "or use another --out",
            path=str(directory),
        )


def read_holder(directory: str | os.PathLike) -> dict:
    """What the last holder of the lock wrote ({} when nothing readable)."""
    try:
        return json.loads((Path(directory) / LOCK).read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def hold(directory: str | os.PathLike, command: str | None = None) -> Iterator[dict]:
    """Hold ``DIR/.lock`` for the block; raise :class:`DirectoryBusy` at once if a live process holds it.

    Re-entrant within one process (a build calling download, which locks too, is one run). In object
    storage (no ``flock`` there) the lock is a lease object, renewed while the run lives
    (:mod:`curate.core.lease`).
    """
    if not storage.is_local(directory):
        yield from _hold_remote(storage.normalise(directory), command)
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = str(directory.resolve())
    if key in _held:
        yield _held[key]
        return
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DirectoryBusy(directory, read_holder(directory)) from None
            warnings.warn(f"{directory}: cannot lock ({e}); make sure no other run uses it", stacklevel=3)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": command or " ".join(["tiers", *sys.argv[1:]])[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        _held[key] = me
        try:
            yield me
        finally:
            del _held[key]
    finally:
        os.close(fd)  # releases the flock


def _hold_remote(url: str, command: str | None) -> Iterator[dict]:
    from curate.core import lease

    if url in _held:
        yield _held[url]
        return
    with lease.hold(url, command, busy=lambda holder: DirectoryBusy(url, holder)) as me:
        _held[url] = me
        try:
            yield me
        finally:
            del _held[url]


_held: dict[str, dict] = {}
