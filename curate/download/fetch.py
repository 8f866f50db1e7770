"""Fetch one URL the way img2dataset does, plus the guards it lacks.

:class:`Fetcher` is a drop-in for ``img2dataset.downloader.download_image_with_retry`` (same call,
same ``(key, stream | None, error)`` result), so img2dataset's shard loop, resizer and writer run
unchanged around it. On top of img2dataset's urllib fetch it:

- connects only to addresses the :class:`~curate.download.safety.AddressPolicy` permits, on every
  redirect hop, and follows at most ``max_redirects`` redirects of http(s) only;
- keeps img2dataset's ``X-Robots-Tag`` check (same function, same message);
- stops reading at ``max_image_bytes`` (``too large``) and at ``url_deadline`` seconds, so neither
  an endless body nor a server trickling one byte a second can hold a thread;
- looks at the bytes before the resizer does: empty bodies, HTML served as an image, images that
  end early (JPEG without its end marker after the last scan, PNG without IEND, a short WebP) and
  headers declaring more than ``max_pixels`` (decompression bombs) fail here with a message, so
  OpenCV never allocates for a bomb and a half JPEG is not stored as a grey-padded success;
- retries only transient failures (timeouts, 5xx, 429, connection resets), ``retries`` times.
"""

from __future__ import annotations

import io
import time
import urllib.request
import warnings

from PIL import Image

from curate.download import reasons
from curate.download.config import DownloadConfig
from curate.download.safety import AddressPolicy, build_opener

USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
NOAI_MESSAGE = "Use of image disallowed by X-Robots-Tag directive"  # img2dataset's own wording
CHUNK = 1 << 16
RETRYABLE = frozenset(reasons.TRANSIENT) | {"connection_error"}

# We compare declared sizes with max_pixels ourselves; PIL's warning would only be noise in the logs.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _is_disallowed(headers, token, directives) -> bool:
    from img2dataset.downloader import is_disallowed

    return is_disallowed(headers, token, directives)


def image_kind(body: bytes) -> str | None:
    """The image format the magic bytes announce, or None."""
    if body[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if body[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "webp"
    if body[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if body[:2] == b"BM":
        return "bmp"
    if body[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if body[4:8] == b"ftyp":
        return "isobmff"  # AVIF / HEIC
    return None


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
    """A failure message for bytes that must not reach the decoder, or None to let the resizer try."""
    if not body:
        return f"{reasons.EMPTY_BODY}: the server sent 0 bytes"
    kind = image_kind(body)
    if kind is None:
        head = body[:256].lstrip()
        ctype = (content_type or "").split(";")[0].strip().lower()
        if head[:1] == b"<" or ctype.startswith("text/") or ctype in ("application/json", "application/xml"):
            return f"{reasons.NOT_AN_IMAGE}: {ctype or 'untyped'} body starting {head[:24]!r}"
        return None  # unknown magic: OpenCV may still know the format
    problem = _truncation(kind, body)
    if problem:
        return f"{reasons.TRUNCATED}: {problem}"
    try:
        with Image.open(io.BytesIO(body)) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:
        return f"{reasons.TOO_LARGE}: decompression bomb ({e})"
    except Exception:  # noqa: BLE001 - PIL cannot read the header; OpenCV gets its chance
        return None
    if w * h > max_pixels:
        return f"{reasons.TOO_LARGE}: {w}x{h} = {w * h} pixels declared, limit {max_pixels}"
    return None


class Fetcher:
    """Callable as img2dataset's ``download_image_with_retry``; one per shard task (it holds an opener)."""

    def __init__(self, cfg: DownloadConfig, policy: AddressPolicy):
        self.cfg = cfg
        self.opener = build_opener(policy, cfg.max_redirects)

    def __call__(self, row, timeout, retries, user_agent_token, disallowed_header_directives):
        key, url = row
        err = None
        for _ in range(retries + 1):
            stream, err = self.fetch(url, timeout, user_agent_token, disallowed_header_directives)
            if stream is not None:
                return key, stream, None
            if reasons.reason(reasons.FAILED, err) not in RETRYABLE:
                break
        return key, None, err

    def fetch(self, url, timeout, user_agent_token, directives) -> tuple[io.BytesIO | None, str | None]:
        cfg = self.cfg
        agent = USER_AGENT
        if user_agent_token:
            agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
        deadline = time.monotonic() + cfg.url_deadline
        try:
            request = urllib.request.Request(url, data=None, headers={"User-Agent": agent})
            with self.opener.open(request, timeout=timeout) as r:
                if directives and _is_disallowed(r.headers, user_agent_token, directives):
                    return None, NOAI_MESSAGE
                declared = r.headers.get("Content-Length")
                if declared and declared.strip().isdigit() and int(declared) > cfg.max_image_bytes:
                    return None, f"{reasons.TOO_LARGE}: Content-Length {declared} > {cfg.max_image_bytes} bytes"
                ctype = r.headers.get("Content-Type")
                buf = io.BytesIO()
                while True:
                    if time.monotonic() > deadline:
                        return None, f"{reasons.DEADLINE} of {cfg.url_deadline:g} s passed"
                    chunk = r.read1(CHUNK)
                    if not chunk:
                        break
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
