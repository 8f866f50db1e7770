"""An image's format and size from its first bytes, without decoding a pixel.

:func:`sniff` recognises JPEG, PNG, WebP (lossy, lossless, extended) and GIF by their magic bytes and
reads the declared size from the header, so the decoder can refuse a decompression bomb before it
allocates anything. It returns ``(format, width, height)``, with ``None`` for a size it cannot read
(an unknown format, or a header cut short); the caller then takes the slower, fully checked path.
Only lengths are trusted here, and every read is bounds-checked: hostile headers give ``None``.
"""

from __future__ import annotations

import struct

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


def sniff(data: bytes) -> tuple[str | None, int | None, int | None]:
    """``(format, width, height)`` from the header; format is jpeg, png, webp, gif or None."""
    size: tuple[int, int] | None = None
    fmt: str | None = None
    if data[:3] == b"\xff\xd8\xff":
        fmt, size = "jpeg", _jpeg(data)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        fmt = "png"
        if len(data) >= 24 and data[12:16] == b"IHDR":
            size = struct.unpack_from(">II", data, 16)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt, size = "webp", _webp(data)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        fmt = "gif"
        if len(data) >= 10:
            size = struct.unpack_from("<HH", data, 6)
    if size is None:
        return fmt, None, None
    return fmt, int(size[0]), int(size[1])
