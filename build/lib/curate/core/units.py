"""Completion markers and local atomic writes: the bookkeeping under :mod:`curate.core.runner`.

A unit's marker is ``<stage dir>/_done/<unit>.json``, written after every output of the unit is in
place, so "marker present" implies "outputs complete" on local disk and on object stores alike (where
there is no rename, but each object appears whole or not at all). A rerun asks :func:`is_done` and
skips finished units. Stage directories are URLs (:mod:`curate.core.storage`); plain paths stay plain.
"""

from __future__ import annotations

import json
import os

from curate.core import storage
from curate.core.storage import atomic_path

__all__ = ["MARKERS", "atomic_path", "clear_marker", "done_units", "is_done", "mark_done", "read_marker"]

MARKERS = "_done"


def marker_path(stage_dir: str | os.PathLike, unit: str) -> str:
    return storage.join(stage_dir, MARKERS, f"{unit}.json")


def is_done(stage_dir: str | os.PathLike, unit: str) -> bool:
    return storage.exists(marker_path(stage_dir, unit))


def read_marker(stage_dir: str | os.PathLike, unit: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(marker_path(stage_dir, unit)))
    except FileNotFoundError:
        return None


def mark_done(stage_dir: str | os.PathLike, unit: str, info: dict | None = None) -> None:
    storage.write_text(marker_path(stage_dir, unit), json.dumps(info or {}, sort_keys=True, default=str))


def clear_marker(stage_dir: str | os.PathLike, unit: str) -> None:
    storage.remove(marker_path(stage_dir, unit))


def done_units(stage_dir: str | os.PathLike) -> set[str]:
    """Names of the units marked done under ``stage_dir`` (one listing, not one request per unit)."""
    return {n[: -len(".json")] for n in storage.listdir(storage.join(stage_dir, MARKERS)) if n.endswith(".json")}


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporaries a killed run left behind in a local directory; returns how many.

    Object stores never hold temporaries: units stage files on local scratch and upload finished ones.
    """
    if not storage.is_local(directory):
        return 0
    n = 0
    for p in storage.local_path(directory).rglob(".*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n
