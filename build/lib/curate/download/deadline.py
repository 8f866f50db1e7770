"""A wall-clock deadline per URL that ends blocked socket I/O, whatever the server does.

A socket timeout bounds one ``recv``: a server sending its status line, its headers or its body one
byte a second resets it on every byte and holds the thread for ever. So each URL runs under a
:class:`Deadline` from a :class:`Watchdog` (one thread per fetcher): every socket opened while the
deadline is current (each redirect hop, TLS or not) is registered, and when the deadline passes
the watchdog shuts the socket down, which wakes the thread blocked in ``connect``, a TLS handshake,
``readline`` or ``read`` at once. The fetcher then reports the URL as timed out, whatever error the
interrupted read produced (a half-read header block can even look like a valid empty response).

The deadline is found through a thread-local, so the connection code (``curate.download.safety``)
needs no extra arguments: :func:`remaining` caps connect timeouts and DNS lookups, :func:`watch`
registers a socket.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time

from curate.download import reasons

_local = threading.local()


class DeadlinePassed(TimeoutError):
    """The URL's wall-clock deadline passed."""


class Deadline:
    """One URL's deadline: ``fired`` once the watchdog has cut its sockets."""

    def __init__(self, seconds: float, watchdog: Watchdog):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.fired = False
        self._watchdog = watchdog
        self._sockets: list[socket.socket] = []

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.fired or self.remaining() <= 0

    def message(self) -> str:
        return f"{reasons.DEADLINE} of {self.seconds:g} s passed"

    def watch(self, sock: socket.socket) -> None:
        # A duplicate descriptor of the same socket: shutting it down ends I/O on the original even after
        # TLS wraps it (wrap_socket detaches the original object), and closing it later touches nothing else.
        with self._watchdog.lock:
            if self.fired:
                _shutdown(sock)
                return
            self._sockets.append(sock.dup())

    def _fire(self) -> None:  # called by the watchdog, holding its lock
        self.fired = True
        for s in self._sockets:
            _shutdown(s)

    def _release(self) -> None:
        with self._watchdog.lock:
            for s in self._sockets:
                s.close()
            self._sockets.clear()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Watchdog:
    """A thread that fires each registered :class:`Deadline` when its time comes."""

    def __init__(self):
        self.lock = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextlib.contextmanager
    def deadline(self, seconds: float):
        """Run the block under a deadline of ``seconds``; the deadline is current in this thread."""
        d = Deadline(seconds, self)
        with self.lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="url-deadline", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (d.at, next(self._ids), d))
            self.lock.notify()
        outer = getattr(_local, "deadline", None)
        _local.deadline = d
        try:
            yield d
        finally:
            _local.deadline = outer
            d._release()
            with self.lock:
                self._heap = [e for e in self._heap if e[2] is not d]
                heapq.heapify(self._heap)

    def _run(self) -> None:
        with self.lock:
            while not self._closed:
                if not self._heap:
                    self.lock.wait()
                    continue
                at, _, d = self._heap[0]
                wait = at - time.monotonic()
                if wait > 0:
                    self.lock.wait(wait)
                    continue
                heapq.heappop(self._heap)
                d._fire()

    def close(self) -> None:
        with self.lock:
            self._closed = True
            self.lock.notify()


def current() -> Deadline | None:
    return getattr(_local, "deadline", None)


def remaining() -> float | None:
    """Seconds left to the current URL's deadline, or None outside one."""
    d = current()
    return None if d is None else d.remaining()


def expired_error() -> DeadlinePassed:
    d = current()
    return DeadlinePassed(d.message() if d else f"{reasons.DEADLINE} passed")


def capped(timeout) -> float | object:
    """A socket timeout no longer than what is left of the current deadline; DeadlinePassed if nothing is."""
    left = remaining()
    if left is None:
        return timeout
    if left <= 0:
        raise expired_error()
    if timeout is socket._GLOBAL_DEFAULT_TIMEOUT or timeout is None:
        return left
    return min(timeout, left)


def watch(sock: socket.socket) -> None:
    d = current()
    if d is not None:
        d.watch(sock)
