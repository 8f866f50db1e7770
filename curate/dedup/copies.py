"""Near copies of real photos: candidates from thumbnails and pHash, each verified by aligning thumbnails.

A 64-bit pHash finds resized, recompressed and re-toned copies (they sit a few bits from their
original), but a crop of a few percent per side moves every DCT basis function against the content:
on CIFAR-10 photos such copies sit a median 14 bits away, farther than the nearest *distinct* photo.
So near copies are found in two steps, both over the ``thumb`` column the annotate stage stores (the
whole image area-resized to 16x16 RGB and to 32x32 grey, from the one decode every signal shares):

1. **Candidates**, without comparing all pairs: each image's ``neighbours`` nearest images by the
   cosine of their mean-removed 8x8 colour thumbnails, searched in an inverted file (spherical
   k-means cells, each image looked up in its ``probes`` nearest cells) and kept above
   ``min_cosine``, plus every pHash pair within ``near_k`` bits (:mod:`~curate.dedup.near`). A crop
   keeps the coarse layout and colours, so the original stays among the nearest few (rank < 5 for
   99% of crops among 10k CIFAR photos).
2. **Verification** of each candidate pair by alignment: for each axis, the crop window (up to
   ``max_crop`` off each side, every other ``step`` first, then refined to ``step``) that best maps
   one image's mean row/column grey profile onto the other's. Through that window the colour
   thumbnail is compared with the other's (Pearson correlation: ``similarity``), and the grey one too,
   after a high-pass (the thumbnail minus its 3x3 blur: ``detail``; at 16 px when either image is
   under 32 px, which has no finer detail). Both directions are tried (either image may be the
   crop). A copy has both high; two sky photos with a small aeroplane in different places, or two
   renderings of one synthetic concept, correlate in colour but not in detail. Thumbnails that are
   nearly flat (grey standard deviation below ``min_std``) carry no layout to verify and are never
   near copies (exact and pixel hashes still catch them).

Pairs whose width/height ratios differ more than a crop of ``max_crop`` per side can make are no
candidates. Precision is set by the two thresholds, recall by how many candidates reach the verifier;
``bench/dedup_real.py`` measures both, per transformation, on CIFAR-10 and COCO photos, and
``bench/dedup_quality.py`` on the synthetic web. The pHash candidates keep their recall bound
(:func:`curate.dedup.near.recall_bound`); the neighbour search has none in closed form, and its
recall falls as the pool gets denser around an image (a copy must rank among its original's
``neighbours`` nearest thumbnails, or the original among the copy's).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.annotate.image import DETAIL_SIDE, THUMB_SIDE
from curate.core import storage
from curate.dedup.near import aspect_differs
from curate.dedup.neighbours import candidates, packed
from curate.dedup.thumbstore import Spilled, take

COLOUR_BYTES = THUMB_SIDE * THUMB_SIDE * 3
PAIR_BLOCK = 1024  # candidate pairs verified at a time (each ~60 KB of float32 temporaries)
VERIFY_CHUNK = 1 << 16  # candidate pairs unpacked, filtered and verified at a time (~4 MB of indices)


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


def thumbs(column, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, colour (len(rows), 16, 16, 3), grey (len(rows), 32, 32)), uint8 as stored, from a ``thumb``
    column (fixed-size binary); null rows left out. Views of the column's buffer when it has no nulls:
    1,792 bytes a row, where float32 copies would take four times that (every consumer converts a
    block at a time)."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = np.flatnonzero(arr.is_valid().to_numpy(zero_copy_only=False)) if arr.null_count else np.arange(n)
    size = COLOUR_BYTES + DETAIL_SIDE * DETAIL_SIDE
    buf = np.frombuffer(arr.buffers()[1], np.uint8)[arr.offset * size : (arr.offset + len(arr)) * size]
    raw = buf.reshape(len(arr), size)
    raw = raw if len(valid) == len(arr) else raw[valid]
    k = len(valid)  # not -1: numpy cannot infer it for zero rows (a build where nothing decoded)
    colour = raw[:, :COLOUR_BYTES].reshape(k, THUMB_SIDE, THUMB_SIDE, 3)
    grey = raw[:, COLOUR_BYTES:].reshape(k, DETAIL_SIDE, DETAIL_SIDE)
    return valid, colour, grey


def _zn(x: np.ndarray, axes) -> np.ndarray:
    x = x - x.mean(axis=axes, keepdims=True)
    return x / (np.sqrt((x * x).sum(axis=axes, keepdims=True)) + 1e-6)


# Rows converted to float32 at a time (a block of 8,192 thumbnails: 56 MB as float32, with temporaries
# ~150 MB): memory stays one block, not the pool, whatever its size.
BLOCK = 8192


def search_vectors(t: np.ndarray) -> np.ndarray:
    """Mean-removed unit 8x8x3 vectors (2x2 block means of the thumbnails) for the neighbour search."""
    s = THUMB_SIDE // 2
    out = np.empty((len(t), s * s * 3), np.float32)
    for at in range(0, len(t), BLOCK):
        b = t[at : at + BLOCK].astype(np.float32)
        v = b.reshape(len(b), s, 2, s, 2, 3).mean(axis=(2, 4)).reshape(len(b), -1)
        out[at : at + BLOCK] = _zn(v, 1)
    return out


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
    """Correlation of windowed profiles ``res`` (..., m, P) with unit zero-mean profiles ``bn`` (m, P)."""
    m = res.shape[-2]
    num = (res * bn).sum(axis=-2)
    sm = res.sum(axis=-2)
    return num / np.sqrt(np.maximum((res * res).sum(axis=-2) - sm * sm / m, 1e-12))


def _best_window(a: np.ndarray, b: np.ndarray, cfg: CopyConfig) -> np.ndarray:
    """Per pair, the window of profile ``a`` (P, S, C) that correlates best with profile ``b``: every
    second grid step first, then the eight neighbours of the best of those."""
    p, s, c = a.shape
    windows, g = _windows(cfg, s)
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
    lo_at, w_lo, hi_at = _taps(cfg, s)
    idx, wt = lo_at[near], w_lo[near]  # (9, P, S)
    src = np.arange(p)[None, :, None]
    res = a[src, idx] * wt[..., None] + a[src, hi_at[near]] * (1 - wt[..., None])  # (9, P, S, C)
    res = res.reshape(9, p, m).transpose(0, 2, 1)
    return near[_profile_scores(res, bn).argmax(axis=0), np.arange(p)]


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


def _one_way(a, b, ga, gb, coarse, cfg: CopyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Align colour thumbnails ``a`` onto ``b``; (colour correlation, grey high-pass correlation, on the
    16 px grid where ``coarse``)."""
    p, s, _, c = a.shape
    # Column profiles (mean over rows) give the horizontal window, row profiles the vertical one. Each
    # profile of ``ga`` averages rows (columns) the other image may have cropped away, so each axis is
    # fitted again on ``ga`` cut to the other axis's window.
    w16, w32 = _windows(cfg, s)[0], _windows(cfg, ga.shape[1])[0]
    col_b, row_b = gb.mean(axis=1)[..., None], gb.mean(axis=2)[..., None]
    ky = _best_window(ga.mean(axis=2)[..., None], row_b, cfg)
    kx = _best_window(np.matmul(w32[ky], ga).mean(axis=1)[..., None], col_b, cfg)
    ky = _best_window(np.matmul(ga, w32[kx].transpose(0, 2, 1)).mean(axis=2)[..., None], row_b, cfg)
    win = np.matmul(w16[ky], a.reshape(p, s, s * c)).reshape(p, s, s, c)
    win = np.matmul(w16[kx][:, None], win)
    sim = (_zn(win, (1, 2, 3)) * _zn(b, (1, 2, 3))).sum(axis=(1, 2, 3))
    # The same window on the finer grey thumbnail: texture and small objects a 16 px thumbnail averages away.
    gwin = np.matmul(np.matmul(w32[ky], ga), w32[kx].transpose(0, 2, 1))
    detail = (_zn(_high_pass(gwin), (1, 2)) * _zn(_high_pass(gb), (1, 2))).sum(axis=(1, 2))
    if coarse.any():
        # An image under 32 px has no detail at 32 px: compare such pairs at 16 px.
        half = lambda x: x.reshape(-1, s, 2, s, 2).mean(axis=(2, 4))  # noqa: E731
        w, y = half(gwin[coarse]), half(gb[coarse])
        detail[coarse] = (_zn(_high_pass(w), (1, 2)) * _zn(_high_pass(y), (1, 2))).sum(axis=(1, 2))
    return sim, detail


def verify(
    a: np.ndarray,
    b: np.ndarray,
    ga: np.ndarray,
    gb: np.ndarray,
    cfg: CopyConfig = CopyConfig(),
    coarse: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, detail) of pairs with colour thumbnails ``a[k]``, ``b[k]`` ((P, 16, 16, 3)) and grey
    thumbnails ``ga[k]``, ``gb[k]`` ((P, 32, 32)), aligned in the better direction (either image may be
    a crop of the other). ``coarse`` marks pairs whose detail is compared at 16 px (an image under
    32 px a side); default: none."""
    coarse = np.zeros(len(a), bool) if coarse is None else np.asarray(coarse, bool)
    sims, details = [], []
    for s in range(0, len(a), PAIR_BLOCK):
        x, y = a[s : s + PAIR_BLOCK].astype(np.float32), b[s : s + PAIR_BLOCK].astype(np.float32)
        gx, gy = ga[s : s + PAIR_BLOCK].astype(np.float32), gb[s : s + PAIR_BLOCK].astype(np.float32)
        c = coarse[s : s + PAIR_BLOCK]
        s1, d1 = _one_way(x, y, gx, gy, c, cfg)
        s2, d2 = _one_way(y, x, gy, gx, c, cfg)
        pick = s1 >= s2
        sims.append(np.where(pick, s1, s2))
        details.append(np.where(pick, d1, d2))
    if not sims:
        return np.empty(0, np.float32), np.empty(0, np.float32)
    return np.concatenate(sims), np.concatenate(details)


def flat(t: np.ndarray, cfg: CopyConfig = CopyConfig()) -> np.ndarray:
    """Thumbnails with too little structure to verify (a blank placeholder, a flat sky)."""
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    out = np.empty(len(t), bool)
    for at in range(0, len(t), BLOCK):
        grey = t[at : at + BLOCK].astype(np.float32) @ weights
        out[at : at + BLOCK] = grey.reshape(len(grey), -1).std(axis=1) < cfg.min_std
    return out


# How copy_pairs verifies its chunks of candidates (set by :func:`verifying_with`; None: here, in order).
_VERIFY_MAP: contextvars.ContextVar = contextvars.ContextVar("verify_map", default=None)


def copy_pairs(
    t: np.ndarray,
    grey: np.ndarray,
    cfg: CopyConfig = CopyConfig(),
    extra: Iterable[tuple[np.ndarray, np.ndarray]] = (),
    shape: np.ndarray | None = None,
    side: np.ndarray | None = None,
    scratch: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) rows that are near copies, from colour thumbnails ``t`` and grey thumbnails ``grey``
    (:func:`thumbs`, or :class:`curate.dedup.thumbstore.Spilled` views): neighbour candidates plus
    ``extra`` candidate pairs (e.g. pHash matches; (i, j) chunks, spilled one at a time), each verified.
    ``shape`` (log width/height per row, NaN where unknown) drops pairs whose shapes differ more than a
    crop within ``max_crop`` can make;
    ``side`` (shorter side in pixels per row) sends pairs with an image under 32 px to the 16 px detail
    comparison. With ``scratch`` (a directory) the search vectors and the search's spill files go there.

    The candidates come from :func:`curate.dedup.neighbours.candidates` as one int64 a pair, a range of
    rows at a time (spilled under ``scratch``, or a temporary directory), and are unpacked, filtered and
    verified ``VERIFY_CHUNK`` at a time; only the verified pairs are kept."""
    n = len(t)
    extra_packed = (packed(i, j, n) for i, j in extra)
    bad = flat(t, cfg)
    found_i, found_j = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    # Another process can read spilled thumbnails (from this node's scratch file), not arrays held here.
    map_fn = (_VERIFY_MAP.get() if isinstance(t, Spilled) else None) or _in_order
    with _workdir(scratch) as work:
        vectors = search_vectors(t) if scratch is None else _spilled_vectors(t, scratch)
        jobs = _chunks(candidates(vectors, cfg, work, extra_packed), t, grey, cfg, bad, shape, side)
        for a, b in map_fn(verified_pairs, jobs):
            found_i.append(a)
            found_j.append(b)
    return np.concatenate(found_i), np.concatenate(found_j)


def _chunks(blocks, t, grey, cfg: CopyConfig, bad: np.ndarray, shape, side):
    """The verification jobs: ``VERIFY_CHUNK`` candidates of each block at a time, unpacked, without the
    pairs a flat thumbnail or a shape no crop can make rules out."""
    n = len(t)
    for block in blocks:
        for s in range(0, len(block), VERIFY_CHUNK):
            i, j = block[s : s + VERIFY_CHUNK] // n, block[s : s + VERIFY_CHUNK] % n
            keep = ~(bad[i] | bad[j])
            if shape is not None:
                keep &= ~aspect_differs(shape[i], shape[j], 1 / (1 - 2 * cfg.max_crop) - 1)
            i, j = i[keep], j[keep]
            coarse = None if side is None else np.minimum(side[i], side[j]) < DETAIL_SIDE
            yield t, grey, i, j, cfg, coarse


def verified_pairs(
    t: np.ndarray, grey: np.ndarray, i: np.ndarray, j: np.ndarray, cfg: CopyConfig, coarse: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (i[k], j[k]) that :func:`verify_pairs` finds near copies."""
    sim, detail = verify_pairs(t, grey, i, j, cfg, coarse)
    ok = (sim >= cfg.min_similarity) & (detail >= cfg.min_detail)
    return i[ok], j[ok]


@contextlib.contextmanager
def verifying_with(map_fn):
    """Within the block, :func:`copy_pairs` over spilled thumbnails hands its chunks of candidates to
    ``map_fn(fn, jobs)`` (``fn(*job)`` for each job, results in order: e.g. Ray tasks on this node,
    :func:`curate.core.raypool.on_this_node`) instead of verifying them here one after another.
    ``None``: here. The chunks, and so the pairs found, are the same either way."""
    token = _VERIFY_MAP.set(map_fn)
    try:
        yield
    finally:
        _VERIFY_MAP.reset(token)


def _in_order(fn, jobs):
    return (fn(*job) for job in jobs)


def _workdir(scratch: str | None):
    """``scratch`` (a directory for the search's spill files), or a temporary one."""
    if scratch is not None:
        return contextlib.nullcontext(Path(scratch))
    return tempfile.TemporaryDirectory(prefix="clip-tiers-pairs-", dir=storage.scratch_dir())


def _spilled_vectors(t, scratch: str):
    from curate.dedup.thumbstore import write_rows

    blocks = (search_vectors(t[at : at + BLOCK]) for at in range(0, len(t), BLOCK))
    return write_rows(Path(scratch) / "vectors.f32", blocks, np.float32, ((THUMB_SIDE // 2) ** 2 * 3,))


def verify_pairs(
    t: np.ndarray, grey: np.ndarray, i: np.ndarray, j: np.ndarray, cfg: CopyConfig, coarse: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`verify` of the pairs (i[k], j[k]) of rows of ``t`` / ``grey``, gathered one block of pairs at a
    time: gathering them all at once held 14 KB a pair (2.1 GB for a 20,000-image pool's candidates)."""
    sims, details = [np.empty(0, np.float32)], [np.empty(0, np.float32)]
    for s in range(0, len(i), PAIR_BLOCK):
        a, b = i[s : s + PAIR_BLOCK], j[s : s + PAIR_BLOCK]
        c = None if coarse is None else coarse[s : s + PAIR_BLOCK]
        (ta, ga), (tb, gb) = take((t, grey), a), take((t, grey), b)
        sim, detail = verify(ta, tb, ga, gb, cfg, c)
        sims.append(sim)
        details.append(detail)
    return np.concatenate(sims), np.concatenate(details)
