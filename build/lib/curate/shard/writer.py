"""Write quality bands as WebDataset shards and the tier manifest.

Input: the sample table (``samples.parquet``: one row per input row) with ``band``, ``shard`` and
``key`` (where the raw bytes lie) for every sample that has a band. Each band is shuffled with a
seed derived from the build seed and the band's name, cut into shards of exactly ``shard_size``
samples (the last one of a band holds the rest), and every shard is one unit of
:mod:`curate.core.runner`, fingerprinted by its sample list: a rerun skips shards whose marker
matches and whose file still has the size and XXH3 digest recorded when it was written (a truncated
or bit-flipped shard is written again); a re-cut (``tiers retier``) rewrites only shards whose content
changed and removes shards a band no longer has. Image bytes are copied from the raw tars as they
are: never decoded, never re-encoded.

Out of core, in two passes: each raw tar is indexed once (:mod:`curate.shard.rawindex`), then each
band shard reads only its own samples' bytes (:mod:`curate.shard.bandshard`), so a writer holds one
shard whatever the pool's size, and shards are written by Ray tasks (on every node of a cluster) when
Ray is running, else by threads here. The build directory may be any URL (:mod:`curate.core.storage`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import code_version
from curate.core import runner, schema, storage, units
from curate.core.failpoints import failpoint
from curate.core.manifest import BANDS, MANIFEST, TIERS, BandEntry, Manifest
from curate.select.bands import FILTERED, BandConfig, band_names, tiers
from curate.shard import rawindex
from curate.shard.bandshard import COLUMNS, META_KEYS, BandShardWriter, after_shard, pack, sample_meta

_sample_meta = sample_meta  # the name tests and older callers know


ORDERS = ("shuffled", "raw")


@dataclass(frozen=True)
class ShardConfig:
    shard_size: int = 1000  # samples per shard; every shard of a band but its last has exactly this many
    seed: int = 0
    workers: int = 4  # threads, when shards are written here (no Ray running)
    executor: str = "auto"  # auto (Ray tasks when Ray runs, else threads) | tasks | threads | local
    # shuffled: each band shuffled whole, so a band shard draws from every raw tar (one read per sample
    # once the pool has ~shard_size raw tars: on object storage a ranged GET per sample). raw: each band
    # cut in raw-tar order, each shard's samples shuffled within it: a shard lies in one or two raw tars
    # and reads them in a few ranged GETs (neighbours of other bands read along), as DataComp's
    # resharder's output does; a trainer's shard shuffle and sample buffer do the rest.
    order: str = "shuffled"

    def validate(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {self.order!r}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, not {self.shard_size}")


def _band_seed(seed: int, band: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{band}".encode(), digest_size=8).digest(), "little")


def plan(samples: pa.Table, bands: list[str], cfg: ShardConfig) -> dict[str, list[np.ndarray]]:
    """Band -> list of shards, each an array of row indices into ``samples``, in write order (``cfg.order``:
    the band shuffled whole, or cut in raw-tar order with each shard shuffled within)."""
    cfg.validate()
    band_col = samples.column(schema.BAND).combine_chunks()
    uids = samples.column(schema.UID).combine_chunks()
    out = {}
    for band in bands:
        rows = np.flatnonzero(pc.equal(band_col, band).fill_null(False).to_numpy(zero_copy_only=False))
        # Start from an order independent of row order: by uid (byte order is code-point order in UTF-8).
        rows = rows[pc.sort_indices(uids.take(pa.array(rows, pa.int64()))).to_numpy()]
        rng = np.random.default_rng(_band_seed(cfg.seed, band))
        if cfg.order == "shuffled":
            rows = rows[rng.permutation(len(rows))]
            out[band] = [rows[k : k + cfg.shard_size] for k in range(0, len(rows), cfg.shard_size)]
            continue
        # In the raw tars' order (img2dataset's keys count up through a tar; ties, if any, by uid).
        at = pa.array(rows, pa.int64())
        where = pa.table({"s": samples.column(schema.SHARD).take(at), "k": samples.column(schema.KEY).take(at)})
        rows = rows[pc.sort_indices(where, [("s", "ascending"), ("k", "ascending")]).to_numpy()]
        cuts = [rows[k : k + cfg.shard_size] for k in range(0, len(rows), cfg.shard_size)]
        out[band] = [c[rng.permutation(len(c))] for c in cuts]
    return out


def _fingerprint(rows: pa.Table) -> str:
    """A digest of everything a band shard's bytes depend on: per sample, in order, its metadata member's
    fields and where its image lies. Computed column-wise in Arrow (one joined string per sample, hashed
    as one buffer), so the driver does no per-sample Python work."""
    cols = []
    for name in (*META_KEYS, schema.SHARD, schema.KEY):
        col = rows.column(name)
        if not pa.types.is_string(col.type):
            col = pc.cast(col, pa.string())
        cols.append(col)
    joined = pc.binary_join_element_wise(*cols, "\x1f", null_handling="replace", null_replacement="")
    h = hashlib.blake2b(digest_size=16)
    for col in cols:  # every field's length (-1: null), so no separator inside a caption can alias two rows
        h.update(pc.binary_length(col).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
    for chunk in joined.chunks if isinstance(joined, pa.ChunkedArray) else [joined]:
        chunk = pa.concat_arrays([chunk])  # compact: offsets from 0, no slack in the data buffer
        h.update(chunk.buffers()[2] or b"")
    return h.hexdigest()


def _quality_range(samples: pa.Table, rows: np.ndarray) -> tuple[float | None, float | None]:
    q = samples.column(schema.QUALITY).take(pa.array(rows, pa.int64()))
    lo, hi = pc.min_max(q).values()
    return (None, None) if lo.as_py() is None else (float(lo.as_py()), float(hi.as_py()))


def _plan_units(out_dir: str, samples: pa.Table, bands: list[str], cfg: ShardConfig):
    """(units to write, shard count per band, band entries without their bytes).

    Units to write carry their rows (``COLUMNS``, write order) in ``args``; finished ones are dropped
    here, so the driver never holds more than the sample table's metadata columns and the pending rows.
    """
    shards_of = plan(samples, bands, cfg)
    meta = samples.select(COLUMNS)
    units_all, rows_of, entries = [], {}, {}
    for band, shard_rows in shards_of.items():
        names = []
        for k, idx in enumerate(shard_rows):
            rel = f"{BANDS}/{band}/{k:06d}.tar"
            names.append(rel)
            unit = runner.Unit(f"{band}-{k:06d}", _fingerprint(meta.take(pa.array(idx, pa.int64()))), outputs=(rel,))
            units_all.append(unit)
            rows_of[unit.name] = (rel, idx)
        all_rows = np.concatenate(shard_rows) if shard_rows else np.zeros(0, np.int64)
        quality = _quality_range(samples, all_rows) if len(all_rows) else (None, None)
        entries[band] = BandEntry(tuple(names), int(len(all_rows)), 0, quality)
    todo, _ = runner.pending(out_dir, units_all)
    todo = [dataclasses.replace(u, args=rows_of[u.name]) for u in todo]  # the finished ones' metas go
    return todo, {band: len(s) for band, s in shards_of.items()}, entries


def _executor(cfg: ShardConfig) -> runner.Executor:
    """Ray tasks when this process has Ray running (every node writes), else threads here."""
    from curate.core.runtime import ray_running

    if cfg.executor == "auto":
        kind = "tasks" if ray_running() else "threads"
    else:
        kind = cfg.executor
    return runner.Executor(kind, workers=cfg.workers if kind == "threads" else 0)


class Packer:
    """Hands each band shard unit its rows as it starts (the runner's ``prepare``): ``unit.args`` is
    ``(rel, rows)``, row numbers of the sample table in write order, and becomes ``(rel, packed rows)``,
    the rows' ``COLUMNS`` with where each image lies (``ext``, ``offset``, ``size``).

    Holds the table's ``COLUMNS`` (no copy) and, per row, where its image lies (~20 B a row): packing
    every pending unit up front held the located rows of all of them, then all their packs (~210 B a
    sample at 1M samples), while a unit's own rows are needed only while it runs.
    """

    def __init__(self, samples: pa.Table, ext: pa.Array, offset: np.ndarray, size: np.ndarray):
        self.rows, self.ext, self.offset, self.size = samples.select(COLUMNS), ext, offset, size

    def __call__(self, unit: runner.Unit) -> runner.Unit:
        rel, idx = unit.args
        at = pa.array(idx, pa.int64())
        rows = self.rows.take(at).append_column("ext", self.ext.take(at))
        rows = rows.append_column("offset", pa.array(self.offset[idx])).append_column("size", pa.array(self.size[idx]))
        # Its own rows only, in one record batch, compressed (~40 kB a shard of 1,000): what its task gets.
        return dataclasses.replace(unit, args=(rel, pack(rows.combine_chunks())))


def _located(raw_dir: str, samples: pa.Table, todo: list[runner.Unit], executor) -> Packer:
    """Pass 1 for the pending units: the raw tars they draw from indexed, their rows located (an unreadable
    raw tar or a missing image raises here, before any shard changes); the packer that hands each unit its
    located rows as it starts."""
    n = samples.num_rows
    offset, size = np.zeros(n, np.int64), np.zeros(n, np.int64)
    if not todo:
        return Packer(samples, pa.nulls(n, pa.string()), offset, size)
    idx = np.concatenate([u.args[1] for u in todo])
    at = pa.array(idx, pa.int64())
    rawindex.ensure(raw_dir, pc.unique(samples.column(schema.SHARD).take(at)).to_pylist(), executor)
    ext, offset[idx], size[idx] = rawindex.locations(
        raw_dir, samples.select([schema.UID, schema.SHARD, schema.KEY]).take(at)
    )
    back = np.full(n, -1, np.int64)
    back[idx] = np.arange(len(idx))
    return Packer(samples, ext.take(pa.array(back, pa.int64(), mask=back < 0)), offset, size)


def write_tiers(
    build_dir,
    samples: pa.Table,
    band_cfg: BandConfig = BandConfig(),
    shard_cfg: ShardConfig = ShardConfig(),
    config: dict | None = None,
    counts: dict | None = None,
    progress: bool = True,
) -> Manifest:
    """Write ``DIR/tiers/bands/*`` and ``DIR/tiers/manifest.json``; return the manifest.

    ``config`` joins the manifest's config; ``counts`` (``{status: {reason: rows}}``) is recorded with
    the number of input rows (the rows of ``samples``). An unreadable raw tar or a missing image raises
    :class:`~curate.core.errors.InputError` before any shard changes.
    """
    build_dir = storage.normalise(build_dir)
    raw_dir, out_dir = storage.join(build_dir, "raw"), storage.join(build_dir, TIERS)
    bands = band_names(band_cfg) + ([FILTERED] if band_cfg.filtered_band else [])
    units.remove_stale_temporaries(out_dir) if storage.exists(out_dir) else None
    todo, shard_counts, entries = _plan_units(out_dir, samples, bands, shard_cfg)
    executor = _executor(shard_cfg)
    packer = _located(raw_dir, samples, todo, executor)

    extras = _extra_shards(out_dir, shard_counts)
    if todo or extras:  # shards are about to change: a manifest must never list shards that are changing
        storage.remove(storage.join(out_dir, MANIFEST))
    _remove(out_dir, extras, shard_counts)
    report = runner.run(
        out_dir,
        todo,
        BandShardWriter(raw_dir),
        executor,
        desc="writing band shards",
        progress=progress,
        on_done=after_shard,
        prepare=packer,
    )
    report.raise_failures("band shards")

    for band, e in entries.items():
        nbytes = sum(units.read_marker(out_dir, f"{band}-{k:06d}")["bytes"] for k in range(len(e.shards)))
        entries[band] = dataclasses.replace(e, bytes=nbytes)
    manifest = Manifest.assemble(
        out_dir,
        entries,
        tiers(band_cfg),
        config={"bands": asdict(band_cfg), "shards": asdict(shard_cfg), **(config or {})},
        counts=counts or {},
        input_rows=samples.num_rows,
        code_version=code_version(),
    )
    failpoint("tiers:before_manifest")
    manifest.write(out_dir)
    return manifest


def _extra_shards(out_dir: str, counts: dict[str, int]) -> list[tuple[str, str]]:
    """(band, shard file name) of shards the new cut does not have: bands it lost, shards past a band's
    new end."""
    root = storage.join(out_dir, BANDS)
    out = []
    for band in storage.listdir(root):
        keep = counts.get(band, 0)
        for f in storage.listdir(storage.join(root, band)):
            stem = f[: -len(".tar")]
            if f.endswith(".tar") and stem.isdigit() and int(stem) >= keep:
                out.append((band, f))
    return out


def _remove(out_dir: str, extras: list[tuple[str, str]], counts: dict[str, int]) -> None:
    root = storage.join(out_dir, BANDS)
    for band, f in extras:
        units.clear_marker(out_dir, f"{band}-{f[: -len('.tar')]}")
        storage.remove(storage.join(root, band, f))
    if storage.is_local(root) and storage.local_path(root).exists():
        for d in storage.local_path(root).iterdir():
            if d.is_dir() and d.name not in counts and not any(d.iterdir()):  # a band the new cut lost
                d.rmdir()
