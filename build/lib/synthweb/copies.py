"""Near copies as the web makes them: resized, cropped, recompressed, re-toned, re-encoded.

One definition of "a near copy" shared by the synthetic web's ``near_dup`` kind, the real-photo dedup
benchmark (``bench/dedup_real.py``) and the tests, so a detector tuned on one is measured on the others
with the same transformations. Each family draws its parameters from the generator it is given:

- ``resize``: scale 0.5-1.5x, bilinear, bicubic or Lanczos;
- ``crop``: 1-10% off each side, drawn per side (so the shape changes by up to ~20%);
- ``jpeg``: JPEG at quality 30-95;
- ``tone``: brightness and contrast each scaled by 0.88-1.12;
- ``png`` / ``webp``: a lossless PNG, or a lossy WebP at quality 50-95, of the same pixels;
- ``combined``: resize, crop, tone and JPEG together (each drawn as above), the hardest case.

Families other than ``jpeg``, ``png``, ``webp`` and ``combined`` are stored as JPEG at quality 90, as a
site that re-serves an image would.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance

FAMILIES = ("resize", "crop", "jpeg", "tone", "png", "webp", "combined")
_FILTERS = (Image.BILINEAR, Image.BICUBIC, Image.LANCZOS)


def _resize(img: Image.Image, rng: np.random.Generator, min_side: int) -> Image.Image:
    s = float(np.exp(rng.uniform(np.log(0.5), np.log(1.5))))
    w, h = img.size
    size = (max(min_side, round(w * s)), max(min_side, round(h * s)))
    return img.resize(size, _FILTERS[int(rng.integers(len(_FILTERS)))])


def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    left, right, top, bottom = rng.uniform(0.01, 0.10, 4)
    # At least one pixel per side, so a 32 px image loses something on every side too.
    box = (
        max(1, round(w * left)),
        max(1, round(h * top)),
        w - max(1, round(w * right)),
        h - max(1, round(h * bottom)),
    )
    return img.crop(box)


def _tone(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.88, 1.12)))
    return ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.88, 1.12)))


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=6)
    else:
        img.save(buf, "WEBP", quality=quality, method=2)
    return buf.getvalue()


def near_copy(img: Image.Image, family: str, rng: np.random.Generator, min_side: int = 8) -> bytes:
    """The encoded bytes of a near copy of ``img`` (RGB) made by ``family`` (one of :data:`FAMILIES`)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown near-copy family {family!r}; known: {', '.join(FAMILIES)}")
    img = img.convert("RGB")
    fmt, quality = "jpeg", 90
    if family in ("resize", "combined"):
        img = _resize(img, rng, min_side)
    if family in ("crop", "combined"):
        img = _crop(img, rng)
    if family in ("tone", "combined"):
        img = _tone(img, rng)
    if family in ("jpeg", "combined"):
        quality = int(rng.integers(30, 96))
    elif family == "png":
        fmt = "png"
    elif family == "webp":
        fmt, quality = "webp", int(rng.integers(50, 96))
    return _encode(img, fmt, quality)
