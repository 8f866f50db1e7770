"""``tiers web build|serve|urls``: the synthetic web with ground truth (see :mod:`synthweb`)."""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time

from curate.core.errors import InputError

log = logging.getLogger("tiers")


def register(sub) -> None:
    web = sub.add_parser("web", help="the synthetic web: build, serve, point a URL list at it")
    wsub = web.add_subparsers(dest="web_command", required=True, metavar="WEB_COMMAND")
    p = wsub.add_parser("build", help="generate a synthetic web with ground truth")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=2000, help="number of URLs (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", help="kind shares, e.g. 'clean=0.6,foreign=0.2,http_404=0.2' (default: a raw crawl)")
    p.add_argument("--workers", type=int, default=0, help="render processes (default: one per core)")
    p.set_defaults(func=_build)
    p = wsub.add_parser("serve", help="serve a built synthetic web on 127.0.0.1")
    p.add_argument("root")
    p.add_argument("--port", type=int, default=8765, help="default 8765, the port urls.parquet points at; 0: any")
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=_serve)
    p = wsub.add_parser("urls", help="write the URL list rebased onto a server's base URL")
    p.add_argument("root")
    p.add_argument("--base", required=True, help="e.g. http://127.0.0.1:9000")
    p.add_argument("--out", help="default: ROOT/urls-<port>.parquet")
    p.set_defaults(func=_urls)


def _build(args: argparse.Namespace) -> int:
    from synthweb import DEFAULT_MIX, WebConfig, build, parse_mix

    mix = dict(DEFAULT_MIX) if args.mix is None else parse_mix(args.mix)
    try:
        cfg = WebConfig(n=args.n, seed=args.seed, mix=mix, workers=args.workers)
        cfg.counts()
    except ValueError as e:
        raise InputError(f"--mix: {e}") from None
    t0 = time.perf_counter()
    summary = build(args.out, cfg, progress=args.progress)
    log.info(f"built a synthetic web of {summary['rows']} URLs in {args.out} in {time.perf_counter() - t0:.1f} s")
    total = sum(summary["counts"].values())
    for kind, n in summary["counts"].items():
        if n:
            log.info(f"  {kind:<16} {n:>8}  {100 * n / total:5.1f}%")
    log.info(f"URL list: {os.path.join(args.out, 'urls.parquet')} (for a server on {summary['base_url']})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from synthweb import WebServer

    try:
        server = WebServer(args.root, port=args.port, host=args.host)
        server.start()
    except (FileNotFoundError, OSError) as e:
        raise InputError(str(e)) from None
    log.info(f"serving {args.root} on {server.base_url}  (Ctrl-C stops)")
    log.info(f"URL list for this server: {server.urls_path}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _urls(args: argparse.Namespace) -> int:
    from synthweb import write_url_list

    if not os.path.exists(os.path.join(args.root, "urls.parquet")):
        raise InputError("not a synthetic web (no urls.parquet); run `tiers web build` first", path=args.root)
    log.info(write_url_list(args.root, args.base, args.out))
    return 0
