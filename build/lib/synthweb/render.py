"""Procedural images of concepts (a shape in a colour), with controlled nuisance.

A concept is ``(colour, shape)``; nuisance is position, scale, rotation, texture (plain, striped,
dotted), background tone and clutter, and the hue/brightness jitter of the colour. Everything is
drawn from the ``numpy.random.Generator`` passed in, so the same generator state gives the same
pixels. The shapes and colours are chosen to be easy to tell apart at 32-64 px, so that a tiny
CLIP learns them on a laptop CPU in minutes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 205, 30),
    "purple": (140, 50, 180),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
TEXTURES = ("plain", "striped", "dotted")


@dataclass(frozen=True)
class Concept:
    colour: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def all_concepts(colours=tuple(COLOURS), shapes=SHAPES) -> list[Concept]:
    return [Concept(c, s) for s in shapes for c in colours]


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        angles = [math.pi / 4 + k * math.pi / 2 for k in range(4)]
        radii = [r] * 4
    elif shape == "triangle":
        angles = [-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        radii = [r * 1.15] * 3
    elif shape == "star":
        angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
        radii = [r * 1.15 if k % 2 == 0 else r * 0.48 for k in range(10)]
    elif shape == "cross":
        w = 0.36
        pts = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
        angles = [math.atan2(y, x) for x, y in pts]
        radii = [r * math.hypot(x, y) / 1.15 for x, y in pts]
    else:
        raise ValueError(f"no polygon for {shape!r}")
    return [(cx + rr * math.cos(a + rot), cy + rr * math.sin(a + rot)) for a, rr in zip(angles, radii, strict=True)]


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    out = np.clip(np.asarray(rgb) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return tuple(int(v) for v in out)


def render(
    concept: Concept,
    rng: np.random.Generator,
    size: tuple[int, int],
    texture: str | None = None,
    clutter: bool = True,
) -> Image.Image:
    """Draw ``concept`` on a ``size = (width, height)`` canvas."""
    w, h = size
    # A grey gradient in a random direction plus grey clutter: low-frequency structure that differs
    # from image to image (so distinct images get distant perceptual hashes, as photos do) and
    # carries no hue, so the colour that names the concept stays the only colour in the picture.
    light = rng.random() < 0.7
    tone = int(rng.integers(150, 235)) if light else int(rng.integers(30, 100))
    other = int(np.clip(tone + rng.integers(-90, 91), 0, 255))
    angle = float(rng.uniform(0, 2 * np.pi))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xs * np.cos(angle) + ys * np.sin(angle)) / max(w, h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    grey = tone + (other - tone) * t
    tint = rng.integers(-6, 7, size=3)
    arr = np.clip(grey[..., None] + tint, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    side = min(w, h)
    if clutter:
        # Strokes and blobs in greys: background structure that carries no concept signal.
        for _ in range(int(rng.integers(3, 9))):
            g = int(np.clip(tone + rng.integers(-80, 80), 0, 255))
            x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, 1, 4) * [w, h, w, h])
            if rng.random() < 0.5:
                draw.line([(x0, y0), (x1, y1)], fill=(g, g, g), width=max(1, int(side * rng.uniform(0.01, 0.04))))
            else:
                rr = side * float(rng.uniform(0.03, 0.14))
                draw.ellipse([x0 - rr, y0 - rr, x0 + rr, y0 + rr], fill=(g, g, g))

    r = side * float(rng.uniform(0.22, 0.38))
    cx = float(rng.uniform(r, w - r)) if w > 2 * r else w / 2
    cy = float(rng.uniform(r, h - r)) if h > 2 * r else h / 2
    rot = float(rng.uniform(-0.35, 0.35))
    colour = _jitter(COLOURS[concept.colour], rng, 18)

    mask = Image.new("L", (w, h), 0)
    mdraw = ImageDraw.Draw(mask)
    if concept.shape == "circle":
        mdraw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        mdraw.polygon(_polygon(concept.shape, cx, cy, r, rot), fill=255)

    texture = texture or TEXTURES[int(rng.integers(len(TEXTURES)))]
    fill = Image.new("RGB", (w, h), colour)
    if texture != "plain":
        # Pattern in a darker shade of the same colour: the hue, which names the concept, survives.
        shade = tuple(int(v * 0.55) for v in colour)
        fdraw = ImageDraw.Draw(fill)
        step = max(4, int(r / 3))
        if texture == "striped":
            for x in range(-h, w + h, step):
                fdraw.line([(x, 0), (x + h, h)], fill=shade, width=max(1, step // 3))
        else:
            dot = max(1, step // 4)
            for y in range(step // 2, h, step):
                for x in range(step // 2, w, step):
                    fdraw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=shade)
    img.paste(fill, (0, 0), mask)
    return img


def blank(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A near-blank image: one flat tone with faint noise, the kind of placeholder crawls are full of."""
    w, h = size
    tone = int(rng.integers(0, 256))
    arr = np.full((h, w, 3), tone, np.int16) + rng.integers(-2, 3, size=(h, w, 1))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """Encode to JPEG, PNG or WebP bytes; deterministic for the same pixels and settings."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=6)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=quality, method=2)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buf.getvalue()


CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
