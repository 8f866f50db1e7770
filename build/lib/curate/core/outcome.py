"""Results that look fine but are empty: one line that says so, with the dominant reasons and what to change.

A build where every URL failed (``--allow-private-hosts`` forgotten, no network, the wrong URL
column) or where one filter drops nearly everything (DataComp's 200 px ``min_side`` on a pool of
32 px images) still writes tiers — empty ones. :func:`judge` reads the fate counts of
``samples.parquet`` (``{status: {reason: rows}}``) and returns an :class:`Outcome`: ``empty`` when
nothing was kept (the command then raises :class:`~curate.core.errors.NothingKept`: exit code 3),
and a one-line ``message`` whenever nothing was kept or one reason removed at least ``DOMINANT`` of
the rows that reached it.
"""

from __future__ import annotations

from dataclasses import dataclass

DOMINANT = 0.9  # a single reason removing this share of what reached its stage is worth a line

# What to change, by reason. Filter names (min_side, english, clip_score, ...) get the filter hint.
_HINTS = {
    "private_address": "the URLs point at private or loopback addresses: if they are yours, allow them with "
    "--allow-private-hosts (e.g. loopback, 10.0.0.0/8, mirror.internal:9000)",
    "dns_error": "the host names do not resolve: check the machine's network and DNS, or the URLs",
    "connection_error": "the hosts refuse or drop connections: check the network, a firewall or proxy, or the URLs",
    "timeout": "the servers are too slow: raise [download] timeout / url_deadline, or retry later with "
    "`tiers download --retry-failed DIR`",
    "bad_url": "the URL column holds no http(s) URLs: check --url-col (and --caption-col)",
    "http_404": "the URLs no longer exist (link rot): use a fresher URL list",
    "http_429": "the servers rate-limit this crawler: lower [download] threads and retry with --retry-failed",
    "http_5xx": "the servers fail: retry later with `tiers download --retry-failed DIR`",
    "ssl_error": "TLS fails: check the machine's clock and CA certificates",
    "noai_header": "the servers forbid AI use (X-Robots-Tag: noai); their images cannot be used",
    "not_an_image": "the URLs serve web pages, not images: check that the URL column points at image files",
    "too_large": "the images exceed [download] max_image_bytes / max_pixels",
    "unsupported_format": "the images are in formats whose size cannot be checked (HEIC, ...)",
    "duplicate": "the list repeats the same images: dedup keeps one of each",
}


@dataclass(frozen=True)
class Outcome:
    kept: int
    empty: bool
    message: str | None  # one line, or None when nothing is worth saying


def _hint(reason: str, stage: str) -> str:
    if reason in _HINTS:
        return _HINTS[reason]
    if stage == "dropped":
        return (
            f"filter {reason!r} removes them: relax it in [filters] (its value or image_size) or drop it "
            f'(drop = ["{reason}"]), then `tiers retier DIR --config FILE`'
        )
    return "see download_error / decode_error in samples.parquet for the raw messages"


def _top(reasons: dict[str, int], total: int, k: int = 3) -> str:
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return ", ".join(f"{r} {n:,} ({100 * n / max(total, 1):.0f}%)" for r, n in top)


def judge(counts: dict[str, dict[str, int]]) -> Outcome:
    """The outcome of a build from its fate counts (``curate.select.counts``)."""
    failed = counts.get("failed", {})
    dropped = counts.get("dropped", {})
    kept = sum(counts.get("kept", {}).values())
    rows = kept + sum(failed.values()) + sum(dropped.values())
    n_failed, n_dropped = sum(failed.values()), sum(dropped.values())
    if kept == 0:
        if rows == 0:
            return Outcome(0, True, "nothing kept: the URL list has no rows")
        stage, reasons, total = ("failed", failed, rows) if n_failed >= n_dropped else ("dropped", dropped, rows)
        worst = max(reasons, key=lambda r: (reasons[r], r))
        msg = (
            f"nothing kept of {rows:,} rows: {n_failed:,} failed, {n_dropped:,} dropped; "
            f"{stage} most by {_top(reasons, total)}; {_hint(worst, stage)}"
        )
        return Outcome(0, True, msg)
    # Something kept: warn when one reason removes nearly all of what reached its stage.
    for stage, reasons, reached in (("failed", failed, rows), ("dropped", dropped, rows - n_failed)):
        if not reasons or reached == 0:
            continue
        worst = max(reasons, key=lambda r: (reasons[r], r))
        if reasons[worst] >= DOMINANT * reached:
            verb = "failed to download" if stage == "failed" else "dropped"
            msg = (
                f"only {kept:,} of {rows:,} rows kept: {reasons[worst]:,} of {reached:,} "
                f"({100 * reasons[worst] / reached:.0f}%) {verb} as {worst}; {_hint(worst, stage)}"
            )
            return Outcome(kept, False, msg)
    return Outcome(kept, False, None)
