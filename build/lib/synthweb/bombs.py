"""Small files declaring huge images, one per format a decoder might accept: test material.

:func:`bomb` builds a real, tiny image with PIL (or by hand where PIL cannot write the format) and
rewrites the size fields of its header, so every parser reads ``width`` x ``height`` while the file
stays a few hundred bytes — the shape of a decompression bomb. A decoder that trusts the header
allocates ``width * height`` pixels before it finds out the data is short. ``FORMATS`` lists them;
``tests/test_download.py`` and ``bench/hostile.py`` check that each is refused before decoding.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

W, H = 8000, 6000  # 48 Mpx: over the default max_pixels (40 M), and what a 682-byte JPEG 2000 once declared


def _pil(fmt: str, mode: str = "RGB", size=(8, 8), **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 30) if mode == "RGB" else 128).save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png(w: int = W, h: int = H) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 4096, 9))
        + _chunk(b"IEND", b"")
    )


def jpeg(w: int = W, h: int = H) -> bytes:
    data = bytearray(_pil("JPEG"))
    i = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, i + 5, h, w)
    return bytes(data)


def webp(w: int = W, h: int = H) -> bytes:
    data = bytearray(_pil("WEBP", quality=50))
    assert data[12:16] == b"VP8 "
    struct.pack_into("<HH", data, 26, w & 0x3FFF, h & 0x3FFF)
    return bytes(data)


def gif(w: int = W, h: int = H) -> bytes:
    data = bytearray(_pil("GIF", "L"))
    struct.pack_into("<HH", data, 6, w, h)  # logical screen
    i = data.index(b",", 13)  # first image descriptor: the frame every decoder draws
    struct.pack_into("<HH", data, i + 5, w, h)
    return bytes(data)


def bmp(w: int = W, h: int = H) -> bytes:
    data = bytearray(_pil("BMP"))
    struct.pack_into("<ii", data, 18, w, h)
    return bytes(data)


def tiff(w: int = W, h: int = H) -> bytes:
    data = bytearray(_pil("TIFF"))
    (ifd,) = struct.unpack_from("<I", data, 4)
    (n,) = struct.unpack_from("<H", data, ifd)
    for k in range(n):
        at = ifd + 2 + 12 * k
        tag = struct.unpack_from("<H", data, at)[0]
        if tag in (256, 257):  # ImageWidth, ImageLength, rewritten as LONG
            struct.pack_into("<HHII", data, at, tag, 4, 1, w if tag == 256 else h)
    return bytes(data)


def jpeg2000(w: int = W, h: int = H) -> bytes:
    data = bytearray(_pil("JPEG2000", "L"))
    i = data.index(b"ihdr")
    struct.pack_into(">II", data, i + 4, h, w)
    j = data.index(b"\xff\x51")  # SIZ: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz
    struct.pack_into(">II", data, j + 6, w, h)
    struct.pack_into(">II", data, j + 22, w, h)
    return bytes(data)


def ico(w: int = W, h: int = H) -> bytes:
    """An icon whose one PNG entry declares w x h (the directory says 256 x 256)."""
    entry = png(w, h)
    head = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(entry), 22)
    return head + entry


def psd(w: int = W, h: int = H, pixels: int = 64) -> bytes:
    """A raw 8-bit RGB Photoshop file (PIL cannot write PSD) with ``pixels`` bytes of image data."""
    head = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)
    return head + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + b"\x80" * pixels


def avif(w: int = W, h: int = H) -> bytes:
    data = bytearray(_pil("AVIF", quality=50))
    i = data.index(b"ispe")
    struct.pack_into(">II", data, i + 8, w, h)  # after the box's version and flags
    return bytes(data)


def heic() -> bytes:
    """The start of a HEIC file: a format no decoder here checks the size of."""
    return struct.pack(">I", 24) + b"ftypheic" + struct.pack(">I", 0) + b"mif1heic" + b"\0" * 64


def ppm(w: int = W, h: int = H) -> bytes:
    """A binary PPM: OpenCV decodes it, nothing checks its size, so it must be refused."""
    return f"P6\n{w} {h}\n255\n".encode() + b"\0" * 64


FORMATS = {
    "png": png,
    "jpeg": jpeg,
    "webp": webp,
    "gif": gif,
    "bmp": bmp,
    "tiff": tiff,
    "jpeg2000": jpeg2000,
    "ico": ico,
    "psd": psd,
    "avif": avif,
}
UNCHECKABLE = {"heic": heic, "ppm": ppm}


def bomb(fmt: str, w: int = W, h: int = H) -> bytes:
    """A small ``fmt`` file declaring ``w`` x ``h`` pixels."""
    if fmt in UNCHECKABLE:
        return UNCHECKABLE[fmt]()
    return FORMATS[fmt](w, h)


def sample(fmt: str) -> bytes:
    """A genuine small ``fmt`` image (64 x 48), for checking that the formats we accept still pass."""
    if fmt == "psd":
        return psd(64, 48, 3 * 64 * 48)
    if fmt == "ico":
        return _pil("ICO", size=(48, 48))
    mode = "L" if fmt == "jpeg2000" else "RGB"
    return _pil({"jpeg2000": "JPEG2000"}.get(fmt, fmt.upper()), mode, (64, 48))
