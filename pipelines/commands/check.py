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
    from curate.urllist import read_url_list

    table = read_url_list(args.urls, read_config(args))
    extras = [c for c in table.column_names if c not in ("uid", "url", "caption")]
    captions = table.column("caption").null_count
    log.info(
        f"{len(table)} rows; {len(table) - captions} with a caption; extra columns: {', '.join(extras) or 'none'}"
    )
    return 0
