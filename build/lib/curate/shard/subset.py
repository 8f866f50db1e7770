"""DataComp-style subsets, in and out: a tier made from a list of uids, and a tier's uids as DataComp writes them.

``make_subset(DIR, FILE, NAME)`` reads a uid list (:func:`curate.core.uid128.read_uid_file`: DataComp's
``.npy`` of ``u8,u8``, a parquet with ``uid``, or a text list), finds those samples in
``DIR/samples.parquet`` through the one 128-bit mapping of :mod:`curate.core.uid128`, and writes them as
a tier of their own: shards under ``DIR/tiers/subsets/NAME/``, written by the band-shard writer from the
raw tars (bytes copied as they are, never decoded, nothing downloaded), plus ``subset.json`` (what was
asked, found and written) and ``uids.parquet``. The tier manifest then lists tier ``NAME``, so ``tiers
train`` and ``python -m open_clip_train.main --train-data <brace>`` read it like any other tier.

Why shards and not a filter over the band shards: a tier is a shard list, and every reader of the
manifest (our trainer, open_clip's, a user's webdataset pipeline) must see exactly the subset; a uid
filter only our trainer applied would make the manifest's ``brace`` lie. It is DataComp's resharder
step, done from the raw tars at the writer's speed.

Any downloaded sample may be in a subset, whatever our filters decided (the list is the user's
choice); the summary counts what it holds by our status and reason, and what the list named that this
build has no bytes for (failed downloads, undecodable images, uids not in this build).

``export_tier(DIR, TIER, FORMAT, OUT)`` writes a tier's uids, sorted as DataComp's resharder expects:
``datacomp-npy`` (``u8,u8``) or ``parquet`` (``uid``: 32 hex digits; ``tiers_uid``: ours).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core import runner, schema, storage, uid128, units
from curate.core.dirlock import hold
from curate.core.errors import InputError
from curate.core.manifest import SAMPLES, SUBSET_FILE, SUBSETS, TIERS, BandEntry, Manifest, manifest_path
from curate.shard.bandshard import COLUMNS, BandShardWriter
from curate.shard.writer import ShardConfig, _executor, _fingerprint, _located, plan

log = logging.getLogger(__name__)

UIDS_FILE = "uids.parquet"
FORMATS = ("datacomp-npy", "parquet")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
_BAND_TIER = re.compile(r"^(top\d+|kept|unfiltered)$")


@dataclass(frozen=True)
class SubsetSummary:
    """What ``tiers subset`` did: uids asked for, found and written, and why the others are not in it."""

    name: str
    source: str
    source_sha256: str
    requested: int  # uids in the file, repeats included
    unique: int
    samples: int  # in the subset's shards
    unknown: int  # not in this build's input list
    no_bytes: dict[str, int] = field(default_factory=dict)  # named but never stored: reason -> rows
    by_status: dict[str, dict[str, int]] = field(default_factory=dict)  # of the samples: status -> reason -> n
    band: dict = field(default_factory=dict)  # the BandEntry, as the manifest holds it

    def to_dict(self) -> dict:
        return asdict(self)


def _build_dir(path: str | os.PathLike) -> Path:
    found = manifest_path(path)
    if not storage.is_local(found):
        raise InputError("subsets and exports need a build directory on local disk, not in object storage", path=found)
    return storage.local_path(found).parent.parent


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_samples(build: Path, columns: list[str]) -> pa.Table:
    path = build / SAMPLES
    if not path.is_file():
        raise InputError("no samples.parquet here; subsets and exports need a `tiers build` output", path=str(build))
    have = pq.read_schema(path).names
    return pq.read_table(path, columns=[c for c in columns if c in have])


def _match(samples: pa.Table, wanted: np.ndarray, source: str) -> tuple[np.ndarray, int]:
    """Row indices of ``samples`` whose uid maps to one of ``wanted``, and how many wanted map to none."""
    pool = uid128.to_pairs(samples.column(schema.UID).to_pylist())
    uniq_pool = np.unique(pool)
    if len(uniq_pool) != len(pool):
        raise InputError(
            f"{len(pool) - len(uniq_pool)} uid(s) of this build map to the same 128-bit uid; "
            "export and subset cannot tell them apart",
            path=source,
        )
    left = uid128.as_table(pool).append_column("row", pa.array(np.arange(len(pool), dtype=np.int64)))
    right = uid128.as_table(np.unique(wanted))
    joined = left.join(right, keys=["hi", "lo"], join_type="inner")
    rows = np.sort(joined.column("row").to_numpy())
    return rows, len(right) - len(rows)


def _validate_name(name: str, manifest: Manifest, path: Path) -> None:
    if not _NAME.match(name) or _BAND_TIER.match(name):
        raise InputError(
            f"--name {name!r}: a subset's name is a plain token (letters, digits, _ . -) and not a band tier's "
            "name (topN, kept, unfiltered)"
        )
    entry = manifest.tiers.get(name)
    if entry is not None and entry.bands != (f"{SUBSETS}/{name}",):
        raise InputError(f"tier {name!r} exists and is not a subset; choose another --name", path=str(path))


def make_subset(
    build_dir: str | os.PathLike,
    uids_file: str | os.PathLike,
    name: str,
    shard_cfg: ShardConfig | None = None,
    replace: bool = False,
    progress: bool = True,
) -> SubsetSummary:
    """Make tier ``name`` of the build at ``build_dir`` from the uids in ``uids_file`` (see the module doc).

    A rerun with the same file is a no-op; another file under an existing name needs ``replace``. Holds the
    build directory's lock (:mod:`curate.core.dirlock`): it rewrites the tier manifest.
    """
    build = _build_dir(build_dir)
    with hold(build, command="tiers subset"):
        return _make_subset(build, Path(uids_file), name, shard_cfg, replace, progress)


def _make_subset(build: Path, src: Path, name: str, shard_cfg, replace: bool, progress: bool) -> SubsetSummary:
    tiers_dir = build / TIERS
    manifest = Manifest.load(tiers_dir)
    _validate_name(name, manifest, tiers_dir)
    sub_dir = tiers_dir / SUBSETS / name
    wanted = uid128.read_uid_file(src)
    if not len(wanted):
        raise InputError("the uid file names no uids", path=str(src))
    sha = _sha256(src)
    old = _read_record(sub_dir)
    if old is not None and old.get("source_sha256") != sha and not replace:
        raise InputError(
            f"subset {name!r} exists, made from another uid list ({old.get('source')}); "
            "pass --replace, or choose another --name",
            path=str(sub_dir),
        )
    cfg = shard_cfg or ShardConfig(**{k: v for k, v in manifest.config.get("shards", {}).items() if k != "workers"})
    cols = [schema.UID, schema.URL, schema.CAPTION, schema.QUALITY, schema.BAND, schema.SHARD, schema.KEY,
            schema.STATUS, schema.REASON, schema.DECODE_ERROR]  # fmt: skip
    samples = _read_samples(build, cols)
    rows, unknown = _match(samples, wanted, str(src))
    if not len(rows):
        raise InputError(
            f"none of the {len(np.unique(wanted))} uids is in this build (is it the same pool? uids map as "
            "curate/core/uid128.py says)",
            path=str(src),
        )
    found = samples.take(pa.array(rows))
    stored = pc.and_(found.column(schema.SHARD).is_valid(), found.column(schema.KEY).is_valid())
    if schema.DECODE_ERROR in found.column_names:
        stored = pc.and_(stored, found.column(schema.DECODE_ERROR).is_null())
    no_bytes = Counter(r or "unknown" for r in found.filter(pc.invert(stored)).column(schema.REASON).to_pylist())
    sub = found.filter(stored)
    if not sub.num_rows:
        raise InputError(f"none of the uids found has stored image bytes ({dict(no_bytes)})", path=str(src))
    status = Counter(zip(sub.column(schema.STATUS).to_pylist(), sub.column(schema.REASON).to_pylist(), strict=True))
    sub = sub.set_column(sub.schema.get_field_index(schema.BAND), schema.BAND, pa.array([name] * sub.num_rows))
    band = _write(tiers_dir, sub, name, cfg, progress)
    by_status: dict[str, dict[str, int]] = {}
    for (st, reason), n in sorted(status.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        by_status.setdefault(st or "unknown", {})[reason or "-"] = n
    summary = SubsetSummary(
        name, str(src), sha, len(wanted), len(np.unique(wanted)), sub.num_rows, unknown, dict(no_bytes), by_status,
        {**asdict(band), "shards": list(band.shards), "quality": list(band.quality)},
    )  # fmt: skip
    with units.atomic_path(sub_dir / UIDS_FILE) as tmp:
        pq.write_table(sub.select([schema.UID]).sort_by(schema.UID), tmp)
    with units.atomic_path(sub_dir / SUBSET_FILE) as tmp:  # the record last: it makes the subset a tier
        tmp.write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
    _reassemble(tiers_dir, manifest)
    return summary


def _read_record(sub_dir: Path) -> dict | None:
    f = sub_dir / SUBSET_FILE
    try:
        return json.loads(f.read_text()) if f.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _write(tiers_dir: Path, sub: pa.Table, name: str, cfg: ShardConfig, progress: bool) -> BandEntry:
    """The subset's shards: runner units fingerprinted by their samples (a killed run resumes, a finished
    shard whose bytes changed is written again), by the band shards' two passes; old extra shards removed."""
    shards = plan(sub, [name], cfg)[name]
    meta = sub.select(COLUMNS)
    every, rows_of, names = [], {}, []
    for k, idx in enumerate(shards):
        rel = f"{SUBSETS}/{name}/{k:06d}.tar"
        names.append(rel)
        unit = runner.Unit(
            f"subset-{name}-{k:06d}", _fingerprint(meta.take(pa.array(idx, pa.int64()))), outputs=(rel,)
        )
        every.append(unit)
        rows_of[unit.name] = (rel, idx)
    todo, _ = runner.pending(str(tiers_dir), every)
    todo = [dataclasses.replace(u, args=rows_of[u.name]) for u in todo]
    raw_dir = str(tiers_dir.parent / "raw")
    executor = _executor(cfg)
    packer = _located(raw_dir, sub, todo, executor)  # an unreadable raw tar fails here, before any change
    if todo:
        (tiers_dir / SUBSETS / name / SUBSET_FILE).unlink(missing_ok=True)
    for p in sorted((tiers_dir / SUBSETS / name).glob("*.tar")):
        if p.stem.isdigit() and int(p.stem) >= len(shards):  # a replaced, larger subset's tail
            units.clear_marker(tiers_dir, f"subset-{name}-{p.stem}")
            p.unlink()
    report = runner.run(
        str(tiers_dir),
        todo,
        BandShardWriter(raw_dir),
        executor,
        desc="writing subset shards",
        progress=progress,
        prepare=packer,
    )
    report.raise_failures("subset shards")
    nbytes = sum(units.read_marker(tiers_dir, f"subset-{name}-{k:06d}")["bytes"] for k in range(len(shards)))
    lo, hi = (v.as_py() for v in pc.min_max(sub.column(schema.QUALITY)).values())
    return BandEntry(tuple(names), sub.num_rows, nbytes, (None, None) if lo is None else (float(lo), float(hi)))


def _reassemble(tiers_dir: Path, manifest: Manifest) -> None:
    """Rewrite the manifest with the subsets now on disk (band tiers as they were)."""
    bands = {k: v for k, v in manifest.bands.items() if not k.startswith(f"{SUBSETS}/")}
    tier_bands = {t: list(e.bands) for t, e in manifest.tiers.items() if not e.bands[0].startswith(f"{SUBSETS}/")}
    meta = {"config": manifest.config, "counts": manifest.counts, "input_rows": manifest.input_rows,
            "code_version": manifest.code_version}  # fmt: skip
    Manifest.assemble(tiers_dir, bands, tier_bands, **meta).write(tiers_dir)


def tier_uids(build_dir: str | os.PathLike, tier: str) -> list[str]:
    """Our uids of tier ``tier``: from ``samples.parquet`` for band tiers, from the subset's record for subsets."""
    build = _build_dir(build_dir)
    manifest = Manifest.load(build / TIERS)
    if tier not in manifest.tiers:
        raise InputError(f"no tier {tier!r}; this manifest has: {', '.join(manifest.tiers)}", path=str(build))
    entry = manifest.tiers[tier]
    if entry.bands[0].startswith(f"{SUBSETS}/"):
        return pq.read_table(build / TIERS / entry.bands[0] / UIDS_FILE).column(schema.UID).to_pylist()
    samples = _read_samples(build, [schema.UID, schema.BAND])
    mask = pc.is_in(samples.column(schema.BAND), value_set=pa.array(list(entry.bands), pa.string()))
    uids = samples.filter(pc.fill_null(mask, False)).column(schema.UID).to_pylist()
    if len(uids) != entry.samples:
        raise InputError(
            f"samples.parquet puts {len(uids)} samples in tier {tier!r}, the manifest {entry.samples}; "
            "run `tiers retier` to write them again",
            path=str(build),
        )
    return uids


def export_tier(build_dir: str | os.PathLike, tier: str, fmt: str, out: str | os.PathLike) -> int:
    """Write tier ``tier``'s uids to ``out`` as ``fmt`` (``datacomp-npy`` or ``parquet``), sorted by their
    128-bit value; returns how many."""
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    uids = tier_uids(build_dir, tier)
    pairs = uid128.to_pairs(uids)
    if fmt == "datacomp-npy":
        uid128.write_npy(out, pairs)
        return len(uids)
    order = np.lexsort((pairs["f1"], pairs["f0"]))
    table = pa.table(
        {"uid": uid128.to_hex(pairs[order]), "tiers_uid": pa.array([uids[i] for i in order.tolist()], pa.string())}
    )
    with units.atomic_path(Path(out)) as tmp:
        pq.write_table(table, tmp)
    return len(uids)
