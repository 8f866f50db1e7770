"""One run at a time per build directory in object storage: a lease object, renewed while the run lives.

Object stores have no ``flock``, and a process killed with ``kill -9`` cannot release anything. So the
lock is a lease: ``DIR/.lock`` holds the holder (pid, host, start time, command) and an expiry. It is
created only if absent (a conditional PUT, ``If-None-Match: *``, which S3, GCS and MinIO honour), renewed
by a background thread every ``ttl / 3`` seconds, and deleted on exit. A run that finds a lease past its
expiry, or held by a process of this host that is gone, takes it over by replacing that exact object
(``If-Match`` on its ETag), so two runs racing for a dead holder's lease cannot both win. A refused run raises
:class:`~curate.core.errors.InputError` naming the holder. The price of a lease is ``ttl``: a run killed
with ``kill -9`` on another host blocks the directory for at most that long (60 s by default).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

from curate.core import storage
from curate.core.errors import InputError

LOCK = ".lock"
TTL = 60.0


def _doc(ttl: float, command: str | None) -> bytes:
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": command or " ".join(["tiers", *sys.argv[1:]])[:300],
            "expires": time.time() + ttl,
        }
    ).encode()


def _busy(url: str, holder: dict) -> InputError:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
    cmd = holder.get("command")
    return InputError(
        f"in use by another run ({who}{': ' + cmd if cmd else ''}); wait for it to finish or stop it, "
        "or use another --out",
        path=url,
    )


def _dead_here(holder: dict) -> bool:
    """Whether the holder ran on this host and its process is gone (a rerun after ``kill -9`` needs no wait)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _take(fs, path: str, url: str, ttl: float, command: str | None, busy) -> dict:
    """Create the lease, or take over an expired one (returns what it holds); raise when a live run holds it."""
    doc = _doc(ttl, command)
    try:
        fs.pipe_file(path, doc, mode="create")
        return json.loads(doc)
    except FileExistsError:
        pass
    info = fs.info(path)
    try:
        holder = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        holder = {}
    if holder.get("expires", 0) > time.time() and not _dead_here(holder):
        raise busy(holder)
    etag = info.get("ETag")
    # Replace exactly the expired object: a rival that took it over first changed its ETag.
    try:
        fs.call_s3("put_object", Bucket=path.split("/", 1)[0], Key=path.split("/", 1)[1], Body=doc, IfMatch=etag)
    except Exception as e:  # noqa: BLE001 - PreconditionFailed in whatever shape the backend raises it
        raise busy(holder) from e
    return json.loads(doc)


@contextlib.contextmanager
def hold(directory: str, command: str | None = None, ttl: float = TTL, busy=None) -> Iterator[dict]:
    """Hold ``directory``'s lease (an object-store URL) for the block; yields what the lease says.
    ``busy(holder)`` makes the error raised when a live run holds it (default: an InputError)."""
    url = storage.join(directory, LOCK)
    fs, path = storage.filesystem(url)
    me = _take(fs, path, directory, ttl, command, busy or (lambda holder: _busy(directory, holder)))
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl / 3):
            with contextlib.suppress(Exception):  # a missed renewal is retried; the lease has slack
                fs.pipe_file(path, _doc(ttl, command))

    t = threading.Thread(target=renew, name="clip-tiers-lease", daemon=True)
    t.start()
    try:
        yield me
    finally:
        stop.set()
        t.join()
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)
