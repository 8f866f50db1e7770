"""``tiers download``: a thin layer over :func:`curate.download.download` and :func:`retry_failed`."""

from __future__ import annotations

import argparse
import logging
import time

from curate.core.errors import InputError, NothingKept
from curate.core.outcome import judge
from pipelines.options import add_fetch_options, add_read_options, read_config

log = logging.getLogger("tiers")


def register(sub) -> None:
    p = sub.add_parser(
        "download",
        help="download a URL list into DIR/raw/ (img2dataset on Ray), every URL accounted for; resumable",
        description="Download URLS into DIR/raw/: WebDataset tars, one parquet row per input row (success, or "
        "failure with a reason), manifest.json. Rerun the same command after an interruption to finish it.",
    )
    p.add_argument("urls", nargs="*", help="URL list files, directories or globs, read as one list")
    p.add_argument("--out", help="build directory; the download goes to OUT/raw/")
    p.add_argument("--config", help="TOML file of download settings (image_size, resize_mode, timeout, threads, ...)")
    add_fetch_options(p)
    p.add_argument(
        "--retry-failed",
        metavar="DIR",
        help="instead of a new download: try again the URLs of DIR that failed for a transient reason, and "
        "merge; --config then changes only the settings it names (e.g. a longer timeout)",
    )
    p.add_argument(
        "--reasons", help="with --retry-failed: comma-separated reasons (default: timeout, http_5xx, http_429)"
    )
    p.add_argument("--cpus", type=int, help="CPUs for a local Ray (default: all); one shard task per CPU")
    add_read_options(p)
    p.set_defaults(func=_download)


def _download(args: argparse.Namespace) -> int:
    from curate.download import REASONS, download, load_config, retry_failed

    common = dict(
        allow_private=args.allow_private_hosts,
        ray_address=args.ray_address,
        num_cpus=args.cpus,
        progress=args.progress,
    )
    t0 = time.perf_counter()
    if args.retry_failed:
        if args.urls or args.out:
            raise InputError("--retry-failed DIR takes no URL list and no --out")
        reasons = None
        if args.reasons:
            reasons = [r.strip() for r in args.reasons.split(",") if r.strip()]
            unknown = sorted(set(reasons) - set(REASONS))
            if unknown:
                raise InputError(f"--reasons: unknown {', '.join(unknown)}; known: {', '.join(REASONS)}")
        s = retry_failed(args.retry_failed, reasons=reasons, config_file=args.config, **common)
    else:
        if not args.urls or not args.out:
            raise InputError("give a URL list and --out DIR (or --retry-failed DIR)")
        cfg = load_config(args.config)
        s = download(args.urls, args.out, cfg, read_config=read_config(args, cfg), **common)
    dt = time.perf_counter() - t0
    if not s.complete:
        log.error(f"download incomplete after {dt:.1f} s: {len(s.missing_shards)} shard(s) ran out of retries:")
        for shard, err in s.failed_shards.items():
            log.error(f"  {shard}: {err}")
        log.error("run the same command again to finish them")
        return 1
    n, ok = s.input_rows, s.successes
    log.info(f"{n} URLs in {dt:.1f} s: {ok} downloaded ({100 * ok / max(1, n):.1f}%), {s.failures} failed")
    for reason, k in s.failures_by_reason.items():
        log.info(f"  {reason:<18} {k:>8}")
    outcome = judge({"failed": s.failures_by_reason, "kept": {"-": s.successes}})
    if outcome.empty:
        raise NothingKept(outcome.message.replace("kept", "downloaded", 1))
    if outcome.message:
        log.warning(outcome.message)
    if args.retry_failed:
        if not s.retried:
            log.info("nothing to retry: no failures with those reasons")
            return 0
        r = s.rounds[-1]
        log.info(
            f"retry round {r['round']}: {r['rows']} retried ({', '.join(r['reasons'])}), {r['recovered']} recovered"
        )
    return 0
