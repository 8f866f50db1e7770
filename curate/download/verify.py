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
from pathlib import Path

from curate.core import manifest, units
from curate.core.integrity import DamagedFile, check_file, read_parquet
from curate.download import plan as planning
from curate.download.worker import shard_name

log = logging.getLogger(__name__)


def shard_problem(raw: Path, shard: str) -> str | None:
    """None when a finished shard's files are as written; else which file and what is wrong with it."""
    marker = units.read_marker(raw, shard) or {}
    files = marker.get("files", {})
    for ext in ("tar", "parquet"):
        problem = check_file(raw / f"{shard}.{ext}", files.get(ext), digest=False)
        if problem is not None:
            return f"{shard}.{ext}: {problem}"
    try:
        read_parquet(raw / f"{shard}.parquet")  # every column: every page's checksum
    except DamagedFile as e:
        return f"{shard}.parquet: {e.problem}"
    return None


def invalidate_damaged(raw: Path, plan_info: dict, rounds: list[dict]) -> list[str]:
    """Clear the markers of finished shards whose files are damaged, so they are downloaded again; a
    retry round that had moved rows out of such a shard is merged again. Returns the shards."""
    damaged = []
    for s in planning.all_shards(plan_info, rounds):
        name = shard_name(s)
        if not units.is_done(raw, name):
            continue
        problem = shard_problem(raw, name)
        if problem is None:
            continue
        log.warning(f"{raw / problem}; downloading shard {name} again")
        units.clear_marker(raw, name)
        damaged.append(name)
        for r in rounds:
            if name in r["origins"]:
                units.clear_marker(raw, f"round-{r['round']:03d}")
    if damaged:
        (raw / "manifest.json").unlink(missing_ok=True)
    return damaged


def check_raw(build_dir: str | os.PathLike) -> None:
    """Raise :class:`DamagedFile` naming the first damaged raw shard file and the command that repairs it.

    A directory not written by ``tiers download`` (no plan) is not checked.
    """
    raw = Path(build_dir) / manifest.RAW
    info = planning.read_plan(raw)
    if info is None:
        return
    for s in planning.all_shards(info, planning.read_rounds(raw)):
        name = shard_name(s)
        if units.is_done(raw, name):
            problem = shard_problem(raw, name)
            if problem is not None:
                path, what = problem.split(": ", 1)
                raise DamagedFile(raw / path, what, redownload_fix(build_dir, name))


def redownload_fix(build_dir: str | os.PathLike, shard: str) -> str:
    return (
        f"run `tiers build URLS --out {build_dir}` (or `tiers download URLS --out {build_dir}`) again: "
        f"it downloads shard {shard} again"
    )
