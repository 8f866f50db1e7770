"""One check before any decoder sees image bytes: the format is one we accept and its declared size fits.

Every decoder that sees pool bytes — the downloader's (OpenCV, inside img2dataset), annotate's
(OpenCV or PIL) and the trainer's (PIL) — calls :func:`check` (or :func:`open_image`, which also
opens the image lazily with PIL) first. It reads the format from the magic bytes and the declared
size from the header, without decoding a pixel, and raises :class:`Refused` with a short reason:

- ``empty``; ``not_an_image`` (markup, text, bytes of no image format we accept);
  ``unsupported_format`` (an image format whose size we do not check, so no decoder may try it:
  HEIC, PPM, Radiance HDR, OpenEXR, JPEG XL, EPS, ...);
- ``too_many_pixels`` (width × height over the caller's limit: a decompression bomb);
- ``truncated`` / ``decode_failed`` (a header cut short or impossible).

Accepted formats and where their size comes from:

- JPEG (first start-of-frame), PNG (IHDR), WebP (VP8 / VP8L / VP8X canvas): parsed here, bounds
  checked, no PIL (they are nearly all of the pool, and this path is hot);
- GIF (logical screen, grown to the first frame's extent as every decoder does), BMP, TIFF and
  BigTIFF (first page: the one decoders read), JPEG 2000 (JP2 and raw codestream), PSD, AVIF:
  PIL's header parsers, through a lazy ``Image.open`` restricted to that one format, so no other
  PIL plugin (EPS, which runs Ghostscript; FITS; ...) ever sees hostile bytes;
- ICO: every entry of the directory, PNG and BMP entries by their own headers, since PIL decodes
  the largest entry while opening and an entry may declare far more than the directory says.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image

# The format names of this module, and the PIL plugin each may be opened with.
PIL_FORMATS = {
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
    "jpeg2000": "JPEG2000",
    "ico": "ICO",
    "psd": "PSD",
    "avif": "AVIF",
}
REASONS = ("empty", "not_an_image", "unsupported_format", "too_many_pixels", "truncated", "decode_failed")

# We compare declared sizes with the caller's limit; PIL's own warning would only be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class Refused(ValueError):
    """Bytes no decoder may try; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int


# JPEG start-of-frame markers (baseline, progressive, lossless, ...): all SOFn except DHT, JPG, DAC.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, TEM carry no segment length
_JPEG_SCAN_LIMIT = 1 << 20  # give up looking for the frame header after 1 MiB of metadata


def _jpeg(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n and i < _JPEG_SCAN_LIMIT:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        (length,) = struct.unpack_from(">H", data, i + 2)
        if marker in _SOF:
            if i + 9 > n:
                return None
            h, w = struct.unpack_from(">HH", data, i + 5)
            return w, h
        if length < 2:
            return None
        i += 2 + length
    return None


def _png(data: bytes) -> tuple[int, int] | None:
    if len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack_from(">II", data, 16)
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack_from("<HH", data, 26)
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        b0, b1, b2, b3 = data[21:25]
        return 1 + (((b1 & 0x3F) << 8) | b0), 1 + (((b3 & 0x0F) << 10) | (b2 << 2) | ((b1 & 0xC0) >> 6))
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    return None


def _ico(data: bytes) -> tuple[int, int] | None:
    """The largest size any entry declares, reading PNG and BMP entries' own headers."""
    if len(data) < 6:
        return None
    (count,) = struct.unpack_from("<H", data, 4)
    if count == 0 or len(data) < 6 + 16 * count:
        return None
    best = (0, 0)
    for k in range(count):
        w, h = data[6 + 16 * k] or 256, data[7 + 16 * k] or 256
        size, offset = struct.unpack_from("<II", data, 6 + 16 * k + 8)
        entry = data[offset : offset + min(size, 64)]
        if entry[:8] == b"\x89PNG\r\n\x1a\n":
            got = _png(entry)
            if got is None:
                return None
            w, h = got
        elif len(entry) >= 12:
            dib_w, dib_h = struct.unpack_from("<ii", entry, 4)  # BITMAPINFOHEADER; height counts the mask too
            w, h = max(w, abs(dib_w)), max(h, abs(dib_h) // 2)
        if w * h > best[0] * best[1]:
            best = (w, h)
    return best


def _isobmff(data: bytes) -> str | None:
    """``avif`` for an AVIF file, ``heif`` for other HEIF brands, None for other ISO media."""
    (box,) = struct.unpack_from(">I", data, 0)
    brands = {data[i : i + 4] for i in range(8, min(max(box, 16), len(data), 256), 4)} - {data[12:16]}
    if brands & {b"avif", b"avis"}:
        return "avif"
    if brands & {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}:
        return "heif"
    return None


def image_format(data: bytes) -> str | None:
    """The format the magic bytes announce (a key of :data:`PIL_FORMATS`, or ``heif``), or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or data[:4] == b"\xff\x4f\xff\x51":
        return "jpeg2000"
    if data[:4] == b"\x00\x00\x01\x00":
        return "ico"
    if data[:4] == b"8BPS":
        return "psd"
    if data[4:8] == b"ftyp" and len(data) >= 16:
        return _isobmff(data)
    return None


_PARSERS = {"jpeg": _jpeg, "png": _png, "webp": _webp}


def sniff(data: bytes) -> tuple[str | None, int | None, int | None]:
    """``(format, width, height)`` from the header, parsed here (no PIL); None where it cannot tell."""
    fmt = image_format(data)
    parse = _PARSERS.get(fmt) or (_ico if fmt == "ico" else None)
    size = parse(data) if parse else None
    if fmt == "gif" and len(data) >= 10:
        size = struct.unpack_from("<HH", data, 6)
    if size is None:
        return fmt, None, None
    return fmt, int(size[0]), int(size[1])


def _lazy_open(data: bytes, fmt: str) -> Image.Image:
    """PIL's header parse for this one format; nothing decoded (ICO is checked before it gets here)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(data), formats=[PIL_FORMATS[fmt]])
    except Image.DecompressionBombError as e:
        raise Refused("too_many_pixels", str(e)) from None
    except Exception as e:  # noqa: BLE001 - hostile headers raise anything; all mean "do not decode"
        msg = str(e) or type(e).__name__
        truncated = isinstance(e, EOFError) or "truncat" in msg.lower() or "not enough data" in msg.lower()
        raise Refused("truncated" if truncated else "decode_failed", f"{fmt} header: {msg}") from None


# Image formats some decoder here would read (OpenCV decodes PPM, PFM, HDR, EXR) but whose size we do
# not check: refused by name. Bytes of no known image format are "not_an_image".
_UNCHECKED = (
    ((b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7", b"PF", b"Pf"), "PNM/PFM"),
    ((b"#?RADIANCE", b"#?RGBE"), "Radiance HDR"),
    ((b"v/1\x01",), "OpenEXR"),
    ((b"qoif",), "QOI"),
    ((b"\xff\x0a", b"\x00\x00\x00\x0cJXL "), "JPEG XL"),
    ((b"%!PS", b"\xc5\xd0\xd3\xc6"), "PostScript/EPS"),
    ((b"\x59\xa6\x6a\x95",), "Sun raster"),
)


def _refuse_unknown(data: bytes, fmt: str | None) -> None:
    if not data:
        raise Refused("empty", "0 bytes")
    if fmt == "heif":
        raise Refused("unsupported_format", "HEIF/HEIC, a format whose declared size is not checked here")
    if fmt is None:
        for magics, name in _UNCHECKED:
            if data.startswith(magics):
                raise Refused("unsupported_format", f"{name}, a format whose declared size is not checked here")
        head = data[:256].lstrip()
        what = f"text starting {head[:24]!r}" if head[:1] in (b"<", b"{", b"[") else f"magic bytes {data[:8].hex()}"
        raise Refused("not_an_image", f"no image format we accept ({what})")


def _fits(fmt: str, w: int, h: int, max_pixels: int) -> Header:
    if w <= 0 or h <= 0:
        raise Refused("decode_failed", f"{fmt} declares {w}x{h} pixels")
    if w * h > max_pixels:
        raise Refused("too_many_pixels", f"{fmt} declares {w}x{h} = {w * h} pixels, limit {max_pixels}")
    return Header(fmt, w, h)


def check(data: bytes, max_pixels: int) -> Header:
    """The format and declared size of ``data``, or :class:`Refused` (see the module doc)."""
    fmt = image_format(data)
    _refuse_unknown(data, fmt)
    _, w, h = sniff(data)
    if fmt in ("jpeg", "png", "webp", "ico"):
        if w is None or h is None:
            if fmt == "ico":
                raise Refused("truncated", "ico directory cut short or malformed")
            # A header we cannot read: PIL gets one look at it, for its message, and decodes nothing.
            with _lazy_open(data, fmt) as im:
                w, h = im.size
        return _fits(fmt, w, h, max_pixels)
    with _lazy_open(data, fmt) as im:
        return _fits(fmt, *im.size, max_pixels)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """A lazily opened PIL image whose format and declared size passed :func:`check`; ``Refused`` otherwise.

    Decode with ``.load()`` / ``.convert()``; the caller handles decoder errors on the pixels themselves.
    """
    header = check(data, max_pixels)
    img = _lazy_open(data, header.format)
    if img.size[0] * img.size[1] > max_pixels:  # PIL and our parser disagree: believe the larger
        img.close()
        raise Refused("too_many_pixels", f"{header.format} opens as {img.size[0]}x{img.size[1]} pixels")
    return img
