"""``tiers build URLS --out DIR``: download -> annotate -> dedup -> select -> shard, resumable.

Download and annotate are resumable units of work with completion markers (the expensive part);
dedup, selection and band cuts are decisions over the annotation table that take seconds and are
recomputed deterministically on every run; band shards are units with content fingerprints, so a
rerun after a kill rewrites only what is missing. ``tiers retier DIR --edges ...`` re-runs the
decisions and the shard writer with other band edges, without downloading or decoding anything.

A build config is one TOML file with a section per stage::

    [download]   image_size = 256 ...          (curate.download.DownloadConfig)
    [annotate]   clip_model = "run:runs/dfn"  (curate.annotate.AnnotateConfig)
    [filters]    preset = "synthetic-basic"   (curate.filters.FilterConfig)
    [dedup]      near_k = 6                    (curate.dedup.DedupConfig)
    [quality]    score = "auto"                (curate.select.quality.QualityConfig; "bootstrap": `tiers bootstrap`)
    [bands]      edges = [0.1, 0.2, 0.3, 0.4, 0.5, 1.0]   balance = "clusters"   (curate.select.bands.BandConfig)
    [shards]     shard_size = 1000   order = "raw"   (curate.shard.writer.ShardConfig; "shuffled" by default)
    [storage.s3] endpoint_url = "http://minio:9000"   (fsspec options per protocol; never written out)

``DIR`` and the URL lists may be URLs (``s3://bucket/build``, ``gs://...``, ``memory://...``): every
stage reads and writes through :mod:`curate.core.storage`, and the store is checked (reachable, the
bucket there, the credentials accepted, writes allowed) before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

import pyarrow as pa

from curate.annotate import AnnotateConfig
from curate.core import access, batches, config, schema, storage
from curate.core.dirlock import hold
from curate.core.errors import InputError
from curate.core.failpoints import failpoint
from curate.core.integrity import DamagedFile
from curate.core.manifest import MANIFEST, SAMPLES, TIERS, Manifest
from curate.dedup import DedupConfig
from curate.download.config import DownloadConfig
from curate.filters import FilterConfig
from curate.filters import config_from_dict as filters_config
from curate.select.bands import BandConfig
from curate.select.quality import QualityConfig
from curate.shard.writer import ShardConfig

log = logging.getLogger(__name__)

INPUTS = "inputs.parquet"  # the URL list as read, so retier never needs the original files


@dataclass(frozen=True)
class BuildConfig:
    download: DownloadConfig = DownloadConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    filters: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()
    quality: QualityConfig = QualityConfig()
    bands: BandConfig = BandConfig()
    shards: ShardConfig = ShardConfig()
    decontaminate: tuple[str, ...] = ()
    # fsspec options per protocol ([storage.s3] ...): how to reach the data, not what it is, so they are
    # neither compared nor written into build.json or the manifest (they may hold secrets).
    storage: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return config.to_dict(self)


def config_from_toml(data: dict, source: str | None = None) -> BuildConfig:
    """A build config from a TOML document (or the dict ``to_dict`` wrote); InputError names section and file.

    The filters' size rules scale to the download size: ``[filters] image_size`` follows
    ``[download] image_size`` unless the file sets it.
    """
    data = dict(data)
    filters = dict(data.pop("filters", {}) or {})
    stores = data.pop("storage", {}) or {}
    if not isinstance(stores, dict) or not all(isinstance(v, dict) for v in stores.values()):
        raise InputError("[storage] holds one table per protocol, e.g. [storage.s3] endpoint_url = ...", path=source)
    cfg = config.from_dict(BuildConfig, data, section="build", source=source)
    filters.setdefault("image_size", cfg.download.image_size)
    cfg = dataclasses.replace(cfg, filters=filters_config(filters, source=source), storage=dict(stores))
    for name, section in (("bands", cfg.bands), ("shards", cfg.shards)):
        try:
            section.validate()
        except ValueError as e:
            raise InputError(f"[{name}] {e}", path=source) from None
    return cfg


def load_build_config(path: str | os.PathLike | None) -> BuildConfig:
    """The build config in the TOML file at ``path`` (defaults when None)."""
    if path is None:
        return BuildConfig()
    return config_from_toml(config.read_toml(path), source=os.fspath(path))


def decide(out: str, cfg: BuildConfig) -> pa.Table:
    """Filters, quality, dedup and bands over the stored tables -> ``samples.parquet``.

    Returns the samples' metadata (``uid``, ``url``, ``caption``, ``shard``, ``key`` and the decisions
    ``status``, ``reason``, ``quality``, ``band``: what the shard stage and the counts read), read back
    from ``samples.parquet`` once it is written, not the sample table: the annotation columns are read for
    the decisions that need them (projected), and they, the inputs' URLs and captions for
    ``samples.parquet`` a batch at a time (:mod:`curate.select.samplefile`). So while it decides and
    writes, the driver holds the download results and the decisions (~140 B a row) plus
    constant batches.
    """
    from curate.annotate import annotation_files, annotation_fix, read_annotations
    from curate.dedup.stage import read_dedup, run_dedup
    from curate.download import read_results
    from curate.filters import apply_filters, build_filters
    from curate.select import samplefile
    from curate.select.quality import quality
    from curate.select.samples import METADATA, check_counts, counts, fates

    filters = build_filters(cfg.filters)
    ann = read_annotations(out, columns=_decision_columns(out, filters))
    filt = apply_filters(ann, filters)
    if cfg.quality.score == "bootstrap":
        ann = _with_bootstrap_scores(out, ann)
    try:
        q, which = quality(ann, cfg.quality)
    except ValueError as e:
        raise InputError(str(e)) from None
    ann = ann.select([schema.UID, schema.DECODE_ERROR])  # what the fates read; the rest goes now
    summary = run_dedup(out, cfg.dedup, quality=q, prefer=filt.keep, decontaminate=cfg.decontaminate)
    failpoint("decide:after_dedup")
    embeddings = _band_embeddings(out, cfg, ann)
    # Read after dedup, whose peak they would otherwise add to; of the inputs only the uids (their URLs and
    # captions go into samples.parquet a batch at a time, and come back as the shard stage's columns).
    fix = f"run `tiers build URLS --out {out}` again: it rewrites it from the list"
    inputs = storage.join(out, INPUTS)
    uids = batches.read_columns(inputs, [schema.UID], fix=fix).column(schema.UID)
    downloads = read_results(out).combine_chunks()  # one chunk per column: each batch below takes from it
    f = fates(uids, downloads, ann, filt.table, read_dedup(out), q, cfg.bands, embeddings)
    del ann, filt, q, embeddings
    downloads = downloads.drop_columns([schema.UID])  # found by row now (f.d_rows): ~30 B a row less held
    fated = pa.table({schema.UID: uids, **{c: f.columns[c] for c in (schema.STATUS, schema.REASON)}})
    check_counts(fated, len(uids))  # before anything is written: fates that do not add up write nothing
    del fated, uids
    stored = samplefile.StoredRows(annotation_files(out), _carried_columns(out), annotation_fix(out))
    path = storage.join(out, SAMPLES)
    if not samplefile.holds(path, samplefile.batches(inputs, downloads, f, stored, fix), f.num_rows):
        # New decisions: the old manifest no longer describes them, so it goes before anything changes.
        storage.remove(storage.join(out, TIERS, MANIFEST))
        samplefile.write(path, samplefile.batches(inputs, downloads, f, stored, fix))
    del f, downloads, stored
    meta = batches.read_columns(path, METADATA)  # the shard stage's columns, as written
    c = counts(meta)
    log.info(
        f"decided {meta.num_rows:,} rows by {which} quality: "
        + ", ".join(f"{s} {sum(v.values()):,}" for s, v in c.items())
        + f"; {summary.duplicates:,} duplicates"
    )
    return meta


def _decision_columns(out: str, filters) -> list[str]:
    """The annotation columns the filters and the quality score read (and uid, decode_error), as stored."""
    from curate.annotate import annotation_columns
    from curate.select.quality import COLUMNS

    # The size rules read the original size where it was recorded (curate.filters.rules._size).
    want = {schema.UID, schema.DECODE_ERROR, schema.ORIGINAL_WIDTH, schema.ORIGINAL_HEIGHT, *COLUMNS}
    for f in filters:
        want.update(f.columns)
    return [c for c in annotation_columns(out) if c in want]


def _carried_columns(out: str) -> list[str]:
    """The annotation columns a sample row carries (``samples.parquet``), as stored."""
    from curate.annotate import annotation_columns
    from curate.select.samples import carried_columns

    return carried_columns(annotation_columns(out))


def _band_embeddings(out: str, cfg: BuildConfig, ann: pa.Table):
    """CLIP image embeddings aligned with ``ann`` where the bands are balanced by clusters, else None."""
    if cfg.bands.balance != "clusters":
        return None
    from curate.annotate.run import load_embeddings

    try:
        emb_uids, embeddings = load_embeddings(out)
    except InputError as e:
        raise InputError(f"[bands] balance = 'clusters' needs CLIP image embeddings ({e})") from None
    if emb_uids != ann.column(schema.UID).to_pylist():
        raise InputError("embeddings and annotations disagree on row order; run `tiers annotate` again")
    return embeddings


def _with_bootstrap_scores(out: str, ann: pa.Table) -> pa.Table:
    """``ann`` with ``bootstrap_score`` joined by uid (null for rows the bootstrap did not score: they
    were not kept when it ran, and rank last)."""
    import pyarrow.compute as pc

    from curate.select.quality import BOOTSTRAP_SCORE
    from pipelines.bootstrap import read_scores

    scores = read_scores(out)
    idx = pc.index_in(ann.column(schema.UID), value_set=scores.column(schema.UID).combine_chunks())
    col = scores.column(BOOTSTRAP_SCORE).combine_chunks().take(idx)
    return ann.append_column(BOOTSTRAP_SCORE, col)


def shard(out: str, cfg: BuildConfig, samples: pa.Table, progress: bool = True) -> Manifest:
    """Band shards and the tier manifest for ``samples`` (the shard stage)."""
    from curate.select.samples import counts
    from curate.shard.writer import write_tiers

    return write_tiers(
        out,
        samples,
        cfg.bands,
        cfg.shards,
        config={"build": cfg.to_dict()},
        counts=counts(samples),
        progress=progress,
    )


def build(
    urls,
    out: str | os.PathLike,
    cfg: BuildConfig | None = None,
    read_cfg=None,
    ray_address: str | None = None,
    allow_private: str | None = None,
    progress: bool = True,
) -> Manifest:
    """Run every stage; each skips what a previous run finished. Returns the tier manifest."""
    from curate.annotate import annotate
    from curate.core.runtime import ray_session
    from curate.download import download
    from curate.urllist import ReadConfig, staged_url_list

    cfg = cfg or BuildConfig()
    if cfg.storage:
        storage.configure(cfg.storage)
    out = storage.normalise(out)
    access.check_access(out)  # before any work: nothing written to a store that cannot take it
    t0 = time.perf_counter()
    # Read a batch at a time into a local file (an unreadable list leaves --out untouched), then stored.
    with staged_url_list(urls, read_cfg or ReadConfig(), progress) as staged, hold(out, command="tiers build"):
        _store_inputs(out, staged.path)
        log.info(f"[1/5] {staged.rows:,} input rows")
        with ray_session(ray_address):
            # The list as staged above (the same rows as inputs.parquet): not read and staged a second time.
            source = storage.join(out, INPUTS)
            download(staged, out, cfg.download, allow_private=allow_private, progress=progress, source=source)
            log.info(f"[2/5] downloaded ({time.perf_counter() - t0:.0f} s)")
            failpoint("build:after_download")
            annotate(out, cfg.annotate, progress=progress)
            log.info(f"[3/5] annotated ({time.perf_counter() - t0:.0f} s)")
            failpoint("build:after_annotate")
            decisions = decisions_config(out, cfg)
            samples = decide(out, decisions)
            log.info(f"[4/5] decided ({time.perf_counter() - t0:.0f} s)")
            manifest = shard(out, decisions, samples, progress=progress)  # band shards as Ray tasks
        _write_config(out, decisions, requested=cfg)
        where = storage.join(out, TIERS)
        log.info(f"[5/5] wrote {len(manifest.tiers)} tiers in {where} ({time.perf_counter() - t0:.0f} s)")
    return manifest


def _store_inputs(out: str, staged: str) -> None:
    """Keep the URL list as read (``staged``: :func:`curate.urllist.stage_url_list`'s file; retier's
    source); refuse a directory built from another list. A damaged copy is derived data: it is written
    again from the list. Compared and copied a batch at a time."""
    path = storage.join(out, INPUTS)
    if storage.exists(path):
        try:
            if _same_rows(path, staged):
                return
            raise InputError(f"{out} was built from another URL list; use a new --out or remove it")
        except DamagedFile as e:
            log.warning(f"{path}: {e.problem}; writing it again from the URL list")
    with storage.output(path) as tmp:
        shutil.copyfile(staged, tmp)


def _same_rows(a: str, b: str) -> bool:
    """Whether two parquet files hold the same columns and rows, read a batch at a time."""
    fa, fb = batches.open_parquet(a), batches.open_parquet(b)
    if fa.metadata.num_rows != fb.metadata.num_rows or not fa.schema_arrow.equals(fb.schema_arrow):
        return False
    rows = (batches.exact(batches.iter_parquet(p), 1 << 16) for p in (a, b))
    return all(x.equals(y) for x, y in zip(*rows, strict=True))


def retier(out: str | os.PathLike, cfg: BuildConfig, progress: bool = True) -> Manifest:
    """Re-decide and re-shard from stored tables: no download, no decode."""
    if cfg.storage:
        storage.configure(cfg.storage)
    out = storage.normalise(out)
    if not storage.exists(storage.join(out, INPUTS)):
        raise InputError("not a build directory (no inputs.parquet); run `tiers build` first", path=out)
    with hold(out, command="tiers retier"):
        samples = decide(out, cfg)
        manifest = shard(out, cfg, samples, progress=progress)
        _write_config(out, cfg, requested=_stored(out).get("build"))
    return manifest


# build.json: {"config": what the directory's decisions were made with, "build": what the last `tiers
# build` asked for}. They differ after `tiers retier` / `tiers dedup`; a rerun of the same build keeps
# their cut instead of silently undoing it, while a build asking for something new replaces it.
DECISIONS = ("filters", "dedup", "quality", "bands", "shards", "decontaminate")


def _stored(out: str) -> dict:
    p = storage.join(out, "build.json")
    try:
        doc = json.loads(storage.read_bytes(p))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning(f"{p}: unreadable ({e}); the build's own config is used")
        return {}
    return doc if "config" in doc else {"config": doc, "build": doc}  # the older layout: one config


def decisions_config(out: str, requested: BuildConfig) -> BuildConfig:
    """The config the decisions of a rerun ``tiers build`` use: ``requested``, unless the directory was
    re-cut since the same request (then the re-cut's filters, dedup, quality, bands and shards stay)."""
    doc = _stored(out)
    if not doc or doc["config"] == doc["build"]:
        return requested
    current = config_from_toml(doc["config"], source=storage.join(out, "build.json"))
    if doc["build"] != _as_json(requested):
        log.warning(f"{out}: this build's config replaces the cut made by `tiers retier` / `tiers dedup`")
        return requested
    log.info(f"{out}: keeping the cut made by `tiers retier` / `tiers dedup` (a changed build config replaces it)")
    return dataclasses.replace(requested, **{k: getattr(current, k) for k in DECISIONS})


def _as_json(cfg: BuildConfig) -> dict:
    return json.loads(json.dumps(cfg.to_dict(), default=str))  # as build.json holds it (lists, not tuples)


def _write_config(out: str, cfg: BuildConfig, requested: BuildConfig | dict | None) -> None:
    build = _as_json(requested) if isinstance(requested, BuildConfig) else requested
    doc = {"config": _as_json(cfg), "build": build if build is not None else _as_json(cfg)}
    storage.write_json(storage.join(out, "build.json"), doc)


def stored_config(out: str | os.PathLike) -> BuildConfig:
    """The config a build directory's decisions were last made with (for retier)."""
    doc = _stored(storage.normalise(out))
    if not doc:
        return BuildConfig()
    return config_from_toml(doc["config"], source=storage.join(out, "build.json"))
