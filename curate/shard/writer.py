"""Write quality bands as WebDataset shards and the tier manifest.

Input: the sample table (``samples.parquet``: one row per input row) with ``band``, ``shard`` and
``key`` (where the raw bytes lie) for every sample that has a band. Each band is shuffled with a
seed derived from the build seed and the band's name, cut into shards of exactly ``shard_size``
samples (the last one of a band holds the rest), and every shard is one unit of work: written
under a temporary name, renamed, and marked done with a fingerprint of its sample list and the
size and XXH3 digest of the bytes written. A rerun skips shards whose marker matches and whose file
still has that size and digest (a truncated or bit-flipped shard is written again); a re-cut
(``tiers retier``) rewrites only shards whose content changed and removes shards a band no longer
has. Image bytes are copied from the raw tars as they are: never decoded, never re-encoded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from json.encoder import encode_basestring
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from curate import code_version
from curate.core import schema, units
from curate.core.errors import InputError
from curate.core.failpoints import failpoint
from curate.core.integrity import check_file, stamp
from curate.core.manifest import BANDS, MANIFEST, TIERS, BandEntry, Manifest
from curate.core.tarstream import IMAGE_EXTS, MappedTar, TarWriter
from curate.select.bands import FILTERED, BandConfig, band_names, tiers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardConfig:
    shard_size: int = 1000  # samples per shard; every shard of a band but its last has exactly this many
    seed: int = 0
    workers: int = 4  # threads: the work is reads and writes, which release the GIL


def _band_seed(seed: int, band: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{band}".encode(), digest_size=8).digest(), "little")


def plan(samples: pa.Table, bands: list[str], cfg: ShardConfig) -> dict[str, list[np.ndarray]]:
    """Band -> list of shards, each an array of row indices into ``samples``, in write order."""
    band_col = np.asarray(samples.column(schema.BAND).to_pylist(), dtype=object)
    uids = np.asarray(samples.column(schema.UID).to_pylist(), dtype=object)
    out = {}
    for band in bands:
        rows = np.flatnonzero(band_col == band)
        rows = rows[np.argsort(uids[rows], kind="stable")]  # start from an order independent of row order
        rows = rows[np.random.default_rng(_band_seed(cfg.seed, band)).permutation(len(rows))]
        out[band] = [rows[k : k + cfg.shard_size] for k in range(0, len(rows), cfg.shard_size)]
    return out


class _RawShard:
    """A mapped raw tar and where each key's image lies in it."""

    def __init__(self, path: Path):
        self.path = path
        self.tar = MappedTar(path)
        self._by_name = {m[0]: m for m in self.tar.members}  # img2dataset's names: "<key>.<ext>"
        self._by_stem: dict | None = None

    def image(self, key: str) -> tuple[str, memoryview] | None:
        for ext in IMAGE_EXTS:
            m = self._by_name.get(f"{key}.{ext}")
            if m is not None:
                return ext, self.tar.view(m[1], m[2])
        if self._by_stem is None:  # other writers: names in folders, upper-case extensions
            self._by_stem = self.tar.index()
        members = self._by_stem.get(key) or {}
        ext = next((e for e in IMAGE_EXTS if e in members), None)
        return None if ext is None else (ext, self.tar.view(*members[ext]))


def _map_raw(raw_dir: Path, shards: set[str]) -> dict[str, _RawShard]:
    out = {}
    try:
        for s in sorted(shards):
            path = raw_dir / f"{s}.tar"
            try:
                out[s] = _RawShard(path)
            except (OSError, tarfile.TarError) as e:
                raise InputError(f"raw shard unreadable: {e}", path=str(path)) from None
    except BaseException:
        _unmap(out)
        raise
    return out


def _unmap(raw: dict[str, _RawShard]) -> None:
    for shard in raw.values():
        shard.tar.close()


def _sample_meta(row: dict) -> bytes:
    """The sample's ``.json`` member: exactly ``json.dumps({uid, url, caption, quality, band},
    sort_keys=True, ensure_ascii=False)``, written out by hand because it runs once per sample."""
    enc = encode_basestring
    band, caption, uid, url, q = (row[k] for k in _META_KEYS)
    band = "null" if band is None else enc(band)
    caption = "null" if caption is None else enc(caption)
    uid = "null" if uid is None else enc(uid)
    url = "null" if url is None else enc(url)
    # json writes a finite float as repr(); null, NaN, Infinity and non-floats go through json itself
    quality = float.__repr__(q) if type(q) is float and math.isfinite(q) else json.dumps(q)
    return f'{{"band": {band}, "caption": {caption}, "quality": {quality}, "uid": {uid}, "url": {url}}}'.encode()


_META_KEYS = (schema.BAND, schema.CAPTION, schema.UID, schema.URL, schema.QUALITY)


def _fingerprint(rows: list[dict], metas: list[bytes]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for r, meta in zip(rows, metas, strict=True):
        h.update(meta)
        h.update(f"{r[schema.SHARD]}/{r[schema.KEY]}".encode())
    return h.hexdigest()


def _write_one(dest: Path, rows: list[dict], metas: list[bytes], raw: dict, raw_dir: Path) -> tuple[int, int]:
    """One band shard: per sample the raw image (copied from the mapped raw tar, page cache to page
    cache, by ``writev``), its caption and its metadata, in the shard's shuffled order."""
    with units.atomic_path(dest) as tmp:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            names: list[str] = []
            datas: list[bytes | memoryview] = []
            for r, meta in zip(rows, metas, strict=True):
                shard, key, uid = r[schema.SHARD], r[schema.KEY], r[schema.UID]
                found = raw[shard].image(key)
                if found is None:
                    raise InputError(f"no image for key {key!r} (uid {uid})", path=str(raw_dir / f"{shard}.tar"))
                ext, image = found
                names += (f"{uid}.{ext}", f"{uid}.txt", f"{uid}.json")
                datas += (image, (r[schema.CAPTION] or "").encode(), meta)
            w = TarWriter(out)
            w.add_many(names, datas)
            w.close()
        finally:
            os.close(out)
    return len(rows), w.bytes


@dataclass(frozen=True)
class ShardJob:
    """One band shard to (re)write: its band, index, path under ``tiers/``, samples and content fingerprint."""

    band: str
    index: int
    rel: str
    rows: list[dict]
    metas: list[bytes]
    fingerprint: str

    @property
    def unit(self) -> str:
        return f"{self.band}-{self.index:06d}"


def _is_current(out_dir: Path, job: ShardJob) -> bool:
    """The shard on disk is the one its marker describes: same sample list (fingerprint), and the bytes
    written then (size and XXH3 recorded at write time). A truncated, grown or bit-flipped shard is not."""
    marker = units.read_marker(out_dir, job.unit)
    if not marker or marker.get("fingerprint") != job.fingerprint:
        return False
    problem = check_file(out_dir / job.rel, marker)
    if problem is not None:
        log.warning(f"{out_dir / job.rel}: {problem}; writing it again")
    return problem is None


def _plan_jobs(out_dir: Path, samples: pa.Table, bands: list[str], cfg: ShardConfig):
    """(jobs whose marker does not match, shard count per band, the band entries without their bytes)."""
    shards_of = plan(samples, bands, cfg)
    has_band = np.asarray(samples.column(schema.BAND).is_valid().to_numpy(zero_copy_only=False))
    cols = [schema.UID, schema.URL, schema.CAPTION, schema.QUALITY, schema.BAND, schema.SHARD, schema.KEY]
    rows = samples.select(cols).to_pylist()
    metas = {i: _sample_meta(rows[i]) for i in np.flatnonzero(has_band).tolist()}
    jobs, entries = [], {}
    for band, shard_rows in shards_of.items():
        names = []
        for k, idx in enumerate(shard_rows):
            rel = f"{BANDS}/{band}/{k:06d}.tar"
            names.append(rel)
            unit_rows, unit_metas = [rows[i] for i in idx], [metas[i] for i in idx.tolist()]
            job = ShardJob(band, k, rel, unit_rows, unit_metas, _fingerprint(unit_rows, unit_metas))
            if not _is_current(out_dir, job):
                units.clear_marker(out_dir, job.unit)
                jobs.append(job)
        q = [x for x in (rows[i][schema.QUALITY] for idx in shard_rows for i in idx) if x is not None]
        quality = (float(min(q)), float(max(q))) if q else (None, None)
        entries[band] = BandEntry(tuple(names), int(sum(len(i) for i in shard_rows)), 0, quality)
    return jobs, {band: len(s) for band, s in shards_of.items()}, entries


def write_tiers(
    build_dir: str | os.PathLike,
    samples: pa.Table,
    band_cfg: BandConfig = BandConfig(),
    shard_cfg: ShardConfig = ShardConfig(),
    config: dict | None = None,
    counts: dict | None = None,
    progress: bool = True,
) -> Manifest:
    """Write ``DIR/tiers/bands/*`` and ``DIR/tiers/manifest.json``; return the manifest.

    ``config`` joins the manifest's config; ``counts`` (``{status: {reason: rows}}``) is recorded with
    the number of input rows (the rows of ``samples``).
    """
    build_dir = Path(build_dir)
    raw_dir, out_dir = build_dir / "raw", build_dir / TIERS
    bands = band_names(band_cfg) + ([FILTERED] if band_cfg.filtered_band else [])
    if out_dir.exists():
        units.remove_stale_temporaries(out_dir)
    jobs, shard_counts, entries = _plan_jobs(out_dir, samples, bands, shard_cfg)

    # Map the raw tars before touching anything, so an unreadable one fails the run with no side effect.
    with raw_tars(raw_dir, jobs) as raw:
        extras = _extra_shards(out_dir, shard_counts)
        if jobs or extras:  # shards are about to change: a manifest must never list shards that are changing
            (out_dir / MANIFEST).unlink(missing_ok=True)
        _remove(out_dir, extras, shard_counts)
        run_jobs(out_dir, raw_dir, raw, jobs, shard_cfg.workers, progress)

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


@contextlib.contextmanager
def raw_tars(raw_dir: Path, jobs: list[ShardJob]):
    """The raw tars ``jobs`` read from, mapped (InputError naming the first unreadable one), then unmapped."""
    raw = _map_raw(raw_dir, {r[schema.SHARD] for job in jobs for r in job.rows})
    try:
        yield raw
    finally:
        _unmap(raw)


def run_jobs(out_dir: Path, raw_dir: Path, raw: dict, jobs: list[ShardJob], workers: int, progress: bool) -> None:
    """Write each job's shard under ``out_dir`` (threads), marking each done with its fingerprint."""
    bar = tqdm(total=len(jobs), desc="writing shards", unit="shard", disable=not progress or not jobs)

    def run(job: ShardJob) -> None:
        n, nbytes = _write_one(out_dir / job.rel, job.rows, job.metas, raw, raw_dir)
        info = {"fingerprint": job.fingerprint, "samples": n, "bytes": nbytes, **stamp(out_dir / job.rel)}
        units.mark_done(out_dir, job.unit, info)
        bar.update(1)
        failpoint("tiers:after_shard")

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(run, jobs))
    bar.close()


def _extra_shards(out_dir: Path, counts: dict[str, int]) -> list[tuple[str, Path]]:
    """(band, path) of shards on disk that the new cut does not have: bands it lost, shards past a
    band's new end."""
    root = out_dir / BANDS
    if not root.exists():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if d.is_dir():
            keep = counts.get(d.name, 0)
            out += [(d.name, p) for p in sorted(d.glob("*.tar")) if p.stem.isdigit() and int(p.stem) >= keep]
    return out


def _remove(out_dir: Path, extras: list[tuple[str, Path]], counts: dict[str, int]) -> None:
    for band, p in extras:
        units.clear_marker(out_dir, f"{band}-{p.stem}")
        p.unlink()
    root = out_dir / BANDS
    for d in root.iterdir() if root.exists() else ():
        if d.is_dir() and d.name not in counts and not any(d.iterdir()):  # a band the new cut lost
            d.rmdir()
