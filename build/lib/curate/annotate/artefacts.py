"""What makes an image junk rather than a photo, measured from the one decode.

The no-model quality score (``curate.select.quality``) needs signals that tell a photo from the junk
a crawl is full of; rewarding sharpness and entropy, as it once did, ranks pure noise first. Each
signal here answers one question, and ``bench/quality_score.py`` measures each on real photos and
generated junk:

- ``contrast``: standard deviation of the grey image (0-127). Flat colour and soft gradients sit
  below 8; photos rarely below 20.
- ``noise`` (derived, not stored: ``sharpness / (20 * contrast**2)``): the share of the image's
  variance at the finest scale. The 3x3 Laplacian of white noise has 20 times its variance, so
  pure noise reads ~1.0; photos 0.01-0.1; rendered text at 32 px ~0.4.
- ``effective_side``: the shorter side at the coarsest resolution that still holds the picture: the
  image is shrunk (area) by factors of sqrt(2), 2, 2 sqrt(2), ... as long as shrinking and scaling
  back (bilinear) keeps at least 97% of its grey variance. A photo keeps about its own resolution;
  a 10 px thumbnail blown up to 256 px reads ~10-20.
- ``palette_share``: share of pixels in the 8 fullest of 16x16x16 colour bins (on a thumbnail of at
  most 64 px): text screenshots, logos and flat graphics ~0.85-1.0, photos 0.2-0.7.
- ``blockiness``: mean absolute grey step across the 8-pixel JPEG block grid over the mean step
  elsewhere, averaged over both axes: ~1.0 for photos (1.2 for 32 px CIFAR JPEGs), 2-10 for images
  saved at JPEG quality below 10. Images under 16 px a side read 1.0.
"""

from __future__ import annotations

import cv2
import numpy as np

THUMB = 64
EFFECTIVE_KEEP = 0.97  # share of variance a shrink must keep to count as losing no picture
SCALES = tuple(2 ** (k / 2) for k in range(1, 13))  # shrink factors tried: sqrt(2) to 64
PALETTE_BINS = 8


def small(pixels: np.ndarray, side: int = THUMB) -> np.ndarray:
    """``pixels`` area-resized so the longer side is at most ``side`` (unchanged when already small)."""
    h, w = pixels.shape[:2]
    if max(h, w) <= side:
        return np.ascontiguousarray(pixels)
    s = side / max(h, w)
    return cv2.resize(pixels, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def contrast(grey: np.ndarray) -> float:
    _, std = cv2.meanStdDev(grey)
    return float(std[0, 0])


def effective_side(grey: np.ndarray) -> float:
    g = grey.astype(np.float32)
    h, w = g.shape
    var = float(cv2.meanStdDev(grey)[1][0, 0]) ** 2
    best = 1.0
    if var >= 1.0:  # a flat image has no picture to lose; it is as large as it is
        limit = (1 - EFFECTIVE_KEEP) * var * g.size  # as a sum of squares: cv2.norm, one call, no temporaries
        for f in SCALES:
            if min(h, w) / f < 4:
                break
            down = cv2.resize(g, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_AREA)
            back = cv2.resize(down, (w, h), interpolation=cv2.INTER_LINEAR)
            if cv2.norm(g, back, cv2.NORM_L2SQR) > limit:
                break
            best = f
    return min(h, w) / best


def colour_hist(thumb: np.ndarray) -> np.ndarray:
    """Pixel counts in 16x16x16 colour bins (``palette_share`` and the blank share both read it)."""
    return cv2.calcHist([thumb], [0, 1, 2], None, [16, 16, 16], [0, 256, 0, 256, 0, 256])


def palette_share(thumb: np.ndarray, hist: np.ndarray | None = None) -> float:
    hist = (colour_hist(thumb) if hist is None else hist).ravel()
    # Only the filled bins, sorted: a photo's thumbnail fills a few hundred of the 4,096, and
    # np.partition over all of them, thousands of equal zeros, took ~250 us an image (numpy 2.4 on an
    # AVX-512 EPYC) against ~6 for this. Counts are integers well below 2**24: the float32 sums are
    # exact in any order, so the value is the same either way.
    filled = np.sort(hist[hist > 0])
    return float(filled[-PALETTE_BINS:].sum() / max(hist.sum(), 1.0))


def blockiness(grey: np.ndarray) -> float:
    h, w = grey.shape
    if h < 16 or w < 16:
        return 1.0
    ratios = []
    # Absolute steps between neighbours, summed per column (x) and per row (y), in int32 (exact).
    for sums, n in (
        (cv2.reduce(cv2.absdiff(grey[:, 1:], grey[:, :-1]), 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel(), h),
        (cv2.reduce(cv2.absdiff(grey[1:], grey[:-1]), 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel(), w),
    ):
        at = int(sums[7::8].sum())  # the steps between pixel 7 and 8 of every block
        n_at = len(sums[7::8])
        rest = int(sums.sum()) - at
        ratios.append((at / (n * n_at) + 1e-3) / (rest / (n * (len(sums) - n_at)) + 1e-3))
    return (ratios[0] + ratios[1]) / 2
