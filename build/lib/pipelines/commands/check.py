"""``tiers check URLS...``: read a URL list and report what it holds (exit 2 if it cannot be used)."""

from __future__ import annotations

import argparse
import logging

from pipelines.options import add_read_options, read_config

log = logging.getLogger("tiers")


def register(sub) -> None:
    p = sub.add_parser("check", help="read a URL list and report what it holds (exit 2 if it cannot be used)")
    p.add_argument("urls", nargs="+", help="files, directories or globs, read as one list")
    add_read_options(p)
    p.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from curate.urllist import staged_url_list

    with staged_url_list(
        args.urls, read_config(args), args.progress
    ) as staged:  # a batch at a time, whatever its size
        extras = [c for c in staged.columns if c not in ("uid", "url", "caption")]
        extra = ", ".join(extras) or "none"
        log.info(f"{staged.rows} rows; {staged.captioned} with a caption; extra columns: {extra}")
    return 0
