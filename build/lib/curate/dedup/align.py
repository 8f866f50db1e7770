"""The near-copy verifier: align two thumbnails (either may be a crop of the other), then correlate them.

For each axis, the crop window (up to ``max_crop`` off each side, every other ``step`` first, then
refined to ``step``) that best maps one image's mean row/column grey profile onto the other's. Through
that window the colour thumbnail is compared with the other's (Pearson correlation: ``similarity``),
and the grey one too, after a high-pass (the thumbnail minus its 3x3 blur: ``detail``; at 16 px when
either image is under 32 px, which has no finer detail). Both directions are tried and the one with
the higher similarity kept. :mod:`curate.dedup.copies` finds the candidate pairs and keeps those with
both figures high.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from curate.annotate.image import THUMB_SIDE

PAIR_BLOCK = 1024  # candidate pairs verified at a time (each ~60 KB of float32 temporaries)
WINDOWS_AT_ONCE = 7  # coarse windows scored at a time (all 49 at once: ~6 MB a block, out of cache)


@dataclass(frozen=True)
class CopyConfig:
    neighbours: int = 6  # nearest thumbnails per image that become candidates
    probes: int = 3  # inverted-file cells searched per image
    min_cosine: float = 0.7  # unaligned 8x8 thumbnail cosine below which a pair is no candidate
    max_crop: float = 0.12  # largest crop per side the verifier searches for
    step: float = 0.01
    min_similarity: float = 0.90  # aligned colour correlation of a copy
    min_detail: float = 0.70  # aligned grey high-pass correlation of a copy
    min_std: float = 2.0  # thumbnails flatter than this (grey levels) are not verified
    seed: int = 0


def normalised(x: np.ndarray, axes) -> np.ndarray:
    """``x`` with its mean over ``axes`` removed, scaled to unit length over them."""
    x = x - x.mean(axis=axes, keepdims=True)
    return x / (np.sqrt((x * x).sum(axis=axes, keepdims=True)) + 1e-6)


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


@functools.lru_cache(maxsize=8)
def _windows(cfg: CopyConfig, side: int = THUMB_SIDE) -> tuple[np.ndarray, int]:
    """Interpolation matrices of every window (lo, hi crop on the grid), index lo * g + hi; and g. Made
    once per config and side (read-only: every verified block shares them)."""
    grid = np.arange(0.0, cfg.max_crop + 1e-9, cfg.step)
    windows = np.stack([_interp(side, lo, 1 - lo - hi) for lo in grid for hi in grid])
    windows.setflags(write=False)
    return windows, len(grid)


@functools.lru_cache(maxsize=8)
def _coarse(g: int) -> np.ndarray:
    """The windows searched first: every second grid step of both crops."""
    out = np.array([lo * g + hi for lo in range(0, g, 2) for hi in range(0, g, 2)])
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=8)
def _taps(cfg: CopyConfig, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each window's interpolation as gathers, (W, S) each: the first source pixel of every output pixel,
    its weight, and the second source pixel (each row has at most two non-zero weights)."""
    windows, _ = _windows(cfg, side)
    lo_at = (windows > 0).argmax(axis=2)
    w_lo = np.take_along_axis(windows, lo_at[..., None], axis=2)[..., 0]
    hi_at = np.minimum(lo_at + 1, side - 1)
    for a in (lo_at, w_lo, hi_at):
        a.setflags(write=False)
    return lo_at, w_lo, hi_at


def _profile_scores(res: np.ndarray, bn: np.ndarray) -> np.ndarray:
    """Correlation of windowed profiles ``res`` (..., S, P) with unit zero-mean profiles ``bn`` (S, P)."""
    m = res.shape[-2]
    num = (res * bn).sum(axis=-2)
    sm = res.sum(axis=-2)
    return num / np.sqrt(np.maximum((res * res).sum(axis=-2) - sm * sm / m, 1e-12))


def _best_window(a: np.ndarray, b: np.ndarray, cfg: CopyConfig) -> np.ndarray:
    """Per pair, the window of profile ``a`` (P, S) that correlates best with profile ``b`` (P, S): every
    second grid step first, then the eight neighbours of the best of those."""
    p, s = a.shape
    windows, g = _windows(cfg, s)
    bn = normalised(b, 1).T
    coarse, at = _coarse(g), a.T
    # Pairs innermost, so every reduction runs over contiguous memory; a few windows at a time, so each
    # windowed block (7 windows x 32 x 1,024 pairs: ~0.9 MB) is scored while it is still in cache.
    scores = np.empty((len(coarse), p), np.float32)
    for k in range(0, len(coarse), WINDOWS_AT_ONCE):
        some = coarse[k : k + WINDOWS_AT_ONCE]
        res = (windows[some].reshape(-1, s) @ at).reshape(len(some), s, p)
        scores[k : k + WINDOWS_AT_ONCE] = _profile_scores(res, bn)
    best = coarse[scores.argmax(axis=0)]
    lo, hi = best // g, best % g
    near = np.stack(
        [np.clip(lo + dl, 0, g - 1) * g + np.clip(hi + dh, 0, g - 1) for dl in (-1, 0, 1) for dh in (-1, 0, 1)]
    )  # (9, P)
    # Each interpolation row has at most two non-zero weights: gather them (from the flat profiles, where
    # a pair's row starts at p * s) instead of multiplying.
    lo_at, w_lo, hi_at = _taps(cfg, s)
    flat, start = a.reshape(-1), np.arange(0, p * s, s)[:, None]
    wt = w_lo[near]  # (9, P, S)
    res = np.take(flat, lo_at[near] + start) * wt + np.take(flat, hi_at[near] + start) * (1 - wt)
    return near[_profile_scores(res.transpose(0, 2, 1), bn).argmax(axis=0), np.arange(p)]


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 box blur of images (P, S, S), edges replicated: three shifted rows summed, then three columns.
    (Summed-area tables took 5x as long, and in float32 their differences lost ~1e-3 of a grey level.)"""
    s = x.shape[1]
    p = np.empty((len(x), s + 2, s + 2), x.dtype)
    p[:, 1:-1, 1:-1] = x
    p[:, 0, 1:-1], p[:, -1, 1:-1] = x[:, 0], x[:, -1]
    p[:, :, 0], p[:, :, -1] = p[:, :, 1], p[:, :, -2]
    rows = p[:, :-2] + p[:, 1:-1]
    rows += p[:, 2:]
    out = rows[:, :, :-2] + rows[:, :, 1:-1]
    out += rows[:, :, 2:]
    out *= np.float32(1 / 9)
    return out


def _high_pass(x: np.ndarray) -> np.ndarray:
    """Grey images (P, S, S) minus their 3x3 box blur (edges replicated). A coarser band (5x5, 7x7)
    keeps more crops of 256 px photos but links more distinct synthetic-web images of one concept."""
    return x - _box3(x)


def _align(a, b, ga, gb, cfg: CopyConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align colour thumbnails ``a`` onto ``b``: (row window, column window, colour correlation)."""
    p, s, _, c = a.shape
    # Column profiles (mean over rows) give the horizontal window, row profiles the vertical one. Each
    # profile of ``ga`` averages rows (columns) the other image may have cropped away, so each axis is
    # fitted again on ``ga`` cut to the other axis's window.
    w16, w32 = _windows(cfg, s)[0], _windows(cfg, ga.shape[1])[0]
    col_b, row_b = gb.mean(axis=1), gb.mean(axis=2)
    ky = _best_window(ga.mean(axis=2), row_b, cfg)
    kx = _best_window(np.matmul(w32[ky], ga).mean(axis=1), col_b, cfg)
    ky = _best_window(np.matmul(ga, w32[kx].transpose(0, 2, 1)).mean(axis=2), row_b, cfg)
    win = np.matmul(w16[ky], a.reshape(p, s, s * c)).reshape(p, s, s, c)
    win = np.matmul(w16[kx][:, None], win)
    return ky, kx, (normalised(win, (1, 2, 3)) * normalised(b, (1, 2, 3))).sum(axis=(1, 2, 3))


def _detail(ga, gb, ky, kx, coarse, cfg: CopyConfig) -> np.ndarray:
    """Grey high-pass correlation of ``ga`` through windows ``ky``, ``kx`` with ``gb`` (on the 16 px grid
    where ``coarse``): texture and small objects a 16 px colour thumbnail averages away."""
    w32 = _windows(cfg, ga.shape[1])[0]
    gwin = np.matmul(np.matmul(w32[ky], ga), w32[kx].transpose(0, 2, 1))
    detail = (normalised(_high_pass(gwin), (1, 2)) * normalised(_high_pass(gb), (1, 2))).sum(axis=(1, 2))
    if coarse.any():
        # An image under 32 px has no detail at 32 px: compare such pairs at 16 px.
        s = ga.shape[1] // 2
        half = lambda x: x.reshape(-1, s, 2, s, 2).mean(axis=(2, 4))  # noqa: E731
        w, y = half(gwin[coarse]), half(gb[coarse])
        detail[coarse] = (normalised(_high_pass(w), (1, 2)) * normalised(_high_pass(y), (1, 2))).sum(axis=(1, 2))
    return detail


def verify(
    a: np.ndarray,
    b: np.ndarray,
    ga: np.ndarray,
    gb: np.ndarray,
    cfg: CopyConfig = CopyConfig(),
    coarse: np.ndarray | None = None,
    detail_from: float = -np.inf,
) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, detail) of pairs with colour thumbnails ``a[k]``, ``b[k]`` ((P, 16, 16, 3)) and grey
    thumbnails ``ga[k]``, ``gb[k]`` ((P, 32, 32)), aligned in the better direction (either image may be
    a crop of the other). ``coarse`` marks pairs whose detail is compared at 16 px (an image under
    32 px a side); default: none. Detail is measured only where the similarity reaches ``detail_from``
    (NaN elsewhere): a pair below the copy threshold needs no second figure, and detail is a third of
    the work."""
    coarse = np.zeros(len(a), bool) if coarse is None else np.asarray(coarse, bool)
    sims, details = [np.empty(0, np.float32)], [np.empty(0, np.float32)]
    for s in range(0, len(a), PAIR_BLOCK):
        x, y = a[s : s + PAIR_BLOCK].astype(np.float32), b[s : s + PAIR_BLOCK].astype(np.float32)
        gx, gy = ga[s : s + PAIR_BLOCK].astype(np.float32), gb[s : s + PAIR_BLOCK].astype(np.float32)
        ky1, kx1, s1 = _align(x, y, gx, gy, cfg)
        ky2, kx2, s2 = _align(y, x, gy, gx, cfg)
        pick = s1 >= s2
        sim = np.where(pick, s1, s2)
        detail = np.full(len(sim), np.nan, np.float32)
        todo = np.flatnonzero(sim >= detail_from)
        if len(todo):
            first = pick[todo][:, None, None]  # direction 1 windows ``gx`` onto ``gy``; 2 the reverse
            src, dst = np.where(first, gx[todo], gy[todo]), np.where(first, gy[todo], gx[todo])
            ky, kx = np.where(pick, ky1, ky2)[todo], np.where(pick, kx1, kx2)[todo]
            detail[todo] = _detail(src, dst, ky, kx, coarse[s : s + PAIR_BLOCK][todo], cfg)
        sims.append(sim)
        details.append(detail)
    return np.concatenate(sims), np.concatenate(details)
