"""Completion markers and local atomic writes: the bookkeeping under :mod:`curate.core.runner`.

A unit's marker is ``<stage dir>/_done/<unit>.json``, written after every output of the unit is in
place, so "marker present" implies "outputs complete" on local disk and on object stores alike (where
there is no rename, but each object appears whole or not at all). A rerun asks :func:`is_done` and
skips finished units. Stage directories are URLs (:mod:`curate.core.storage`); plain paths stay plain.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

MARKERS = "_done"


def marker_path(stage_dir: str | os.PathLike, unit: str) -> str:
    from curate.core import storage

    return storage.join(stage_dir, MARKERS, f"{unit}.json")


def is_done(stage_dir: str | os.PathLike, unit: str) -> bool:
    from curate.core import storage

    return storage.exists(marker_path(stage_dir, unit))


def read_marker(stage_dir: str | os.PathLike, unit: str) -> dict | None:
    from curate.core import storage

    try:
        return json.loads(storage.read_bytes(marker_path(stage_dir, unit)))
    except FileNotFoundError:
        return None


def mark_done(stage_dir: str | os.PathLike, unit: str, info: dict | None = None) -> None:
    from curate.core import storage

    storage.write_text(marker_path(stage_dir, unit), json.dumps(info or {}, sort_keys=True, default=str))


def clear_marker(stage_dir: str | os.PathLike, unit: str) -> None:
    from curate.core import storage

    storage.remove(marker_path(stage_dir, unit))


def done_units(stage_dir: str | os.PathLike) -> set[str]:
    """Names of the units marked done under ``stage_dir`` (one listing, not one request per unit)."""
    from curate.core import storage

    return {n[: -len(".json")] for n in storage.listdir(storage.join(stage_dir, MARKERS)) if n.endswith(".json")}


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it over ``final`` (atomic on one filesystem).

    On an exception the temporary file is removed and ``final`` is left as it was. Local paths only:
    :func:`curate.core.storage.output` is the same for any URL.
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
    """Delete temporaries a killed run left behind in a local directory; returns how many.

    Object stores never hold temporaries: units stage files on local scratch and upload finished ones.
    """
    from curate.core import storage

    if not storage.is_local(directory):
        return 0
    n = 0
    for p in storage.local_path(directory).rglob(".*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n
