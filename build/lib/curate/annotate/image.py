"""Image signals from one decode: size, format, blank share, sharpness, entropy, hashes.

:func:`decode` turns bytes into an RGB array or a short reason (``empty``, ``not_an_image``,
``unsupported_format``, ``too_many_pixels``, ``truncated``, ``decode_failed``); it never raises on bad
bytes. Format and pixel count are checked from the header before any pixel is decoded, by the one
check every decoder shares (:mod:`curate.core.imagecheck`), so a 200-byte PNG declaring 10^10 pixels or a
682-byte JPEG 2000 declaring 8000x6000 is refused without allocating them.
:func:`measure` computes every signal from that one decoded array.

Definitions (what the numbers mean, so thresholds can be chosen):

- ``blank_share``: share of pixels within ``BLANK_TOLERANCE`` (per channel, of 255) of the dominant
  colour (the centre of the fullest 16-level colour bin), measured on a thumbnail of at most
  ``THUMB`` px a side. A flat placeholder is ~1.0.
- ``sharpness``: variance of the 3x3 Laplacian of the grey image at its own resolution.
- ``entropy``: Shannon entropy of the 256-bin grey histogram, in bits (0 to 8).
- ``phash``: the classic 64-bit DCT hash: grey, area-resized to 32x32, 2-D DCT, the 8x8 lowest
  frequencies compared with their median; bit 63 is coefficient (0, 0), row-major after it.
- ``pixel_hash``: SHA-1 of the decoded RGB pixels and their shape, so the same pixels stored as PNG
  and as lossless WebP get the same value (``sha256`` only matches identical bytes).
- ``thumb``: the whole image area-resized (aspect not kept) to 16x16 RGB, then to 32x32 grey: 768 +
  1024 bytes, row-major; near-copy dedup aligns the colour one and compares both
  (:mod:`curate.dedup.copies`).
- ``contrast``, ``effective_side``, ``palette_share``, ``blockiness``: what tells a photo from noise,
  flat colour, a tiny upscale, a text screenshot or a JPEG at quality 5 (:mod:`~curate.annotate.artefacts`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from curate.annotate import artefacts
from curate.core.imagecheck import Refused, check, open_image

# Above this PIL raises DecompressionBombError on open; we refuse earlier, with our own limit.
DEFAULT_MAX_PIXELS = 64_000_000
THUMB = 64
THUMB_SIDE = 16  # colour thumbnail side
DETAIL_SIDE = 32  # grey thumbnail side
BLANK_TOLERANCE = 12


@dataclass
class Decoded:
    """A decoded image: RGB pixels (H, W, 3) uint8 and its format; ``image`` is a PIL view of them."""

    pixels: np.ndarray
    format: str
    _image: Image.Image | None = None

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            self._image = Image.fromarray(self.pixels)
        return self._image


# OpenCV decodes these 1-3x faster than PIL; the stored orientation is kept (EXIF ignored), as PIL does.
_FAST = {"jpeg", "png", "webp"}
_CV_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def decode(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Decoded | None, str | None]:
    """``(Decoded, None)`` or ``(None, reason)``; never raises for bad bytes.

    JPEG, PNG and WebP go through OpenCV once their header is checked; the other accepted formats,
    and anything OpenCV refuses, go through PIL, which names the problem.
    """
    try:
        header = check(data or b"", max_pixels)
    except Refused as e:
        return None, e.reason
    if header.format in _FAST:
        try:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _CV_FLAGS)
        except cv2.error:
            bgr = None
        if bgr is not None and bgr.ndim == 3 and bgr.shape[:2] == (header.height, header.width):
            return Decoded(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), header.format), None
    return _decode_pil(data, max_pixels)


def _decode_pil(data: bytes, max_pixels: int) -> tuple[Decoded | None, str | None]:
    try:
        img = open_image(data, max_pixels)
        fmt = (img.format or "unknown").lower()
        img.load()  # the first frame of an animation is the image we keep
        if img.mode != "RGB":
            img = img.convert("RGB")
        pixels = np.asarray(img)
    except Refused as e:
        return None, e.reason
    except Image.DecompressionBombError:
        return None, "too_many_pixels"
    except (OSError, SyntaxError, ValueError) as e:
        # PIL reports a cut-off file as OSError("image file is truncated ...") or a broken stream.
        msg = str(e).lower()
        return None, "truncated" if "truncat" in msg or "broken data stream" in msg else "decode_failed"
    except Exception:  # noqa: BLE001 - a hostile file must never take a worker down
        return None, "decode_failed"
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        return None, "decode_failed"
    return Decoded(pixels, fmt, img), None


@dataclass
class ImageSignals:
    width: int
    height: int
    aspect: float
    blank_share: float
    sharpness: float
    entropy: float
    phash: int
    pixel_hash: str
    thumb: bytes
    contrast: float
    effective_side: float
    palette_share: float
    blockiness: float


def measure(pixels: np.ndarray) -> ImageSignals:
    """Every pixel-derived signal of one RGB uint8 image."""
    h, w = pixels.shape[:2]
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    thumb64 = artefacts.small(pixels)
    hist = artefacts.colour_hist(thumb64)
    return ImageSignals(
        width=w,
        height=h,
        aspect=max(w, h) / min(w, h),
        blank_share=blank_share(thumb64, hist),
        sharpness=sharpness(grey),
        entropy=entropy(grey),
        phash=phash(grey),
        pixel_hash=pixel_hash(pixels),
        thumb=thumbnail(pixels, grey),
        contrast=artefacts.contrast(grey),
        effective_side=artefacts.effective_side(grey),
        palette_share=artefacts.palette_share(thumb64, hist),
        blockiness=artefacts.blockiness(grey),
    )


def blank_share(pixels: np.ndarray, hist: np.ndarray | None = None) -> float:
    """Share of pixels near the dominant colour (``hist``: ``artefacts.colour_hist`` of ``pixels`` when
    the caller has it)."""
    pixels = artefacts.small(pixels, THUMB)
    # The dominant colour is the fullest of 16x16x16 colour bins; a tolerance of 12 around the bin's
    # centre covers the bin (+-8) and a little noise, even for a flat tone that straddles two bins.
    hist = artefacts.colour_hist(pixels) if hist is None else hist
    _, _, _, (col, row) = cv2.minMaxLoc(hist.reshape(16, 256))
    centre = (row * 16 + 8, (col // 16) * 16 + 8, (col % 16) * 16 + 8)
    lo = np.array([max(0, c - BLANK_TOLERANCE) for c in centre], np.uint8)
    hi = np.array([min(255, c + BLANK_TOLERANCE) for c in centre], np.uint8)
    inside = cv2.inRange(pixels, lo, hi)
    return cv2.countNonZero(inside) / inside.size


def sharpness(grey: np.ndarray) -> float:
    _, std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F))
    return float(std[0, 0] ** 2)


def entropy(grey: np.ndarray) -> float:
    hist = cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel()
    p = hist[hist > 0] / grey.size
    return float(-(p * np.log2(p)).sum())


def phash(grey: np.ndarray) -> int:
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    mid = np.partition(low, (31, 32))
    bits = low > (mid[31] + mid[32]) / 2  # above the median of the 64 coefficients
    return int(np.packbits(bits).view(">u8")[0])


def thumbnail(pixels: np.ndarray, grey: np.ndarray | None = None) -> bytes:
    """16 px colour and 32 px grey thumbnails, as one byte string (``grey``: the image in grey, when the
    caller has it)."""
    colour = cv2.resize(pixels, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if grey is None else grey
    grey = cv2.resize(grey, (DETAIL_SIDE, DETAIL_SIDE), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(colour, np.uint8).tobytes() + np.ascontiguousarray(grey, np.uint8).tobytes()


def pixel_hash(pixels: np.ndarray) -> str:
    h = hashlib.sha1(f"{pixels.shape[0]}x{pixels.shape[1]}:".encode())
    h.update(np.ascontiguousarray(pixels).data)
    return h.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
