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
    [quality]    score = "auto"                (curate.quality.QualityConfig; "bootstrap": `tiers bootstrap`)
    [bands]      edges = [0.1, 0.2, 0.3, 0.4, 0.5, 1.0]   balance = "clusters"   (curate.bands.BandConfig)
    [shards]     shard_size = 1000
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema, units
from curate.annotate import AnnotateConfig
from curate.bands import BandConfig
from curate.dedup import DedupConfig
from curate.errors import InputError
from curate.failpoints import failpoint
from curate.filters import FilterConfig, config_from_dict
from curate.manifest import MANIFEST, SAMPLES, TIERS
from curate.quality import QualityConfig
from curate.tiers import ShardConfig

INPUTS = "inputs.parquet"  # the URL list as read, so retier never needs the original files


def _download_config():
    from curate.download import DownloadConfig

    return DownloadConfig()


@dataclass(frozen=True)
class BuildConfig:
    download: object = field(default_factory=_download_config)
    annotate: AnnotateConfig = AnnotateConfig()
    filters: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()
    quality: QualityConfig = QualityConfig()
    bands: BandConfig = BandConfig()
    shards: ShardConfig = ShardConfig()
    decontaminate: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = (
                v.to_dict() if hasattr(v, "to_dict") else (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v)
            )
        return out


def _replace(obj, values: dict, section: str, source: str | None):
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = set(values) - names
    if unknown:
        raise InputError(f"[{section}] unknown key(s): {', '.join(sorted(unknown))}", path=source)
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return dataclasses.replace(obj, **fixed)


def config_from_toml(data: dict, source: str | None = None) -> BuildConfig:
    cfg = BuildConfig()
    unknown = set(data) - {f.name for f in dataclasses.fields(cfg)}
    if unknown:
        raise InputError(f"unknown section(s): {', '.join(sorted(unknown))}", path=source)
    kw = {}
    for name in ("download", "annotate", "dedup", "quality", "bands", "shards"):
        if name in data:
            kw[name] = _replace(getattr(cfg, name), data[name], name, source)
    if "filters" in data:
        kw["filters"] = config_from_dict(data["filters"], source=source)
    if "decontaminate" in data:
        kw["decontaminate"] = tuple(data["decontaminate"])
    out = dataclasses.replace(cfg, **kw)
    try:
        out.bands.validate()
    except ValueError as e:
        raise InputError(f"[bands] {e}", path=source) from None
    return out


def load_build_config(path: str | os.PathLike | None) -> BuildConfig:
    if path is None:
        return BuildConfig()
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"unreadable build config: {e}", path=str(path)) from None
    return config_from_toml(data, source=str(path))


def decide(out: Path, cfg: BuildConfig, log=print) -> pa.Table:
    """Filters, quality, dedup and bands over the stored tables -> ``samples.parquet``."""
    from curate.annotate import read_annotations
    from curate.dedup.stage import read_dedup, run_dedup
    from curate.download import read_results
    from curate.filters import apply_filters, build_filters
    from curate.quality import quality
    from curate.select import assemble, counts

    inputs = pq.read_table(out / INPUTS)
    downloads = read_results(out)
    ann = read_annotations(out)
    filt = apply_filters(ann, build_filters(cfg.filters))
    if cfg.quality.score == "bootstrap":
        ann = _with_bootstrap_scores(out, ann)
    try:
        q, which = quality(ann, cfg.quality)
    except ValueError as e:
        raise InputError(str(e)) from None
    summary = run_dedup(out, cfg.dedup, quality=q, prefer=filt.keep, decontaminate=cfg.decontaminate, log=log)
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
    if not (out / SAMPLES).exists() or not pq.read_table(out / SAMPLES).equals(samples):
        # New decisions: the old manifest no longer describes them, so it goes before anything changes.
        (out / TIERS / MANIFEST).unlink(missing_ok=True)
        with units.atomic_path(out / SAMPLES) as tmp:
            pq.write_table(samples, tmp)
    c = counts(samples)
    log(
        f"decided {samples.num_rows:,} rows by {which} quality: "
        + ", ".join(f"{s} {sum(v.values()):,}" for s, v in c.items())
        + f"; {summary['duplicates']:,} duplicates"
    )
    return samples


def _with_bootstrap_scores(out: Path, ann: pa.Table) -> pa.Table:
    """``ann`` with ``bootstrap_score`` joined by uid (null for rows the bootstrap did not score: they
    were not kept when it ran, and rank last)."""
    import pyarrow.compute as pc

    from curate.quality import BOOTSTRAP_SCORE
    from pipelines.bootstrap import read_scores

    scores = read_scores(out)
    idx = pc.index_in(ann.column(schema.UID), value_set=scores.column(schema.UID).combine_chunks())
    col = scores.column(BOOTSTRAP_SCORE).combine_chunks().take(idx)
    return ann.append_column(BOOTSTRAP_SCORE, col)


def shard(out: Path, cfg: BuildConfig, samples: pa.Table, progress: bool = True) -> dict:
    from curate.select import counts
    from curate.tiers import write_tiers

    return write_tiers(
        out,
        samples,
        cfg.bands,
        cfg.shards,
        config={"build": cfg.to_dict()},
        extra={"input_rows": samples.num_rows, "counts": counts(samples)},
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
    log=print,
) -> dict:
    """Run every stage; each skips what a previous run finished. Returns the tier manifest."""
    from curate.annotate import annotate
    from curate.download import download
    from curate.readers import ReadConfig, read_url_list
    from curate.runtime import ray_session

    cfg = cfg or BuildConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    inputs_path = out / INPUTS
    inputs = read_url_list(urls, read_cfg or ReadConfig())
    if inputs_path.exists() and not pq.read_table(inputs_path).equals(inputs):
        raise InputError(f"{out} was built from another URL list; use a new --out or remove it")
    if not inputs_path.exists():
        with units.atomic_path(inputs_path) as tmp:
            pq.write_table(inputs, tmp)
    log(f"[1/5] {inputs.num_rows:,} input rows")
    with ray_session(ray_address):
        download(inputs_path, out, cfg.download, allow_private=allow_private, progress=progress)
        log(f"[2/5] downloaded ({time.perf_counter() - t0:.0f} s)")
        failpoint("build:after_download")
        annotate(out, cfg.annotate, progress=progress)
        log(f"[3/5] annotated ({time.perf_counter() - t0:.0f} s)")
        failpoint("build:after_annotate")
    samples = decide(out, cfg, log=log)
    log(f"[4/5] decided ({time.perf_counter() - t0:.0f} s)")
    manifest = shard(out, cfg, samples, progress=progress)
    _write_config(out, cfg)
    log(f"[5/5] wrote {len(manifest['tiers'])} tiers in {out / 'tiers'} ({time.perf_counter() - t0:.0f} s)")
    return manifest


def retier(out: str | os.PathLike, cfg: BuildConfig, progress: bool = True, log=print) -> dict:
    """Re-decide and re-shard from stored tables: no download, no decode."""
    out = Path(out)
    if not (out / INPUTS).exists():
        raise InputError("not a build directory (no inputs.parquet); run `tiers build` first", path=str(out))
    samples = decide(out, cfg, log=log)
    manifest = shard(out, cfg, samples, progress=progress)
    _write_config(out, cfg)
    return manifest


def _write_config(out: Path, cfg: BuildConfig) -> None:
    with units.atomic_path(out / "build.json") as tmp:
        tmp.write_text(json.dumps(cfg.to_dict(), indent=2, default=str))


def stored_config(out: str | os.PathLike) -> BuildConfig:
    """The config a build directory was last built with (for retier)."""
    p = Path(out) / "build.json"
    if not p.exists():
        return BuildConfig()
    return config_from_toml(json.loads(p.read_text()), source=str(p))


def register(sub) -> None:
    from curate.download.cli import add_fetch_options
    from pipelines.cli import add_read_options

    p = sub.add_parser("build", help="URL list -> download, annotate, dedup, select -> tiered WebDataset shards")
    p.add_argument("urls", nargs="+", help="URL list files, directories or globs, read as one list")
    p.add_argument("--out", required=True, help="build directory")
    p.add_argument("--config", help="build config TOML ([download], [annotate], [filters], [dedup], [bands], ...)")
    add_fetch_options(p)
    p.add_argument("--clip-model", help="score with this CLIP (see `tiers annotate --help`); overrides the config")
    add_read_options(p)
    p.set_defaults(func=_build_cli)

    p = sub.add_parser("retier", help="re-cut bands and rewrite shards from stored tables (no download, no decode)")
    p.add_argument("out", help="build directory")
    p.add_argument("--edges", help="cumulative band edges, e.g. 0.1,0.25,0.5,1.0")
    p.add_argument("--config", help="build config TOML; default: the one the build used")
    p.set_defaults(func=_retier_cli)

    p = sub.add_parser("dedup", help="re-decide duplicates over the annotation table and rewrite what changed")
    p.add_argument("out", help="build directory")
    p.add_argument("--near-k", type=int, help="largest pHash Hamming distance of a near duplicate (default 6)")
    p.add_argument("--shape-tolerance", type=float, help="largest relative difference of width/height ratios")
    p.add_argument(
        "--semantic-eps", type=float, help="also link CLIP embeddings with cosine > 1 - eps (SemDeDup; off by default)"
    )
    p.add_argument("--no-semantic", action="store_true", help="turn semantic dedup off again")
    p.add_argument("--captions", action="store_true", help="also treat identical normalised captions as duplicates")
    p.add_argument("--decontaminate", nargs="+", default=None, metavar="PATH", help="evaluation sets to remove")
    p.set_defaults(func=_dedup_cli)


def _build_cli(args) -> int:
    from pipelines.cli import _read_config

    cfg = load_build_config(args.config)
    if args.clip_model:
        cfg = dataclasses.replace(cfg, annotate=dataclasses.replace(cfg.annotate, clip_model=args.clip_model))
    manifest = build(args.urls, args.out, cfg, _read_config(args), args.ray_address, args.allow_private_hosts)
    _print_tiers(manifest)
    return 0


def _print_tiers(manifest: dict) -> None:
    print(
        f"{manifest['input_rows']:,} input rows: "
        + ", ".join(f"{s} {sum(v.values()):,}" for s, v in manifest["counts"].items())
    )
    for name, t in manifest["tiers"].items():
        print(f"  {name:<11} {t['samples']:>9,} samples  {t['bytes'] / 1e6:9.1f} MB  {len(t['shards']):>4} shards")


def _retier_cli(args) -> int:
    cfg = load_build_config(args.config) if args.config else stored_config(args.out)
    if args.edges:
        try:
            edges = tuple(float(x) for x in args.edges.split(","))
            BandConfig(edges=edges).validate()
        except ValueError as e:
            raise InputError(f"--edges: {e}") from None
        cfg = dataclasses.replace(cfg, bands=dataclasses.replace(cfg.bands, edges=edges))
    _print_tiers(retier(args.out, cfg))
    return 0


def _dedup_cli(args) -> int:
    cfg = stored_config(args.out)
    d = cfg.dedup
    changes = {
        "near_k": args.near_k,
        "near_shape_tolerance": args.shape_tolerance,
        "semantic_eps": args.semantic_eps,
        "semantic": False if args.no_semantic else (True if args.semantic_eps is not None else None),
        "captions": True if args.captions else None,
    }
    d = dataclasses.replace(d, **{k: v for k, v in changes.items() if v is not None})
    cfg = dataclasses.replace(cfg, dedup=d)
    if args.decontaminate is not None:
        cfg = dataclasses.replace(cfg, decontaminate=tuple(args.decontaminate))
    _print_tiers(retier(args.out, cfg))
    return 0
