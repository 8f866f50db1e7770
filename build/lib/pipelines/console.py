"""What a ``tiers`` command prints, and how loudly: ``logging``, set up once per command.

Results and progress lines go to stdout as plain text (``logging`` INFO); warnings and errors go to
stderr, prefixed ``tiers: warning:`` / ``tiers: error:``. ``--quiet`` keeps errors only, ``--verbose``
adds our DEBUG lines and lets Ray and the other libraries speak (otherwise they are held at WARNING,
Ray at ERROR and Ray's own C++ logging at FATAL: see :mod:`curate.core.runtime`).
"""

from __future__ import annotations

import logging
import os
import sys

from curate.core import runtime

OURS = ("tiers", "curate", "train", "pipelines", "synthweb")
QUIET, NORMAL, VERBOSE = -1, 0, 1


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"tiers: error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"tiers: warning: {msg}"
        return msg


class _Std(logging.StreamHandler):
    """A handler on whatever ``sys.stdout`` / ``sys.stderr`` is at the time of each record (pytest swaps them)."""

    def __init__(self, name: str):
        self._which = name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self._which)

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def setup(verbosity: int = NORMAL) -> None:
    """Route our loggers to stdout/stderr at the level ``verbosity`` asks for (idempotent)."""
    if verbosity >= VERBOSE:
        os.environ[runtime.RAY_VERBOSE] = "1"  # read by curate.core.runtime when Ray starts
    out = _Std("stdout")
    out.addFilter(_Below(logging.WARNING))
    err = _Std("stderr")
    err.setLevel(logging.WARNING)
    for h in (out, err):
        h.setFormatter(_Format())
        h._clip_tiers = True  # type: ignore[attr-defined]
    level = {QUIET: logging.ERROR, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}[verbosity]
    for name in OURS:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not getattr(h, "_clip_tiers", False)] + [out, err]
        logger.setLevel(level)
        logger.propagate = False
    others = logging.INFO if verbosity >= VERBOSE else logging.WARNING
    if verbosity == QUIET:
        others = logging.ERROR
    for name in ("ray", "img2dataset", "open_clip", None):  # None: the root logger, where open_clip logs
        logging.getLogger(name).setLevel(others)
