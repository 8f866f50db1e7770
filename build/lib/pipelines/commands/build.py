"""``tiers build``, ``tiers retier`` and ``tiers dedup``: thin layers over :mod:`pipelines.build`."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from curate.core.errors import InputError, NothingKept
from pipelines.options import add_fetch_options, add_read_options, read_config

log = logging.getLogger("tiers")


def register(sub) -> None:
    p = sub.add_parser("build", help="URL list -> download, annotate, dedup, select -> tiered WebDataset shards")
    p.add_argument("urls", nargs="+", help="URL list files, directories or globs, read as one list")
    p.add_argument("--out", required=True, help="build directory")
    p.add_argument("--config", help="build config TOML ([download], [annotate], [filters], [dedup], [bands], ...)")
    add_fetch_options(p)
    p.add_argument("--clip-model", help="score with this CLIP (see `tiers annotate --help`); overrides the config")
    add_read_options(p)
    p.set_defaults(func=_build)

    p = sub.add_parser("retier", help="re-cut bands and rewrite shards from stored tables (no download, no decode)")
    p.add_argument("out", help="build directory")
    p.add_argument("--edges", help="cumulative band edges, e.g. 0.1,0.25,0.5,1.0")
    p.add_argument("--config", help="build config TOML; default: the one the build used")
    p.set_defaults(func=_retier)

    p = sub.add_parser("dedup", help="re-decide duplicates over the annotation table and rewrite what changed")
    p.add_argument("out", help="build directory")
    p.add_argument("--near-k", type=int, help="pHash Hamming distance within which pairs are near-copy candidates")
    p.add_argument("--shape-tolerance", type=float, help="with --no-verify: largest difference of width/height ratios")
    p.add_argument(
        "--no-verify", action="store_true", help="near copies by pHash alone, without thumbnail neighbours and checks"
    )
    p.add_argument(
        "--semantic-eps", type=float, help="also link CLIP embeddings with cosine > 1 - eps (SemDeDup; off by default)"
    )
    p.add_argument("--no-semantic", action="store_true", help="turn semantic dedup off again")
    p.add_argument("--captions", action="store_true", help="also treat identical normalised captions as duplicates")
    p.add_argument("--decontaminate", nargs="+", default=None, metavar="PATH", help="evaluation sets to remove")
    p.set_defaults(func=_dedup)


def _build(args: argparse.Namespace) -> int:
    from pipelines.build import build, load_build_config

    cfg = load_build_config(args.config)
    if args.clip_model:
        cfg = dataclasses.replace(cfg, annotate=dataclasses.replace(cfg.annotate, clip_model=args.clip_model))
    manifest = build(
        args.urls,
        args.out,
        cfg,
        read_config(args, cfg.download),
        ray_address=args.ray_address,
        allow_private=args.allow_private_hosts,
        progress=args.progress,
    )
    _print_tiers(manifest)
    return 0


def _print_tiers(manifest) -> None:
    """The tiers, then one line if the result is empty (exit 3) or one reason removed nearly everything."""
    from curate.core.outcome import judge

    log.info(
        f"{manifest.input_rows:,} input rows: "
        + ", ".join(f"{s} {sum(v.values()):,}" for s, v in manifest.counts.items())
    )
    for name, t in manifest.tiers.items():
        log.info(f"  {name:<11} {t.samples:>9,} samples  {t.bytes / 1e6:9.1f} MB  {len(t.shards):>4} shards")
    outcome = judge(manifest.counts)
    if outcome.empty:
        raise NothingKept(outcome.message)
    if outcome.message:
        log.warning(outcome.message)


def _retier(args: argparse.Namespace) -> int:
    from curate.select import BandConfig
    from pipelines.build import load_build_config, retier, stored_config

    cfg = load_build_config(args.config) if args.config else stored_config(args.out)
    if args.edges:
        try:
            edges = tuple(float(x) for x in args.edges.split(","))
            BandConfig(edges=edges).validate()
        except ValueError as e:
            raise InputError(f"--edges: {e}") from None
        cfg = dataclasses.replace(cfg, bands=dataclasses.replace(cfg.bands, edges=edges))
    _print_tiers(retier(args.out, cfg, progress=args.progress))
    return 0


def _dedup(args: argparse.Namespace) -> int:
    from pipelines.build import retier, stored_config

    cfg = stored_config(args.out)
    changes = {
        "near_k": args.near_k,
        "near_shape_tolerance": args.shape_tolerance,
        "semantic_eps": args.semantic_eps,
        "semantic": False if args.no_semantic else (True if args.semantic_eps is not None else None),
        "captions": True if args.captions else None,
        "verify": False if args.no_verify else None,
    }
    d = dataclasses.replace(cfg.dedup, **{k: v for k, v in changes.items() if v is not None})
    cfg = dataclasses.replace(cfg, dedup=d)
    if args.decontaminate is not None:
        cfg = dataclasses.replace(cfg, decontaminate=tuple(args.decontaminate))
    _print_tiers(retier(args.out, cfg, progress=args.progress))
    return 0
