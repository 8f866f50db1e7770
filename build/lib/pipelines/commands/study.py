"""``tiers study STUDY.toml --out DIR [--until-decided --max-runs N] [--ray-address ADDR]
[--gpus-per-run G | --cpus-per-run N]``: a thin layer over
:mod:`pipelines.study`, :mod:`pipelines.analysis` and :mod:`pipelines.report`."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger("tiers")


def register(sub) -> None:
    p = sub.add_parser(
        "study", help="train tiers x budgets x seeds, decide which tier wins where, fit the scaling law, report.html"
    )
    p.add_argument("study", help="study TOML file")
    p.add_argument("--out", required=True, help="study directory (results.parquet, plots/, report.html)")
    p.add_argument(
        "--until-decided",
        action="store_true",
        help="after the planned runs, add seeds to the cells whose comparisons are undecided, most informative first",
    )
    p.add_argument("--max-runs", type=int, help="with --until-decided: the most runs the study may hold (required)")
    g = p.add_argument_group("runs on Ray (each run one task; as many at once as the cluster has slots)")
    g.add_argument("--ray-address", help="join this Ray cluster ('auto': the one this node belongs to)")
    each = g.add_mutually_exclusive_group()
    each.add_argument(
        "--gpus-per-run", type=float, help="GPUs each run holds (default with --ray-address: 1; 0.5 shares a GPU)"
    )
    each.add_argument(
        "--cpus-per-run",
        type=int,
        help="run on CPUs: each run holds N CPUs and no GPU (without --ray-address: on a local Ray)",
    )
    p.set_defaults(func=_study)


def _study(args: argparse.Namespace) -> int:
    from curate.core.errors import InputError
    from pipelines.analysis import describe
    from pipelines.report import write_report
    from pipelines.study import load_study, run_study, study_analysis

    if args.until_decided and not args.max_runs:
        raise InputError("--until-decided needs --max-runs N (the most runs the study may hold)")
    if args.max_runs and not args.until_decided:
        raise InputError("--max-runs goes with --until-decided")
    cfg = load_study(args.study)
    ray = None
    if args.ray_address or args.gpus_per_run is not None or args.cpus_per_run is not None:
        from pipelines.cluster import RaySlots

        if args.cpus_per_run is not None:
            ray = RaySlots(args.ray_address, gpus=0.0, cpus=float(args.cpus_per_run))
        else:
            ray = RaySlots(args.ray_address, gpus=1.0 if args.gpus_per_run is None else args.gpus_per_run)
    rows = run_study(cfg, args.out, until_decided=args.until_decided, max_runs=args.max_runs, ray=ray)
    result = study_analysis(cfg, args.out, rows)
    path = write_report(Path(args.out), rows, asdict(cfg), cfg.tiers_dir, cfg.extend, analysis=result)
    for line in describe(result):
        log.info(line)
    log.info(f"report: {path}")
    return 0
