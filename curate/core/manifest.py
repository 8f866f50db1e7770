"""The layout of a build directory and the tier manifest, the one contract the trainer reads.

A build directory (``tiers build URLS --out DIR``)::

    DIR/raw/                  img2dataset shards: 00000.tar, 00000.parquet, 00000_stats.json, manifest.json
    DIR/annotations/          one parquet per raw shard, one row per downloaded uid
    DIR/samples.parquet       exactly one row per input row: status, reason, quality, band
    DIR/tiers/bands/<band>/   disjoint quality bands as WebDataset shards: 000000.tar, ...
    DIR/tiers/manifest.json   bands and tiers (a tier = a prefix of bands)

A band shard holds, per sample, ``<uid>.<jpg|png|webp>`` (the downloaded bytes, never re-encoded),
``<uid>.txt`` (the caption) and ``<uid>.json`` (uid, url, caption, quality, band).

The manifest (``format = "clip-tiers/tiers@1"``)::

    {"format": ..., "code_version": ..., "config": {...}, "input_rows": N, "counts": {...},
     "bands": {"<band>": {"shards": ["bands/<band>/000000.tar", ...], "samples": n, "bytes": b,
                          "quality": [lo, hi]}},
     "tiers": {"<tier>": {"bands": [...], "shards": [...], "samples": n, "bytes": b,
                          "quality": [lo, hi], "brace": "/abs/dir/bands/<band>/{000000..000003}.tar::..."}}}

Shard paths are relative to the manifest's directory; ``brace`` is absolute, in open_clip's
``--train-data`` notation (``::`` joins the bands).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from curate.core.errors import InputError

RAW = "raw"
ANNOTATIONS = "annotations"
SAMPLES = "samples.parquet"
TIERS = "tiers"
BANDS = "bands"
MANIFEST = "manifest.json"
FORMAT = "clip-tiers/tiers@1"


@dataclass(frozen=True)
class Tier:
    """What the trainer needs of a tier: absolute shard paths and the number of samples."""

    name: str
    shards: tuple[str, ...]
    samples: int
    bytes: int
    quality: tuple[float | None, float | None]
    manifest: str


def manifest_path(path: str | os.PathLike) -> Path:
    """Accept a build dir, its ``tiers/`` dir or the manifest itself."""
    p = Path(path)
    for cand in (p, p / MANIFEST, p / TIERS / MANIFEST):
        if cand.is_file():
            return cand
    raise InputError("no tier manifest here (looked for tiers/manifest.json); run `tiers build` first", path=str(p))


def load_manifest(path: str | os.PathLike) -> dict:
    p = manifest_path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"unreadable tier manifest: {e}", path=str(p)) from None
    if data.get("format") != FORMAT:
        raise InputError(
            f"not a clip-tiers manifest (format {data.get('format')!r}, expected {FORMAT!r})", path=str(p)
        )
    return data


def read_tier(path: str | os.PathLike, name: str) -> Tier:
    """The shards and size of tier ``name`` from the manifest under ``path``."""
    p = manifest_path(path)
    data = load_manifest(p)
    tiers = data.get("tiers", {})
    if name not in tiers:
        raise InputError(f"no tier {name!r}; this manifest has: {', '.join(tiers) or 'none'}", path=str(p))
    t = tiers[name]
    shards = tuple(str((p.parent / s).resolve()) for s in t["shards"])
    q = t.get("quality") or [None, None]
    return Tier(name, shards, int(t["samples"]), int(t.get("bytes", 0)), (q[0], q[1]), str(p))


def brace(shards: list[str] | tuple[str, ...]) -> str:
    """open_clip's ``--train-data`` notation: ``dir/{000000..000003}.tar`` per directory, joined by ``::``."""
    by_dir: dict[str, list[str]] = {}
    for s in shards:
        d, f = os.path.split(s)
        by_dir.setdefault(d, []).append(f)
    parts = []
    for d, files in by_dir.items():
        stems = sorted(files)
        nums = [re.fullmatch(r"(\d+)\.tar", f) for f in stems]
        if all(nums) and len({len(m.group(1)) for m in nums}) == 1:
            vals = [int(m.group(1)) for m in nums]
            width = len(nums[0].group(1))
            if vals == list(range(vals[0], vals[0] + len(vals))):
                if len(vals) == 1:
                    parts.append(os.path.join(d, stems[0]))
                else:
                    parts.append(os.path.join(d, f"{{{vals[0]:0{width}d}..{vals[-1]:0{width}d}}}.tar"))
                continue
        parts.extend(os.path.join(d, f) for f in stems)
    return "::".join(parts)
