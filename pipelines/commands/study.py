"""``tiers study STUDY.toml --out DIR``: a thin layer over :mod:`pipelines.study` and :mod:`pipelines.report`."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger("tiers")


def register(sub) -> None:
    p = sub.add_parser("study", help="train tiers x budgets x seeds, fit the scaling law, write report.html")
    p.add_argument("study", help="study TOML file")
    p.add_argument("--out", required=True, help="study directory (results.parquet, plots/, report.html)")
    p.set_defaults(func=_study)


def _study(args: argparse.Namespace) -> int:
    from pipelines.report import write_report
    from pipelines.study import load_study, run_study

    cfg = load_study(args.study)
    rows = run_study(cfg, args.out)
    path = write_report(Path(args.out), rows, asdict(cfg), cfg.tiers_dir, cfg.extend)
    log.info(f"report: {path}")
    return 0
