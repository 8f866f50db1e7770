"""Near-duplicate 64-bit hashes (pHash) within Hamming distance k, without comparing all pairs.

Candidate pairs come from banding: a table splits the 64 bit positions at random into ``bands``
disjoint masks, and two hashes that agree exactly on one mask become a candidate. A pair at
distance d escapes one table only when every band holds one of its d differing bits; ``tables``
independent tables make that rare (with 3 bands of ~21 bits and 10 tables, a pair at distance 6 is
found with probability ~0.96, at distance <= 4 with > 0.999), while a 21-bit band keeps random
collisions in 1M hashes to ~240k pairs. Every candidate is then verified by popcount, so precision
is exact; only recall is probabilistic, and :func:`recall_bound` states it.

In ``deduplicate``, where annotate stored thumbnails, these pairs are near-copy *candidates*, each
then verified by aligned thumbnails (:mod:`curate.dedup.copies`), which also adds candidates pHash
cannot reach (crops); the bound is then the pHash path's recall before verification, not the
detector's (``bench/dedup_real.py`` measures that per transformation).

Identical hashes are grouped first (a placeholder image at 10,000 URLs would otherwise make a
bucket of 50M pairs); near search runs over the distinct values.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np
import pyarrow as pa

from curate.core import schema


@dataclass(frozen=True)
class NearConfig:
    k: int = 6  # largest Hamming distance that counts as a near duplicate
    bands: int = 3
    tables: int = 10
    seed: int = 0


def _masks(cfg: NearConfig) -> list[np.uint64]:
    rng = np.random.default_rng(cfg.seed)
    masks = []
    for _ in range(cfg.tables):
        perm = rng.permutation(64)
        for part in np.array_split(perm, cfg.bands):
            masks.append(np.uint64(sum(1 << int(b) for b in part)))
    return masks


def unique_ints(a: np.ndarray) -> np.ndarray:
    """``np.unique`` of an integer array (sorted, distinct), by one sort: numpy 2.4's hash-based unique
    took 6 s for 4M int64 values on this machine, where the sort takes 0.06 s."""
    s = np.sort(a)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


RAW_PAIRS = 1 << 20  # pairs made in runs before they are filtered (16 bytes each)


def _pairs_in_runs(
    order: np.ndarray, keys_sorted: np.ndarray, h: np.ndarray, k: int, keep=None
) -> tuple[np.ndarray, np.ndarray]:
    """The (i, j) pairs of original indices whose keys are equal (from a stable sort) and whose hashes
    ``h`` are within ``k`` bits, and that ``keep(i, j)`` (a mask) keeps when given. Filtered as they are
    made, ``RAW_PAIRS`` at a time: the unfiltered pairs grow as the square of a run's length, and hashes
    of similar images crowd into long runs (85M pairs made in one pass over 930,000 synthetic-web images,
    of which 4.8M are kept)."""
    same = keys_sorted[1:] == keys_sorted[:-1]
    if not same.any():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    left, right, raw = [], [], [[], []]

    def close(held: list[list[np.ndarray]]) -> None:  # filter the pairs made so far, in one go
        if not held[0]:
            return
        i, j = np.concatenate(held[0]), np.concatenate(held[1])
        ok = np.bitwise_count(h[i] ^ h[j]) <= k
        if keep is not None:
            ok &= keep(i, j)
        left.append(i[ok])
        right.append(j[ok])
        held[0], held[1] = [], []

    # Offset o pairs position p with p + o when the whole stretch p..p+o has one key. Only positions
    # still inside a run survive to the next offset, so the loop ends at the longest run's length.
    alive = np.flatnonzero(same)
    o, made = 1, 0
    while alive.size:
        raw[0].append(order[alive])
        raw[1].append(order[alive + o])
        made += alive.size
        if made >= RAW_PAIRS:
            close(raw)
            made = 0
        nxt = alive + o
        inside = nxt < same.size
        alive = alive[inside]
        alive = alive[same[nxt[inside]]]
        o += 1
    close(raw)
    return np.concatenate(left), np.concatenate(right)


def near_pairs(hashes: np.ndarray, cfg: NearConfig = NearConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, distance) of *distinct* hash values within ``cfg.k``; i < j index ``hashes``.

    ``hashes`` must hold distinct values (see :func:`distinct`); the result lists each pair once.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    found_i, found_j = [], []
    for mask in _masks(cfg):
        keys = h & mask
        order = np.argsort(keys, kind="stable")
        i, j = _pairs_in_runs(order, keys[order], h, cfg.k)
        if i.size:
            found_i.append(i)
            found_j.append(j)
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8)
    i = np.concatenate(found_i)
    j = np.concatenate(found_j)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    packed = unique_ints(lo.astype(np.int64) * len(h) + hi)
    lo, hi = packed // len(h), packed % len(h)
    return lo, hi, np.bitwise_count(h[lo] ^ h[hi]).astype(np.uint8)


def distinct(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, inverse): the distinct hashes and, per input row, the index of its value."""
    values, inverse = np.unique(np.asarray(hashes, dtype=np.uint64), return_inverse=True)
    return values, inverse.ravel()


def brute_force_pairs(hashes: np.ndarray, k: int) -> set[tuple[int, int]]:
    """Every pair within ``k``, by comparing all pairs: the reference for tests and benchmarks."""
    h = np.asarray(hashes, dtype=np.uint64)
    out: set[tuple[int, int]] = set()
    for a in range(len(h) - 1):
        d = np.bitwise_count(h[a + 1 :] ^ h[a])
        for b in np.flatnonzero(d <= k):
            out.add((a, a + 1 + int(b)))
    return out


def recall_bound(d: int, cfg: NearConfig = NearConfig()) -> float:
    """Probability that a pair at distance ``d`` is found: 1 - P(every band of every table is hit)."""
    sizes = [len(p) for p in np.array_split(np.arange(64), cfg.bands)]
    # Inclusion-exclusion over the set of bands left clean, d differing bits placed without replacement.
    caught = 0.0
    for r in range(1, cfg.bands + 1):
        for combo in _combinations(sizes, r):
            caught += (-1) ** (r + 1) * comb(64 - sum(combo), d) / comb(64, d)
    return 1.0 - (1.0 - caught) ** cfg.tables


def _combinations(items: list[int], r: int):
    from itertools import combinations

    return combinations(items, r)


def log_aspect(table: pa.Table, prefer_original: bool = False) -> np.ndarray:
    """log(width / height) per row, NaN where the shape is unknown. ``prefer_original`` takes
    img2dataset's original size where it was recorded, so a resize or crop at download time does not
    count as a change of shape."""

    def col(name: str) -> np.ndarray:
        if name not in table.column_names:
            return np.full(table.num_rows, np.nan)
        return table.column(name).cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)

    w, h = col(schema.WIDTH), col(schema.HEIGHT)
    if prefer_original:
        ow, oh = col(schema.ORIGINAL_WIDTH), col(schema.ORIGINAL_HEIGHT)
        known = np.isfinite(ow) & np.isfinite(oh) & (ow > 0) & (oh > 0)
        w, h = np.where(known, ow, w), np.where(known, oh, h)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(w / h)


def aspect_differs(a, b, tolerance: float):
    """Whether two log aspect ratios differ by more than ``tolerance`` (a share; 0 disables).

    A copy may be resized, not stretched, so such a pHash pair is not a copy. An unknown shape (NaN)
    never differs."""
    if tolerance <= 0:
        return np.zeros(np.broadcast(a, b).shape, bool)
    return np.abs(np.asarray(a) - np.asarray(b)) > np.log1p(tolerance)
