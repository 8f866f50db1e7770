"""Resumable units of work: write under a temporary name, rename, leave a completion marker.

A rerun asks :func:`is_done` and skips finished units, so a stage killed at any moment and run
again ends with the same result as an uninterrupted run. A marker is written only after the
unit's outputs have been renamed into place, so "marker present" implies "outputs complete".
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

MARKERS = "_done"


def marker_path(stage_dir: str | os.PathLike, unit: str) -> Path:
    return Path(stage_dir) / MARKERS / f"{unit}.json"


def is_done(stage_dir: str | os.PathLike, unit: str) -> bool:
    return marker_path(stage_dir, unit).exists()


def read_marker(stage_dir: str | os.PathLike, unit: str) -> dict | None:
    p = marker_path(stage_dir, unit)
    return json.loads(p.read_text()) if p.exists() else None


def mark_done(stage_dir: str | os.PathLike, unit: str, info: dict | None = None) -> None:
    p = marker_path(stage_dir, unit)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        tmp.write_text(json.dumps(info or {}, sort_keys=True, default=str))


def clear_marker(stage_dir: str | os.PathLike, unit: str) -> None:
    marker_path(stage_dir, unit).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it over ``final`` (atomic on one filesystem).

    On an exception the temporary file is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporaries a killed run left behind; returns how many."""
    n = 0
    for p in Path(directory).rglob(".*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n
