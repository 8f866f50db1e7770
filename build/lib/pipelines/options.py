"""Options several commands share, defined once: URL-list reading, fetching, and output verbosity."""

from __future__ import annotations

import argparse


def add_read_options(p: argparse.ArgumentParser) -> None:
    """The options every command that reads a URL list shares."""
    p.add_argument("--url-col", default="url", help="input column holding the URL (default: url)")
    p.add_argument("--caption-col", default="caption", help="input column holding the caption (default: caption)")
    p.add_argument("--uid-col", default="uid", help="input column holding a uid, if any (default: uid)")
    p.add_argument("--format", choices=["parquet", "csv", "tsv", "jsonl", "txt"], help="override the file format")


def read_config(args: argparse.Namespace, download=None):
    """The :class:`~curate.urllist.ReadConfig` the read options describe; where a flag is left at its
    default, the download config's ``url_col`` / ``caption_col`` / ``input_format`` (img2dataset's names)."""
    from curate.urllist import ReadConfig

    url_col, caption_col, fmt = args.url_col, args.caption_col, args.format
    if download is not None:
        url_col = download.url_col if url_col == "url" and download.url_col else url_col
        caption_col = download.caption_col if caption_col == "caption" and download.caption_col else caption_col
        fmt = fmt or download.input_format
    return ReadConfig(url_col=url_col, caption_col=caption_col, uid_col=args.uid_col, format=fmt)


def _allow(value: str) -> str:
    from curate.download.safety import parse_allow

    try:
        parse_allow(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def add_fetch_options(p: argparse.ArgumentParser) -> None:
    """``--ray-address`` and ``--allow-private-hosts``: shared by every command that downloads."""
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting one here")
    p.add_argument(
        "--allow-private-hosts",
        type=_allow,
        metavar="ENTRIES",
        help="also allow these non-public destinations, comma-separated: 'loopback' (127.0.0.0/8, ::1), a "
        "network (10.0.0.0/8), an address, a host name, each optionally with :PORT (10.1.2.3:9000, "
        "[fd00::1]:9000, mirror.internal:9000, loopback:8765); nothing else is implied. Default: public "
        "addresses only",
    )
