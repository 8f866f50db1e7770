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

A **subset** (``tiers subset``: a DataComp-style uid list) is a tier of its own shards, written from the
raw tars into ``tiers/subsets/<name>/`` and described by ``tiers/subsets/<name>/subset.json``
(``{"band": {...BandEntry}, ...}``). :meth:`Manifest.assemble` adds every subset found there as band
``subsets/<name>`` and tier ``<name>``, so a re-cut of the bands (``tiers retier``) keeps them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field

from curate.core.errors import InputError

RAW = "raw"
ANNOTATIONS = "annotations"
SAMPLES = "samples.parquet"
TIERS = "tiers"
BANDS = "bands"
MANIFEST = "manifest.json"
FORMAT = "clip-tiers/tiers@1"
SUBSETS = "subsets"
SUBSET_FILE = "subset.json"


@dataclass(frozen=True)
class Tier:
    """What the trainer needs of a tier: absolute shard paths and the number of samples."""

    name: str
    shards: tuple[str, ...]
    samples: int
    bytes: int
    quality: tuple[float | None, float | None]
    manifest: str


@dataclass(frozen=True)
class BandEntry:
    """One band: its shards (relative to the manifest's directory), samples, bytes, quality range."""

    shards: tuple[str, ...]
    samples: int
    bytes: int
    quality: tuple[float | None, float | None] = (None, None)


@dataclass(frozen=True)
class TierEntry:
    """One tier: the bands it is made of (best first) and what they add up to; ``brace`` is absolute."""

    bands: tuple[str, ...]
    shards: tuple[str, ...]
    samples: int
    bytes: int
    quality: tuple[float | None, float | None]
    brace: str


@dataclass(frozen=True)
class Manifest:
    """The tier manifest (``tiers/manifest.json``): the one contract between the shard writers and the trainer."""

    bands: dict[str, BandEntry]
    tiers: dict[str, TierEntry]
    config: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)  # {status: {reason: rows}}
    input_rows: int | None = None
    code_version: str = ""
    format: str = FORMAT

    @classmethod
    def assemble(
        cls, tiers_dir: str | os.PathLike, bands: dict[str, BandEntry], tier_bands: dict[str, list[str]], **meta
    ) -> Manifest:
        """Tiers from their bands (``tier -> [band, ...]``, best first), plus the subsets written under
        ``tiers_dir/subsets/``; ``meta``: config, counts, ..."""
        sub_bands, sub_tiers = subset_entries(tiers_dir)
        bands = {**bands, **sub_bands}
        tier_bands = {**tier_bands, **{k: v for k, v in sub_tiers.items() if k not in tier_bands}}
        tiers = {}
        for name, members in tier_bands.items():
            shards = tuple(s for b in members for s in bands[b].shards)
            qs = [bands[b].quality for b in members if bands[b].samples and bands[b].quality[0] is not None]
            tiers[name] = TierEntry(
                bands=tuple(members),
                shards=shards,
                samples=sum(bands[b].samples for b in members),
                bytes=sum(bands[b].bytes for b in members),
                quality=(min(q[0] for q in qs), max(q[1] for q in qs)) if qs else (None, None),
                brace=brace([_absolute(tiers_dir, s) for s in shards]),
            )
        return cls(bands=bands, tiers=tiers, **meta)

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "code_version": self.code_version,
            "config": self.config,
            "input_rows": self.input_rows,
            "counts": self.counts,
            "bands": {k: _plain(asdict(v)) for k, v in self.bands.items()},
            "tiers": {k: _plain(asdict(v)) for k, v in self.tiers.items()},
        }

    def write(self, tiers_dir: str | os.PathLike) -> str:
        """Write ``tiers_dir/manifest.json`` atomically (the last file a build writes)."""
        from curate.core import storage

        path = storage.join(tiers_dir, MANIFEST)
        storage.write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> Manifest:
        if data.get("format") != FORMAT:
            raise InputError(
                f"not a clip-tiers manifest (format {data.get('format')!r}, expected {FORMAT!r})", path=source
            )
        try:
            bands = {k: _band(v) for k, v in data["bands"].items()}
            tiers = {k: _tier(v) for k, v in data["tiers"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(
                f"damaged tier manifest ({type(e).__name__}: {e}); run `tiers retier`", path=source
            ) from None
        meta = {k: data[k] for k in ("config", "counts", "input_rows", "code_version") if k in data}
        return cls(bands=bands, tiers=tiers, **meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        """The manifest of a build dir, its ``tiers/`` dir or the file itself; InputError when unusable."""
        from curate.core import storage

        p = manifest_path(path)
        try:
            data = json.loads(storage.read_bytes(p))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"unreadable tier manifest: {e}", path=str(p)) from None
        return cls.from_dict(data, source=str(p))

    def tier(self, name: str, path: str | os.PathLike) -> Tier:
        """Tier ``name`` with absolute shard paths (``path``: where this manifest lives)."""
        if name not in self.tiers:
            raise InputError(f"no tier {name!r}; this manifest has: {', '.join(self.tiers) or 'none'}", path=str(path))
        t = self.tiers[name]
        from curate.core import storage

        shards = tuple(_absolute(storage.parent(path), s) for s in t.shards)
        return Tier(name, shards, t.samples, t.bytes, t.quality, str(path))


def subset_entries(tiers_dir: str | os.PathLike) -> tuple[dict[str, BandEntry], dict[str, list[str]]]:
    """The subsets under ``tiers_dir/subsets/``: band ``subsets/<name>`` and tier ``<name>`` for each."""
    from curate.core import storage

    bands, tiers = {}, {}
    root = storage.join(tiers_dir, SUBSETS)
    for f in storage.glob(root, f"*/{SUBSET_FILE}") if storage.isdir(root) else ():
        try:
            band = _band(json.loads(storage.read_bytes(f))["band"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise InputError(f"damaged subset record ({type(e).__name__}: {e})", path=str(f)) from None
        name = storage.name(storage.parent(f))
        bands[f"{SUBSETS}/{name}"] = band
        tiers[name] = [f"{SUBSETS}/{name}"]
    return bands, tiers


def _quality(v: dict) -> tuple[float | None, float | None]:
    q = v.get("quality") or (None, None)
    return (q[0], q[1])


def _band(v: dict) -> BandEntry:
    return BandEntry(tuple(v["shards"]), int(v["samples"]), int(v.get("bytes", 0)), _quality(v))


def _tier(v: dict) -> TierEntry:
    return TierEntry(
        tuple(v["bands"]),
        tuple(v["shards"]),
        int(v["samples"]),
        int(v.get("bytes", 0)),
        _quality(v),
        v.get("brace", ""),
    )


def _plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _absolute(root: str | os.PathLike, rel: str) -> str:
    """A shard's absolute path (a URL when the manifest is in object storage)."""
    from curate.core import storage

    if storage.is_local(root):
        return str((storage.local_path(root) / rel).resolve())
    return storage.join(root, rel)


def manifest_path(path: str | os.PathLike) -> str:
    """Accept a build dir, its ``tiers/`` dir or the manifest itself (any of them a URL)."""
    from curate.core import storage

    p = storage.normalise(path)
    for cand in (p, storage.join(p, MANIFEST), storage.join(p, TIERS, MANIFEST)):
        if storage.isfile(cand):
            return cand
    raise InputError("no tier manifest here (looked for tiers/manifest.json); run `tiers build` first", path=p)


def load_manifest(path: str | os.PathLike) -> Manifest:
    return Manifest.load(path)


def read_tier(path: str | os.PathLike, name: str) -> Tier:
    """The shards and size of tier ``name`` from the manifest under ``path``."""
    p = manifest_path(path)
    return Manifest.load(p).tier(name, p)


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
