"""Images a crawl is full of that no one would call a photo, generated at a photo's size.

``junk(kind, rng, size, photo)`` makes one image of ``kind`` (an RGB PIL image of ``size``); ``photo``
is needed for the kinds made from a photo. Used by ``bench/quality_score.py`` against real photos and
by the tests of the no-model quality score.

- ``noise``: uniform, Gaussian or grey per-pixel noise;
- ``flat``: one colour with faint noise, or a soft two-tone gradient;
- ``tiny_upscale``: a photo shrunk to 6-12 px and blown back up (nearest, bilinear or bicubic);
- ``text``: a screenshot of dark text lines on a light background;
- ``compressed``: a photo saved at JPEG quality 1-7 (the grid of 8x8 blocks shows).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

KINDS = ("noise", "flat", "tiny_upscale", "text", "compressed")
WORDS = (
    "the quick brown fox jumps over a lazy dog price shipping click here terms privacy login account order "
    "total free download page menu search results cart checkout subscribe newsletter contact us"
).split()


def _noise(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    k = int(rng.integers(3))
    if k == 0:
        a = rng.integers(0, 256, (h, w, 3))
    elif k == 1:
        a = np.clip(rng.normal(128, 60, (h, w, 3)), 0, 255)
    else:
        a = np.repeat(rng.integers(0, 256, (h, w, 1)), 3, axis=2)
    return Image.fromarray(a.astype(np.uint8))


def _flat(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    c = rng.integers(0, 256, 3)
    if rng.random() < 0.5:
        a = np.full((h, w, 3), c) + rng.integers(-3, 4, (h, w, 1))
    else:
        c2 = np.clip(c + rng.integers(-40, 41, 3), 0, 255)
        t = np.linspace(0, 1, w)[None, :, None]
        a = c * (1 - t) + c2 * t + np.zeros((h, 1, 1))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _text(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    bg = tuple(int(v) for v in rng.integers(225, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 60, 3))
    im = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(im)
    size = max(6, int(h / rng.uniform(6, 14)))
    font = ImageFont.load_default(size=size)
    y = int(rng.integers(0, size))
    while y < h:
        line = " ".join(rng.choice(WORDS, int(rng.integers(3, 9))))
        draw.text((int(rng.integers(0, max(1, w // 10))), y), line, fill=fg, font=font)
        y += int(size * rng.uniform(1.2, 1.8))
    return im


def junk(kind: str, rng: np.random.Generator, size: tuple[int, int], photo: Image.Image | None = None) -> Image.Image:
    w, h = size
    if kind == "noise":
        return _noise(rng, w, h)
    if kind == "flat":
        return _flat(rng, w, h)
    if kind == "text":
        return _text(rng, w, h)
    if photo is None:
        raise ValueError(f"junk kind {kind!r} is made from a photo; pass one")
    photo = photo.convert("RGB").resize((w, h), Image.LANCZOS) if photo.size != (w, h) else photo.convert("RGB")
    if kind == "tiny_upscale":
        s = int(rng.integers(6, 13))
        tiny = photo.resize((s, max(1, round(s * h / w))), Image.BOX)
        return tiny.resize((w, h), (Image.NEAREST, Image.BILINEAR, Image.BICUBIC)[int(rng.integers(3))])
    if kind == "compressed":
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=int(rng.integers(1, 8)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    raise ValueError(f"unknown junk kind {kind!r}; known: {', '.join(KINDS)}")
