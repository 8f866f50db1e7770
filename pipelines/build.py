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
    [quality]    score = "auto"                (curate.select.quality.QualityConfig)
    [bands]      edges = [0.1, 0.2, 0.3, 0.4, 0.5, 1.0]   balance = "clusters"   (curate.select.bands.BandConfig)
    [shards]     shard_size = 1000
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from curate.annotate import AnnotateConfig
from curate.core import config, schema, units
from curate.core.dirlock import hold
from curate.core.errors import InputError
from curate.core.failpoints import failpoint
from curate.core.integrity import DamagedFile, read_parquet, write_parquet
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

    def to_dict(self) -> dict:
        return config.to_dict(self)


def config_from_toml(data: dict, source: str | None = None) -> BuildConfig:
    """A build config from a TOML document (or the dict ``to_dict`` wrote); InputError names section and file.

    The filters' size rules scale to the download size: ``[filters] image_size`` follows
    ``[download] image_size`` unless the file sets it.
    """
    data = dict(data)
    filters = dict(data.pop("filters", {}) or {})
    cfg = config.from_dict(BuildConfig, data, section="build", source=source)
    filters.setdefault("image_size", cfg.download.image_size)
    cfg = dataclasses.replace(cfg, filters=filters_config(filters, source=source))
    try:
        cfg.bands.validate()
    except ValueError as e:
        raise InputError(f"[bands] {e}", path=source) from None
    return cfg


def load_build_config(path: str | os.PathLike | None) -> BuildConfig:
    """The build config in the TOML file at ``path`` (defaults when None)."""
    if path is None:
        return BuildConfig()
    return config_from_toml(config.read_toml(path), source=os.fspath(path))


def decide(out: Path, cfg: BuildConfig) -> pa.Table:
    """Filters, quality, dedup and bands over the stored tables -> ``samples.parquet``."""
    from curate.annotate import read_annotations
    from curate.dedup.stage import read_dedup, run_dedup
    from curate.download import read_results
    from curate.filters import apply_filters, build_filters
    from curate.select.quality import quality
    from curate.select.samples import assemble, counts

    inputs = read_parquet(out / INPUTS, fix=f"run `tiers build URLS --out {out}` again: it rewrites it from the list")
    downloads = read_results(out)
    ann = read_annotations(out)
    filt = apply_filters(ann, build_filters(cfg.filters))
    try:
        q, which = quality(ann, cfg.quality)
    except ValueError as e:
        raise InputError(str(e)) from None
    summary = run_dedup(out, cfg.dedup, quality=q, prefer=filt.keep, decontaminate=cfg.decontaminate)
    failpoint("decide:after_dedup")
    embeddings = None
    if cfg.bands.balance == "clusters":
        from curate.annotate.run import load_embeddings

        try:
            emb_uids, embeddings = load_embeddings(out)
        except InputError as e:
            raise InputError(f"[bands] balance = 'clusters' needs CLIP image embeddings ({e})") from None
        if emb_uids != ann.column(schema.UID).to_pylist():
            raise InputError("embeddings and annotations disagree on row order; run `tiers annotate` again")
    samples = assemble(inputs, downloads, ann, filt.table, read_dedup(out), q, cfg.bands, embeddings)
    if not _stored_equals(out / SAMPLES, samples):
        # New decisions: the old manifest no longer describes them, so it goes before anything changes.
        (out / TIERS / MANIFEST).unlink(missing_ok=True)
        with units.atomic_path(out / SAMPLES) as tmp:
            write_parquet(samples, tmp)
    c = counts(samples)
    log.info(
        f"decided {samples.num_rows:,} rows by {which} quality: "
        + ", ".join(f"{s} {sum(v.values()):,}" for s, v in c.items())
        + f"; {summary.duplicates:,} duplicates"
    )
    return samples


def _stored_equals(path: Path, table: pa.Table) -> bool:
    """Does ``path`` hold ``table``? A missing or damaged file does not (it is derived: it gets rewritten)."""
    if not path.exists():
        return False
    try:
        return read_parquet(path).equals(table)
    except DamagedFile as e:
        log.warning(f"{path}: {e.problem}; computing it again")
        return False


def shard(out: Path, cfg: BuildConfig, samples: pa.Table, progress: bool = True) -> Manifest:
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
    from curate.urllist.readers import ReadConfig, read_url_list

    cfg = cfg or BuildConfig()
    out = Path(out)
    with hold(out, command="tiers build"):
        t0 = time.perf_counter()
        inputs = read_url_list(urls, read_cfg or ReadConfig())
        _store_inputs(out, inputs)
        log.info(f"[1/5] {inputs.num_rows:,} input rows")
        with ray_session(ray_address):
            download(out / INPUTS, out, cfg.download, allow_private=allow_private, progress=progress)
            log.info(f"[2/5] downloaded ({time.perf_counter() - t0:.0f} s)")
            failpoint("build:after_download")
            annotate(out, cfg.annotate, progress=progress)
            log.info(f"[3/5] annotated ({time.perf_counter() - t0:.0f} s)")
            failpoint("build:after_annotate")
        decisions = decisions_config(out, cfg)
        samples = decide(out, decisions)
        log.info(f"[4/5] decided ({time.perf_counter() - t0:.0f} s)")
        manifest = shard(out, decisions, samples, progress=progress)
        _write_config(out, decisions, requested=cfg)
        log.info(f"[5/5] wrote {len(manifest.tiers)} tiers in {out / 'tiers'} ({time.perf_counter() - t0:.0f} s)")
    return manifest


def _store_inputs(out: Path, inputs: pa.Table) -> None:
    """Keep the URL list as read (retier's source); refuse a directory built from another list. A damaged
    copy is derived data: it is written again from the list."""
    path = out / INPUTS
    if path.exists():
        try:
            if read_parquet(path).equals(inputs):
                return
            raise InputError(f"{out} was built from another URL list; use a new --out or remove it")
        except DamagedFile as e:
            log.warning(f"{path}: {e.problem}; writing it again from the URL list")
    with units.atomic_path(path) as tmp:
        write_parquet(inputs, tmp)


def retier(out: str | os.PathLike, cfg: BuildConfig, progress: bool = True) -> Manifest:
    """Re-decide and re-shard from stored tables: no download, no decode."""
    out = Path(out)
    if not (out / INPUTS).exists():
        raise InputError("not a build directory (no inputs.parquet); run `tiers build` first", path=str(out))
    with hold(out, command="tiers retier"):
        samples = decide(out, cfg)
        manifest = shard(out, cfg, samples, progress=progress)
        _write_config(out, cfg, requested=_stored(out).get("build"))
    return manifest


# build.json: {"config": what the directory's decisions were made with, "build": what the last `tiers
# build` asked for}. They differ after `tiers retier` / `tiers dedup`; a rerun of the same build keeps
# their cut instead of silently undoing it, while a build asking for something new replaces it.
DECISIONS = ("filters", "dedup", "quality", "bands", "shards", "decontaminate")


def _stored(out: Path) -> dict:
    p = Path(out) / "build.json"
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning(f"{p}: unreadable ({e}); the build's own config is used")
        return {}
    return doc if "config" in doc else {"config": doc, "build": doc}  # the older layout: one config


def decisions_config(out: Path, requested: BuildConfig) -> BuildConfig:
    """The config the decisions of a rerun ``tiers build`` use: ``requested``, unless the directory was
    re-cut since the same request (then the re-cut's filters, dedup, quality, bands and shards stay)."""
    doc = _stored(out)
    if not doc or doc["config"] == doc["build"]:
        return requested
    current = config_from_toml(doc["config"], source=str(out / "build.json"))
    if doc["build"] != _as_json(requested):
        log.warning(f"{out}: this build's config replaces the cut made by `tiers retier` / `tiers dedup`")
        return requested
    log.info(f"{out}: keeping the cut made by `tiers retier` / `tiers dedup` (a changed build config replaces it)")
    return dataclasses.replace(requested, **{k: getattr(current, k) for k in DECISIONS})


def _as_json(cfg: BuildConfig) -> dict:
    return json.loads(json.dumps(cfg.to_dict(), default=str))  # as build.json holds it (lists, not tuples)


def _write_config(out: Path, cfg: BuildConfig, requested: BuildConfig | dict | None) -> None:
    build = _as_json(requested) if isinstance(requested, BuildConfig) else requested
    doc = {"config": _as_json(cfg), "build": build if build is not None else _as_json(cfg)}
    with units.atomic_path(out / "build.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2))


def stored_config(out: str | os.PathLike) -> BuildConfig:
    """The config a build directory's decisions were last made with (for retier)."""
    doc = _stored(Path(out))
    if not doc:
        return BuildConfig()
    return config_from_toml(doc["config"], source=str(Path(out) / "build.json"))
