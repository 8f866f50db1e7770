"""From img2dataset's raw error messages to a short list of reasons people can count and act on.

img2dataset stores ``str(exception)`` per failed URL: thousands of distinct strings on a real crawl
(every host's DNS error differs). :func:`reason` maps each to one of :data:`REASONS`; the raw text
stays in ``download_error`` for people. The messages our own fetcher writes (``curate.download.fetch``)
start with a fixed prefix so they map without guessing.

Reasons:

- ``http_404``, ``http_429``, ``http_5xx``, ``http_other`` (any other HTTP error status);
- ``timeout`` (connect or read timed out, or the per-URL wall-clock deadline passed);
- ``redirect_loop`` (a redirect chain revisits a URL or exceeds the redirect limit);
- ``private_address`` (the host resolves only to addresses the policy refuses; never connected);
- ``noai_header`` (``X-Robots-Tag`` forbids use); ``too_large`` (body bytes or declared pixels over
  the limit: decompression bombs land here); ``empty_body``; ``truncated`` (the image ends early);
  ``not_an_image`` (HTML or text where an image should be); ``unsupported_format`` (an image format
  whose declared size cannot be checked before decoding, e.g. HEIC: refused, never decoded);
  ``decode_error`` (bytes that look like an image but do not decode);
- ``too_small``, ``bad_aspect_ratio`` (img2dataset's own size gates, off by default);
- ``dns_error``, ``connection_error``, ``ssl_error``, ``bad_url`` (malformed or non-http(s) URL);
- ``internal_error`` (a row img2dataset lost to an exception of its own; we add it back);
- ``other`` (anything unrecognised — the raw message says what).
"""

from __future__ import annotations

import re
from collections import Counter

SUCCESS = "success"
FAILED = "failed"

# Prefixes of the messages curate.download.fetch writes.
TOO_LARGE = "too large"
EMPTY_BODY = "empty body"
TRUNCATED = "truncated"
NOT_AN_IMAGE = "not an image"
UNSUPPORTED = "unsupported format"
BAD_HEADER = "bad image header"
DEADLINE = "timed out: url deadline"
LOST = "internal error: img2dataset wrote no row for this sample"

REASONS = (
    "http_404",
    "http_429",
    "http_5xx",
    "http_other",
    "timeout",
    "redirect_loop",
    "private_address",
    "noai_header",
    "too_large",
    "empty_body",
    "truncated",
    "not_an_image",
    "unsupported_format",
    "decode_error",
    "too_small",
    "bad_aspect_ratio",
    "dns_error",
    "connection_error",
    "ssl_error",
    "bad_url",
    "internal_error",
    "other",
)
TRANSIENT = ("timeout", "http_5xx", "http_429")

_HTTP = re.compile(r"HTTP Error (\d{3})")
# First match wins: more specific patterns come before the general ones they overlap with.
_RULES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("private_address", r"refused: private address"),
        ("redirect_loop", r"infinite loop|redirect(ion)? (loop|limit)|too many redirects"),
        ("noai_header", r"X-Robots-Tag"),
        ("too_large", r"^(<urlopen error )?too large|image area too large|decompression bomb"),
        ("empty_body", r"^empty body"),
        ("truncated", r"^truncated|IncompleteRead|premature end|image file is truncated"),
        ("not_an_image", r"^not an image"),
        ("unsupported_format", r"^unsupported format"),
        ("too_small", r"^image too small"),
        ("bad_aspect_ratio", r"^aspect ratio too large"),
        ("timeout", r"timed? ?out"),
        ("ssl_error", r"\bSSL\b|CERTIFICATE_VERIFY_FAILED|certificate"),
        (
            "dns_error",
            r"Name or service not known|nodename nor servname|Temporary failure in name resolution|"
            r"No address associated|getaddrinfo failed|\[Errno -[235]\]",
        ),
        (
            "bad_url",
            r"unknown url type|no host given|nonnumeric port|can't contain control characters|"
            r"Invalid URL|not allowed|URL has an invalid label|InvalidURL",
        ),
        (
            "connection_error",
            r"Connection (refused|reset|aborted)|Remote end closed|RemoteDisconnected|Network is unreachable|"
            r"No route to host|Broken pipe|BadStatusLine|LineTooLong|got more than|Errno",
        ),
        ("decode_error", r"decod|cannot identify image|unsupported|Invalid image|^bad image header"),
        ("internal_error", r"^internal error"),
    )
)


def reason(status: str | None, message: str | None) -> str | None:
    """The normalised reason for one row: ``None`` for a success, a name from :data:`REASONS` otherwise."""
    if status == SUCCESS:
        return None
    text = message or ""
    m = _HTTP.search(text)
    if m and "infinite loop" not in text and "redirection to url" not in text.lower():
        code = int(m.group(1))
        if code == 404:
            return "http_404"
        if code == 429:
            return "http_429"
        if 500 <= code <= 599:
            return "http_5xx"
        return "http_other"
    for name, pattern in _RULES:
        if pattern.search(text):
            return name
    return "other"


def reasons(statuses: list[str | None], messages: list[str | None]) -> list[str | None]:
    """:func:`reason` over two columns, caching by message (a crawl repeats a few messages many times)."""
    cache: dict[tuple[bool, str | None], str | None] = {}
    out = []
    for s, m in zip(statuses, messages, strict=True):
        k = (s == SUCCESS, m)
        r = cache.get(k, ...)
        if r is ...:
            r = cache[k] = reason(s, m)
        out.append(r)
    return out


def counts(column) -> Counter:
    """Rows per reason of a ``download_reason`` column (nulls, the successes, left out), counted in Arrow:
    no Python string per row."""
    import pyarrow.compute as pc

    vc = pc.value_counts(column.drop_null())
    return Counter(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True)))
