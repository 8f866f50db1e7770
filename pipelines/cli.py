"""The ``tiers`` command line: a thin layer over importable functions.

Each command module registers its subcommand with ``register(subparsers)`` and sets ``func`` on
its parser; nothing runs at import. :class:`~curate.errors.InputError` (bad input the user can
fix) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from curate.errors import InputError


def _web_build(args) -> int:
    from curate.synthweb import WebConfig, build, parse_mix
    from curate.synthweb.build import DEFAULT_MIX

    mix = dict(DEFAULT_MIX) if args.mix is None else parse_mix(args.mix)
    try:
        cfg = WebConfig(n=args.n, seed=args.seed, mix=mix, workers=args.workers)
        cfg.counts()
    except ValueError as e:
        raise InputError(f"--mix: {e}") from None
    import time

    t0 = time.perf_counter()
    summary = build(args.out, cfg)
    dt = time.perf_counter() - t0
    print(f"built a synthetic web of {summary['rows']} URLs in {args.out} in {dt:.1f} s")
    _print_counts(summary["counts"])
    print(f"URL list: {os.path.join(args.out, 'urls.parquet')} (for a server on {summary['base_url']})")
    return 0


def _print_counts(counts: dict[str, int]) -> None:
    total = sum(counts.values())
    for kind, n in counts.items():
        if n:
            print(f"  {kind:<16} {n:>8}  {100 * n / total:5.1f}%")


def _web_serve(args) -> int:
    from curate.synthweb import WebServer

    try:
        server = WebServer(args.root, port=args.port, host=args.host)
        server.start()
    except (FileNotFoundError, OSError) as e:
        raise InputError(str(e)) from None
    print(f"serving {args.root} on {server.base_url}  (Ctrl-C stops)")
    print(f"URL list for this server: {server.urls_path}", flush=True)
    try:
        import threading

        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _web_urls(args) -> int:
    from curate.synthweb import write_url_list

    if not os.path.exists(os.path.join(args.root, "urls.parquet")):
        raise InputError("not a synthetic web (no urls.parquet); run `tiers web build` first", path=args.root)
    print(write_url_list(args.root, args.base, args.out))
    return 0


def _check(args) -> int:
    from curate.readers import read_url_list

    table = read_url_list(args.urls, _read_config(args))
    extras = [c for c in table.column_names if c not in ("uid", "url", "caption")]
    captions = table.column("caption").null_count
    print(f"{len(table)} rows; {len(table) - captions} with a caption; extra columns: {', '.join(extras) or 'none'}")
    return 0


def add_read_options(p: argparse.ArgumentParser) -> None:
    """The options every command that reads a URL list shares."""
    p.add_argument("--url-col", default="url", help="input column holding the URL (default: url)")
    p.add_argument("--caption-col", default="caption", help="input column holding the caption (default: caption)")
    p.add_argument("--uid-col", default="uid", help="input column holding a uid, if any (default: uid)")
    p.add_argument("--format", choices=["parquet", "csv", "tsv", "jsonl", "txt"], help="override the file format")


def _read_config(args):
    from curate.readers import ReadConfig

    return ReadConfig(url_col=args.url_col, caption_col=args.caption_col, uid_col=args.uid_col, format=args.format)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiers", description="Turn web URL lists into quality-tiered CLIP training data, and measure it."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    web = sub.add_parser("web", help="the synthetic web: build, serve, point a URL list at it")
    wsub = web.add_subparsers(dest="web_command", required=True, metavar="WEB_COMMAND")
    p = wsub.add_parser("build", help="generate a synthetic web with ground truth")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=2000, help="number of URLs (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", help="kind shares, e.g. 'clean=0.6,foreign=0.2,http_404=0.2' (default: a raw crawl)")
    p.add_argument("--workers", type=int, default=0, help="render processes (default: one per core)")
    p.set_defaults(func=_web_build)
    p = wsub.add_parser("serve", help="serve a built synthetic web on 127.0.0.1")
    p.add_argument("root")
    p.add_argument("--port", type=int, default=8765, help="default 8765, the port urls.parquet points at; 0: any")
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=_web_serve)
    p = wsub.add_parser("urls", help="write the URL list rebased onto a server's base URL")
    p.add_argument("root")
    p.add_argument("--base", required=True, help="e.g. http://127.0.0.1:9000")
    p.add_argument("--out", help="default: ROOT/urls-<port>.parquet")
    p.set_defaults(func=_web_urls)

    p = sub.add_parser("check", help="read a URL list and report what it holds (exit 2 if it cannot be used)")
    p.add_argument("urls", nargs="+", help="files, directories or globs, read as one list")
    add_read_options(p)
    p.set_defaults(func=_check)

    from pipelines import bootstrap, build, demo, study

    build.register(sub)
    bootstrap.register(sub)
    demo.register(sub)
    study.register(sub)
    __import__("curate.annotate.cli", fromlist=["register"]).register(sub)  # tiers annotate, tiers filter
    __import__("curate.download.cli", fromlist=["register"]).register(sub)  # tiers download
    __import__("train.cli", fromlist=["register"]).register(sub)  # tiers train, tiers eval
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"tiers: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tiers: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
