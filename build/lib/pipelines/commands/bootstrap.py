"""``tiers bootstrap DIR``: score a build with filter CLIPs trained on its own kept samples, then re-cut."""

from __future__ import annotations

import argparse
import dataclasses
import logging

log = logging.getLogger("tiers")


def register(sub) -> None:
    p = sub.add_parser(
        "bootstrap", help="score a build with filter CLIPs trained on its own kept samples (held-out folds), re-cut"
    )
    p.add_argument("out", help="build directory (a finished `tiers build`)")
    p.add_argument("--rounds", type=int, default=1, help="rounds; each after the first trains on the last top share")
    p.add_argument("--folds", type=int, default=5, help="folds: each is scored by a model trained on the others")
    p.add_argument("--top", type=float, default=0.5, help="share of the ranking the next round trains on")
    p.add_argument("--model", default="ct-rn-micro-32", help="filter CLIP architecture (open_clip name or ours)")
    p.add_argument("--epochs", type=float, default=6.0, help="passes of each filter CLIP over its training pool")
    p.add_argument(
        "--samples-seen", type=int, default=0, help="samples seen by each filter CLIP (instead of --epochs)"
    )
    p.add_argument("--preset", default="baseline", help="training recipe of the filter CLIPs (baseline | improved)")
    p.add_argument("--trusted", help="a tiers dir of trusted data: round 1 trains on it (the DFN path), no folds")
    p.add_argument("--trusted-tier", default="kept", help="the tier of --trusted to train on (default: kept)")
    p.add_argument("--fold-by", default="uid", help="samples.parquet column whose equal values share a fold")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_bootstrap)


def _bootstrap(args: argparse.Namespace) -> int:
    from pipelines.bootstrap import BootstrapConfig, run_bootstrap
    from pipelines.build import retier, stored_config
    from pipelines.commands.build import _print_tiers

    cfg = BootstrapConfig(
        rounds=args.rounds,
        folds=args.folds,
        top=args.top,
        model=args.model,
        samples_seen=args.samples_seen,
        epochs=args.epochs,
        train={"preset": args.preset},
        trusted=args.trusted,
        trusted_tier=args.trusted_tier,
        fold_by=args.fold_by,
        seed=args.seed,
        device=args.device,
    )
    run_bootstrap(args.out, cfg)
    build_cfg = stored_config(args.out)
    build_cfg = dataclasses.replace(build_cfg, quality=dataclasses.replace(build_cfg.quality, score="bootstrap"))
    _print_tiers(retier(args.out, build_cfg, progress=args.progress))
    return 0
