"""Fetch one URL the way img2dataset does, plus the guards it lacks.

:class:`Fetcher` is a drop-in for ``img2dataset.downloader.download_image_with_retry`` (same call,
same ``(key, stream | None, error)`` result), so img2dataset's shard loop, resizer and writer run
unchanged around it. On top of img2dataset's urllib fetch it:

- connects only to addresses the :class:`~curate.download.safety.AddressPolicy` permits, on every
  redirect hop, and follows at most ``max_redirects`` redirects of http(s) only;
- keeps img2dataset's ``X-Robots-Tag`` check (same function, same message), on every redirect hop
  too: a ``noai`` on a hop is not undone by a final response that lacks it;
- ends every URL within ``url_deadline`` seconds of wall-clock time, retries included, whatever the
  server does — DNS, connect, TLS, status line, headers or body at one byte a second
  (:mod:`~curate.download.deadline`) — and stops reading at ``max_image_bytes`` (``too large``);
- looks at the bytes before the resizer does: empty bodies, HTML served as an image, images that
  end early (JPEG without its end marker after the last scan, PNG without IEND, a short WebP), and
  through :func:`curate.core.imagecheck.check` formats whose size cannot be checked and headers declaring
  more than ``max_pixels`` in any accepted format (JPEG 2000, TIFF, GIF, BMP, ICO, PSD, AVIF as much
  as JPEG, PNG, WebP) fail here with a message, so OpenCV never allocates for a bomb and a half JPEG
  is not stored as a grey-padded success;
- retries only transient failures (timeouts, 5xx, 429, connection resets), ``retries`` times.
"""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request

from curate.core import imagecheck
from curate.download import reasons
from curate.download.config import DownloadConfig
from curate.download.deadline import Watchdog
from curate.download.safety import AddressPolicy, build_opener

USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
NOAI_MESSAGE = "Use of image disallowed by X-Robots-Tag directive"  # img2dataset's own wording
CHUNK = 1 << 16
RETRYABLE = frozenset(reasons.TRANSIENT) | {"connection_error"}
# imagecheck's refusals as download messages (the prefixes reasons.py maps).
_REFUSALS = {
    "empty": reasons.EMPTY_BODY,
    "not_an_image": reasons.NOT_AN_IMAGE,
    "unsupported_format": reasons.UNSUPPORTED,
    "too_many_pixels": reasons.TOO_LARGE,
    "truncated": reasons.TRUNCATED,
    "decode_failed": reasons.BAD_HEADER,
}


def _truncation(kind: str, body: bytes) -> str | None:
    if kind == "jpeg":
        # An embedded EXIF thumbnail has its own end marker, so the end must follow the last scan.
        sos = body.rfind(b"\xff\xda")
        if body.rfind(b"\xff\xd9") < max(sos, 2):
            return "JPEG ends before its end-of-image marker"
    elif kind == "png":
        if b"IEND" not in body[-64:] and b"IEND" not in body:
            return "PNG ends before its IEND chunk"
    elif kind == "webp":
        declared = int.from_bytes(body[4:8], "little") + 8
        if len(body) < declared:
            return f"WebP declares {declared} bytes, got {len(body)}"
    return None


def inspect_body(body: bytes, content_type: str | None, max_pixels: int) -> str | None:
    """A failure message for bytes that must not reach the decoder, or None to let the resizer decode them."""
    kind = imagecheck.image_format(body)
    ctype = (content_type or "").split(";")[0].strip().lower()
    if body and kind is None and (ctype.startswith("text/") or ctype in ("application/json", "application/xml")):
        return f"{reasons.NOT_AN_IMAGE}: {ctype} body starting {body[:24]!r}"
    if kind in ("jpeg", "png", "webp"):
        problem = _truncation(kind, body)
        if problem:
            return f"{reasons.TRUNCATED}: {problem}"
    try:
        imagecheck.check(body, max_pixels)
    except imagecheck.Refused as e:
        return f"{_REFUSALS[e.reason]}: {e.detail}"
    return None


class Fetcher:
    """Callable as img2dataset's ``download_image_with_retry``; one per shard task (it holds an opener
    and the watchdog thread that enforces ``url_deadline``). ``close()`` stops the watchdog."""

    def __init__(self, cfg: DownloadConfig, policy: AddressPolicy):
        self.cfg = cfg
        self.opener = build_opener(policy, cfg.max_redirects)
        self.watchdog = Watchdog()
        # img2dataset's own X-Robots-Tag parser; imported here, since a first import inside a URL's
        # deadline (img2dataset pulls in albumentations) can take seconds.
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        from img2dataset.downloader import is_disallowed

        self._is_disallowed = is_disallowed

    def close(self) -> None:
        self.watchdog.close()

    def __call__(self, row, timeout, retries, user_agent_token, disallowed_header_directives):
        key, url = row
        err = None
        with self.watchdog.deadline(self.cfg.url_deadline) as deadline:
            for _ in range(retries + 1):
                stream, err = self.fetch(url, timeout, user_agent_token, disallowed_header_directives)
                if deadline.fired:  # whatever the cut-off read returned, the URL ran out of time
                    return key, None, deadline.message()
                if stream is not None:
                    return key, stream, None
                if reasons.reason(reasons.FAILED, err) not in RETRYABLE or deadline.passed:
                    break
        return key, None, err

    def fetch(self, url, timeout, user_agent_token, directives) -> tuple[io.BytesIO | None, str | None]:
        cfg = self.cfg
        agent = USER_AGENT
        if user_agent_token:
            agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"

        def check_hop(headers, hop_url):
            if directives and self._is_disallowed(headers, user_agent_token, directives):
                raise urllib.error.URLError(f"{NOAI_MESSAGE} (on the redirect from {hop_url})")

        try:
            request = urllib.request.Request(url, data=None, headers={"User-Agent": agent})
            request.check_hop = check_hop
            with self.opener.open(request, timeout=timeout) as r:
                if directives and self._is_disallowed(r.headers, user_agent_token, directives):
                    return None, NOAI_MESSAGE
                declared = r.headers.get("Content-Length")
                if declared and declared.strip().isdigit() and int(declared) > cfg.max_image_bytes:
                    return None, f"{reasons.TOO_LARGE}: Content-Length {declared} > {cfg.max_image_bytes} bytes"
                ctype = r.headers.get("Content-Type")
                buf = io.BytesIO()
                while chunk := r.read1(CHUNK):
                    buf.write(chunk)
                    if buf.tell() > cfg.max_image_bytes:
                        return None, f"{reasons.TOO_LARGE}: body over {cfg.max_image_bytes} bytes"
        except Exception as e:  # noqa: BLE001 - img2dataset's contract: every failure is a message
            return None, str(e) or type(e).__name__
        body = buf.getvalue()
        problem = inspect_body(body, ctype, cfg.max_pixels)
        if problem:
            return None, problem
        buf.seek(0)
        return buf, None
