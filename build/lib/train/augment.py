"""Decoding and augmentation of one sample: image bytes to a uint8 tensor, caption to an augmented caption.

Everything here runs in loader workers and draws from the generators it is handed, so a sample's
augmentation is a function of its seed alone (what makes resume exact). Images leave as uint8
``(3, H, W)``; the training loop normalises whole batches on the device, which keeps the tensors
crossing from workers four times smaller than float ones.

Hostile bytes are the caller's to catch: :func:`decode_image` raises on anything it cannot or
should not decode (truncated files, HTML, decompression bombs), and the loader skips and counts.
"""

from __future__ import annotations

import math
import random
import re

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from curate.core.imagecheck import open_image
from train.config import ImageAug, TextAug

# Refuse before decoding: a 200-byte PNG can declare 10^10 pixels.
MAX_PIXELS = 40_000_000

STOPWORDS = frozenset(
    "a an the of on in at to and or is are was were be been with for by from this that these those it its "
    "as into onto over under one some my your our their".split()
)


def decode_image(data: bytes, min_side: int | None = None) -> Image.Image:
    """RGB image from encoded bytes. With ``min_side``, JPEGs decode at the smallest DCT scale that
    keeps both sides >= ``min_side`` (several times faster for small models). Raises on bad input:
    :class:`curate.core.imagecheck.Refused` before decoding (a format we do not accept, a bomb), PIL's
    errors while decoding."""
    img = open_image(data, MAX_PIXELS)
    if min_side and img.format == "JPEG":
        img.draft("RGB", (min_side, min_side))
    return img.convert("RGB")


def draft_side(image_size: int, aug: ImageAug | None) -> int:
    """The decode size that still leaves the smallest random crop at least ``image_size`` pixels."""
    lo = aug.scale[0] if aug else 1.0
    return int(image_size / max(lo, 1e-3) ** 0.5) + 1


class ImageAugmenter:
    """PIL image + per-sample ``random.Random`` -> uint8 ``(3, size, size)`` tensor.

    The random resized crop (torchvision's sampling: scale and log-ratio ranges, ten tries, then a
    centre crop) and the flip draw from ``rng`` and run as one PIL ``resize(box=...)``; torchvision's
    per-call tensor ops cost more than decoding a small JPEG. Photometric ops (jitter, grayscale,
    blur) are torchvision's, drawing from the CPU generator, which the caller seeds per sample.
    """

    def __init__(self, image_size: int, aug: ImageAug):
        self.size, self.aug = image_size, aug
        self.log_ratio = (math.log(aug.ratio[0]), math.log(aug.ratio[1]))
        ops: list = []
        if aug.jitter or aug.hue:
            ops.append(T.RandomApply([T.ColorJitter(aug.jitter, aug.jitter, aug.jitter, aug.hue)], p=aug.jitter_p))
        if aug.grayscale:
            ops.append(T.RandomGrayscale(aug.grayscale))
        if aug.blur:
            kernel = max(3, (image_size // 10) | 1)
            ops.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=aug.blur))
        self.photometric = T.Compose(ops) if ops else None

    def crop_box(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.aug.scale)
            ar = math.exp(rng.uniform(*self.log_ratio))
            w, h = round(math.sqrt(target * ar)), round(math.sqrt(target / ar))
            if 0 < w <= width and 0 < h <= height:
                x, y = rng.randint(0, width - w), rng.randint(0, height - h)
                return x, y, x + w, y + h
        ar = width / height
        if ar < self.aug.ratio[0]:
            w, h = width, round(width / self.aug.ratio[0])
        elif ar > self.aug.ratio[1]:
            w, h = round(height * self.aug.ratio[1]), height
        else:
            w, h = width, height
        x, y = (width - w) // 2, (height - h) // 2
        return x, y, x + w, y + h

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        box = self.crop_box(img.width, img.height, rng)
        # Large crops (PNG and WebP cannot be drafted) shrink by an integer factor first: near-identical
        # pixels at a third of the cost.
        gap = 3.0 if min(box[2] - box[0], box[3] - box[1]) > 3 * self.size else None
        img = img.resize((self.size, self.size), Image.BICUBIC, box=box, reducing_gap=gap)
        if self.aug.flip and rng.random() < self.aug.flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.photometric is not None:
            img = self.photometric(img)
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float, normalised with per-channel ``mean``/``std`` of shape (3, 1, 1)."""
    return images.float().div_(255).sub_(mean).div_(std)


_WORD = re.compile(r"\S+")


class CaptionAugmenter:
    """Word-level caption augmentation (EDA-style, as in Fini et al.): synonym replacement, stopword
    removal, random deletion, one random swap. Each switch is off at 0."""

    def __init__(self, aug: TextAug):
        self.aug = aug
        self.thesaurus: dict[str, list[str]] = {}
        if aug.thesaurus and aug.synonyms:
            import json

            with open(aug.thesaurus) as f:
                self.thesaurus = {k.lower(): list(v) for k, v in json.load(f).items() if v}

    @property
    def active(self) -> bool:
        a = self.aug
        return bool(a.swap or a.delete or a.stopwords or (a.synonyms and self.thesaurus))

    def __call__(self, text: str, rng: random.Random) -> str:
        a = self.aug
        words = _WORD.findall(text)
        if len(words) < 2:
            return text
        if a.synonyms and self.thesaurus:
            words = [
                rng.choice(self.thesaurus[w.lower()])
                if w.lower() in self.thesaurus and rng.random() < a.synonyms
                else w
                for w in words
            ]
        if a.stopwords and rng.random() < a.stopwords:
            words = [w for w in words if w.lower() not in STOPWORDS] or words
        if a.delete:
            kept = [w for w in words if rng.random() >= a.delete]
            words = kept or [rng.choice(words)]
        if a.swap and len(words) > 1 and rng.random() < a.swap:
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
        return " ".join(words)


def drop_tokens(tokens: torch.Tensor, p: float, rngs: list[random.Random]) -> torch.Tensor:
    """Drop each caption token with probability ``p``, keeping the start token and the end token
    (open_clip pools text at the end token, the largest id); the rest shifts left, zeros pad."""
    if not p:
        return tokens
    out = torch.zeros_like(tokens)
    for i, row in enumerate(tokens.tolist()):
        n = next((k for k, t in enumerate(row) if t == 0), len(row))
        eot = max(range(n), key=row.__getitem__) if n else 0
        kept = [row[0]] + [t for t in row[1:eot] if rngs[i].random() >= p] + row[eot:n]
        out[i, : len(kept)] = torch.tensor(kept, dtype=tokens.dtype)
    return out
