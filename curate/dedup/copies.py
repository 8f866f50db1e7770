"""Near copies of real photos: candidates from thumbnails and pHash, each verified by aligning thumbnails.

A 64-bit pHash finds resized, recompressed and re-toned copies (they sit a few bits from their
original), but a crop of a few percent per side moves every DCT basis function against the content:
on CIFAR-10 photos such copies sit a median 14 bits away, farther than the nearest *distinct* photo.
So near copies are found in two steps, both over the ``thumb`` column the annotate stage stores (the
whole image area-resized to 16x16 RGB, from the one decode every signal shares):

1. **Candidates**, without comparing all pairs: each image's ``neighbours`` nearest images by the
   cosine of their mean-removed 8x8 colour thumbnails, searched in an inverted file (spherical
   k-means cells, each image looked up in its ``probes`` nearest cells), plus every pHash pair within
   ``near_k`` bits (:mod:`~curate.dedup.near`). A crop keeps the coarse layout and colours, so the
   original stays among the nearest few (rank < 5 for 99% of crops in 10k CIFAR photos).
2. **Verification** of each candidate pair by alignment: for each axis, the crop window (up to
   ``max_crop`` off each side, in steps of ``step``) that best maps one image's row/column colour
   profile onto the other's; the thumbnail resampled through that window is then compared with the
   other thumbnail twice: Pearson correlation of the colours (``similarity``), and of their high-pass
   parts, the thumbnail minus its 3x3 blur (``detail``). Both directions are tried (either image may
   be the crop). A copy has both high; two sky photos with a small aeroplane in different places
   correlate in colour but not in detail. Thumbnails that are nearly flat (grey-level standard
   deviation below ``min_std``) carry no layout to verify and are never near copies (exact and pixel
   hashes still catch them).

Precision is set by the two thresholds, recall by how many candidates reach the verifier; both are
measured, per transformation, by ``bench/dedup_real.py``. There is no closed-form recall bound for
the neighbour search: its recall falls as the pool gets denser around an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curate.annotate.image import THUMB_SIDE
from curate.dedup.near import aspect_differs


@dataclass(frozen=True)
class CopyConfig:
    neighbours: int = 6  # nearest thumbnails per image that become candidates
    probes: int = 3  # inverted-file cells searched per image
    min_cosine: float = 0.7  # unaligned 8x8 thumbnail cosine below which a pair is no candidate
    max_crop: float = 0.12  # largest crop per side the verifier searches for
    step: float = 0.01
    min_similarity: float = 0.92  # aligned colour correlation of a copy
    min_detail: float = 0.6  # aligned high-pass correlation of a copy
    min_std: float = 2.0  # thumbnails flatter than this (grey levels) are not verified
    seed: int = 0


def thumbs(column, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, (len(rows), 16, 16, 3) float32) from a fixed-size binary ``thumb`` column; null rows left out."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = np.flatnonzero(arr.is_valid().to_numpy(zero_copy_only=False)) if arr.null_count else np.arange(n)
    size = THUMB_SIDE * THUMB_SIDE * 3
    buf = np.frombuffer(arr.buffers()[1], np.uint8)[arr.offset * size : (arr.offset + len(arr)) * size]
    out = buf.reshape(len(arr), THUMB_SIDE, THUMB_SIDE, 3)[valid].astype(np.float32)
    return valid, out


def _zn(x: np.ndarray, axes) -> np.ndarray:
    x = x - x.mean(axis=axes, keepdims=True)
    return x / (np.sqrt((x * x).sum(axis=axes, keepdims=True)) + 1e-6)


def search_vectors(t: np.ndarray) -> np.ndarray:
    """Mean-removed unit 8x8x3 vectors (2x2 block means of the thumbnails) for the neighbour search."""
    s = THUMB_SIDE // 2
    v = t.reshape(len(t), s, 2, s, 2, 3).mean(axis=(2, 4)).reshape(len(t), -1)
    return _zn(v, 1).astype(np.float32)


def neighbour_pairs(x: np.ndarray, cfg: CopyConfig = CopyConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j: each row's ``cfg.neighbours`` nearest rows of unit vectors ``x`` by cosine, at or
    above ``cfg.min_cosine``, searched within inverted-file cells rather than over all pairs."""
    from curate.dedup.semantic import kmeans

    n = len(x)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    cells = max(1, min(n, round(np.sqrt(n) / 2)))
    rng = np.random.default_rng(cfg.seed)
    fit = x if n <= 50_000 else x[np.sort(rng.choice(n, 50_000, replace=False))]
    _, centres = kmeans(fit, min(cells, len(fit)), iterations=10, seed=cfg.seed)
    probes = min(cfg.probes, len(centres))
    near = np.concatenate(
        [np.argsort(-(x[s : s + 65_536] @ centres.T), axis=1)[:, :probes] for s in range(0, n, 65_536)]
    )
    out_i, out_j = [], []
    for c in range(len(centres)):
        rows = np.flatnonzero((near == c).any(axis=1))
        if len(rows) < 2:
            continue
        k = min(cfg.neighbours, len(rows) - 1)
        for s in range(0, len(rows), 4096):
            sims = x[rows[s : s + 4096]] @ x[rows].T
            sims[np.arange(sims.shape[0]), np.arange(s, s + sims.shape[0])] = -2.0  # not oneself
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            ok = np.take_along_axis(sims, top, axis=1) >= cfg.min_cosine
            a = np.repeat(rows[s : s + 4096], k).reshape(-1, k)[ok]
            out_i.append(a)
            out_j.append(rows[top[ok]])
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return unique_pairs(np.concatenate(out_i), np.concatenate(out_j), n)


def unique_pairs(i: np.ndarray, j: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each unordered pair once, i < j, self-pairs dropped."""
    lo, hi = np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)
    keep = lo != hi
    packed = np.unique(lo[keep] * n + hi[keep])
    return packed // n, packed % n


def _interp(side: int, start: float, size: float) -> np.ndarray:
    """(side, side) linear-interpolation matrix sampling [start, start + size] (fractions) of an axis."""
    pos = np.clip((start + size * (np.arange(side) + 0.5) / side) * side - 0.5, 0, side - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, side - 1)
    w = (pos - lo).astype(np.float32)
    out = np.zeros((side, side), np.float32)
    np.add.at(out, (np.arange(side), lo), 1 - w)
    np.add.at(out, (np.arange(side), hi), w)
    return out


def _windows(cfg: CopyConfig) -> tuple[np.ndarray, int]:
    """Interpolation matrices of every window (lo, hi crop on the grid), index lo * g + hi; and g."""
    grid = np.arange(0.0, cfg.max_crop + 1e-9, cfg.step)
    return np.stack([_interp(THUMB_SIDE, lo, 1 - lo - hi) for lo in grid for hi in grid]), len(grid)


def _profile_scores(res: np.ndarray, bn: np.ndarray) -> np.ndarray:
    """Correlation of windowed profiles ``res`` (..., m, P) with unit zero-mean profiles ``bn`` (m, P)."""
    m = res.shape[-2]
    num = (res * bn).sum(axis=-2)
    sm = res.sum(axis=-2)
    return num / np.sqrt(np.maximum((res * res).sum(axis=-2) - sm * sm / m, 1e-12))


def _best_window(a: np.ndarray, b: np.ndarray, windows: np.ndarray, g: int) -> np.ndarray:
    """Per pair, the window of profile ``a`` (P, S, C) that correlates best with profile ``b``: every
    second grid step first, then the eight neighbours of the best of those."""
    p, s, c = a.shape
    m = s * c
    bn = _zn(b, (1, 2)).reshape(p, m).T
    coarse = np.array([lo * g + hi for lo in range(0, g, 2) for hi in range(0, g, 2)])
    # Pairs innermost, so every reduction runs over contiguous memory.
    res = (windows[coarse].reshape(-1, s) @ a.transpose(1, 2, 0).reshape(s, c * p)).reshape(len(coarse), m, p)
    best = coarse[_profile_scores(res, bn).argmax(axis=0)]
    lo, hi = best // g, best % g
    near = np.stack(
        [np.clip(lo + dl, 0, g - 1) * g + np.clip(hi + dh, 0, g - 1) for dl in (-1, 0, 1) for dh in (-1, 0, 1)]
    )  # (9, P)
    # Each interpolation row has at most two non-zero weights: gather them instead of multiplying.
    lo_at = (windows > 0).argmax(axis=2)  # (W, S): the first source pixel of each output pixel
    w_lo = np.take_along_axis(windows, lo_at[..., None], axis=2)[..., 0]
    hi_at = np.minimum(lo_at + 1, s - 1)
    idx, wt = lo_at[near], w_lo[near]  # (9, P, S)
    src = np.arange(p)[None, :, None]
    res = a[src, idx] * wt[..., None] + a[src, hi_at[near]] * (1 - wt[..., None])  # (9, P, S, C)
    res = res.reshape(9, p, m).transpose(0, 2, 1)
    return near[_profile_scores(res, bn).argmax(axis=0), np.arange(p)]


def _high_pass(x: np.ndarray) -> np.ndarray:
    s = x.shape[1]
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return x - sum(pad[:, dy : dy + s, dx : dx + s] for dy in range(3) for dx in range(3)) / 9


def _one_way(a: np.ndarray, b: np.ndarray, windows: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    p, s, _, c = a.shape
    kx = _best_window(a.mean(axis=1), b.mean(axis=1), windows, g)  # column profiles
    ky = _best_window(a.mean(axis=2), b.mean(axis=2), windows, g)  # row profiles
    win = np.matmul(windows[ky], a.reshape(p, s, s * c)).reshape(p, s, s, c)
    win = np.matmul(windows[kx][:, None], win)
    sim = (_zn(win, (1, 2, 3)) * _zn(b, (1, 2, 3))).sum(axis=(1, 2, 3))
    detail = (_zn(_high_pass(win), (1, 2, 3)) * _zn(_high_pass(b), (1, 2, 3))).sum(axis=(1, 2, 3))
    return sim, detail


def verify(a: np.ndarray, b: np.ndarray, cfg: CopyConfig = CopyConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, detail) of thumbnail pairs ``a[k]``, ``b[k]`` ((P, 16, 16, 3)), aligned in the better
    direction (either image may be a crop of the other)."""
    windows, g = _windows(cfg)
    sims, details = [], []
    for s in range(0, len(a), 4096):
        x, y = a[s : s + 4096].astype(np.float32), b[s : s + 4096].astype(np.float32)
        s1, d1 = _one_way(x, y, windows, g)
        s2, d2 = _one_way(y, x, windows, g)
        pick = s1 >= s2
        sims.append(np.where(pick, s1, s2))
        details.append(np.where(pick, d1, d2))
    if not sims:
        return np.empty(0, np.float32), np.empty(0, np.float32)
    return np.concatenate(sims), np.concatenate(details)


def flat(t: np.ndarray, cfg: CopyConfig = CopyConfig()) -> np.ndarray:
    """Thumbnails with too little structure to verify (a blank placeholder, a flat sky)."""
    grey = t @ np.array([0.299, 0.587, 0.114], np.float32)
    return grey.reshape(len(t), -1).std(axis=1) < cfg.min_std


def copy_pairs(
    t: np.ndarray,
    cfg: CopyConfig = CopyConfig(),
    extra: tuple[np.ndarray, np.ndarray] | None = None,
    shape: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) rows of thumbnails ``t`` that are near copies: neighbour candidates plus ``extra``
    candidate pairs (e.g. pHash matches), each verified. ``shape`` (log width/height per row, NaN
    where unknown) drops pairs whose shapes differ more than a crop within ``max_crop`` can make."""
    n = len(t)
    i, j = neighbour_pairs(search_vectors(t), cfg)
    if extra is not None and len(extra[0]):
        i, j = unique_pairs(np.concatenate([i, extra[0]]), np.concatenate([j, extra[1]]), n)
    bad = flat(t, cfg)
    keep = ~(bad[i] | bad[j])
    if shape is not None:
        keep &= ~aspect_differs(shape[i], shape[j], 1 / (1 - 2 * cfg.max_crop) - 1)
    i, j = i[keep], j[keep]
    sim, detail = verify(t[i], t[j], cfg)
    ok = (sim >= cfg.min_similarity) & (detail >= cfg.min_detail)
    return i[ok], j[ok]
