"""Are the finished raw shards still what was written? Checked on every rerun and before every read.

A shard's completion marker records the sizes of its tar and parquet (``files``); the parquet
carries page checksums. :func:`shard_problem` compares: a deleted, truncated or grown tar, or a
parquet with a flipped byte, is a problem. ``tiers download`` / ``tiers build`` clear such a shard's
marker and download it again (:func:`invalidate_damaged`: the only source of a raw shard is the
web); the stages that only read raw shards (annotate, retier) raise one line naming the file and
that command (:func:`check_raw`). The tar's bytes are not hashed: raw tars are the bulk of a build,
and the annotate stage decodes every image of them anyway.
"""

from __future__ import annotations

import logging
import os

from curate.core import manifest, storage, units
from curate.core.integrity import DamagedFile
from curate.core.runner import size_problem
from curate.download import plan as planning
from curate.download.worker import shard_name

log = logging.getLogger(__name__)


def shard_problem(raw: str, shard: str, marker: dict | None = None) -> str | None:
    """None when a finished shard's files are as written; else which file and what is wrong with it."""
    marker = marker if marker is not None else units.read_marker(raw, shard) or {}
    files = marker.get("files", {})
    for ext in ("tar", "parquet"):
        problem = size_problem(storage.join(raw, f"{shard}.{ext}"), files.get(ext))
        if problem is not None:
            return f"{shard}.{ext}: {problem}"
    try:
        storage.read_parquet(storage.join(raw, f"{shard}.parquet"))  # every column: every page's checksum
    except DamagedFile as e:
        return f"{shard}.parquet: {e.problem}"
    return None


def invalidate_damaged(raw: str, plan_info: dict, rounds: list[dict]) -> list[str]:
    """Clear the markers of finished shards whose files are damaged, so they are downloaded again; a
    retry round that had moved rows out of such a shard is merged again. Returns the shards."""
    damaged = []
    done = units.done_units(raw)
    for s in planning.all_shards(plan_info, rounds):
        name = shard_name(s)
        if name not in done:
            continue
        problem = shard_problem(raw, name)
        if problem is None:
            continue
        log.warning(f"{storage.join(raw, problem)}; downloading shard {name} again")
        units.clear_marker(raw, name)
        damaged.append(name)
        for r in rounds:
            if name in r["origins"]:
                units.clear_marker(raw, f"round-{r['round']:03d}")
    if damaged:
        storage.remove(storage.join(raw, "manifest.json"))
    return damaged


def check_raw(build_dir: str | os.PathLike) -> None:
    """Raise :class:`DamagedFile` naming the first damaged raw shard file and the command that repairs it.

    A directory not written by ``tiers download`` (no plan) is not checked.
    """
    raw = storage.join(build_dir, manifest.RAW)
    info = planning.read_plan(raw)
    if info is None:
        return
    done = units.done_units(raw)
    for s in planning.all_shards(info, planning.read_rounds(raw)):
        name = shard_name(s)
        if name in done:
            problem = shard_problem(raw, name)
            if problem is not None:
                path, what = problem.split(": ", 1)
                raise DamagedFile(storage.join(raw, path), what, redownload_fix(build_dir, name))


def redownload_fix(build_dir: str | os.PathLike, shard: str) -> str:
    return (
        f"run `tiers build URLS --out {build_dir}` (or `tiers download URLS --out {build_dir}`) again: "
        f"it downloads shard {shard} again"
    )
