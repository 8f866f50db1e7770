"""``tiers study STUDY.toml --out DIR [--until-decided --max-runs N]``: a thin layer over
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
    rows = run_study(cfg, args.out, until_decided=args.until_decided, max_runs=args.max_runs)
    result = study_analysis(cfg, args.out, rows)
    path = write_report(Path(args.out), rows, asdict(cfg), cfg.tiers_dir, cfg.extend, analysis=result)
    for line in describe(result):
        log.info(line)
    log.info(f"report: {path}")
    return 0
