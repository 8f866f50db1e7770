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
2. **Verification** of each candidate pair by alignment (:mod:`curate.dedup.align`): the crop window
   that best maps one image's mean row/column grey profile onto the other's, then through it the colour
   thumbnails' correlation (``similarity``) and their grey high-passes' (``detail``), in the better
   direction (either image may be the crop). A copy has both high; two sky photos with a small
   aeroplane in different places, or two renderings of one synthetic concept, correlate in colour but
   not in detail. Thumbnails that are nearly flat (grey standard deviation below ``min_std``) carry
   no layout to verify and are never near copies (exact and pixel hashes still catch them).

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
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from curate.annotate.image import DETAIL_SIDE, THUMB_SIDE
from curate.core.runtime import keep_freed_heap
from curate.core.scratch import directory as scratch_directory
from curate.dedup.align import PAIR_BLOCK, CopyConfig, normalised, verify
from curate.dedup.near import aspect_differs
from curate.dedup.neighbours import candidates, in_order, packed
from curate.dedup.thumbstore import Spilled, take

COLOUR_BYTES = THUMB_SIDE * THUMB_SIDE * 3
VERIFY_CHUNK = 1 << 16  # candidate pairs unpacked, filtered and verified at a time (~4 MB of indices)


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
        out[at : at + BLOCK] = normalised(v, 1)
    return out


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
    # Another process can read spilled thumbnails (this node's scratch file, or a replica of it on its own
    # node: curate.core.nodefiles), not arrays held here.
    map_fn = (_VERIFY_MAP.get() if isinstance(t, Spilled) else None) or in_order
    with _workdir(scratch) as work:
        vectors = search_vectors(t) if scratch is None else _spilled_vectors(t, scratch)
        # The search's jobs carry its vectors: fanned out only where they too are spilled.
        search_map = map_fn if isinstance(vectors, Spilled) else None
        jobs = _chunks(candidates(vectors, cfg, work, extra_packed, search_map), t, grey, cfg, bad, shape, side)
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
    keep_freed_heap()  # its blocks' arrays are made and dropped 1,024 pairs at a time
    sim, detail = verify_pairs(t, grey, i, j, cfg, coarse, detail_from=cfg.min_similarity)
    ok = (sim >= cfg.min_similarity) & (detail >= cfg.min_detail)  # detail is NaN below min_similarity
    return i[ok], j[ok]


@contextlib.contextmanager
def verifying_with(map_fn):
    """Within the block, :func:`copy_pairs` over spilled thumbnails hands its chunks of candidates, and
    its neighbour search's jobs where the search vectors are spilled too, and the partitioned path its group
    keys' partitions and pHash band masks (:mod:`curate.dedup.partitioned`), to ``map_fn(fn, jobs)``
    (``fn(*job)`` for each job, results in order: e.g. Ray tasks anywhere in the cluster,
    :func:`curate.core.raypool.fan_out`) instead of running them here one after another. ``None``:
    here. The jobs, and so the pairs found, are the same either way."""
    token = _VERIFY_MAP.set(map_fn)
    try:
        yield
    finally:
        _VERIFY_MAP.reset(token)


def job_map():
    """The ``map_fn`` :func:`verifying_with` set for the dedup task's jobs (None: run them here, in order)."""
    return _VERIFY_MAP.get()


def _workdir(scratch: str | None):
    """``scratch`` (a directory for the search's spill files), or a temporary one."""
    if scratch is not None:
        return contextlib.nullcontext(Path(scratch))
    return scratch_directory("pairs")


def _spilled_vectors(t, scratch: str):
    from curate.dedup.thumbstore import write_rows

    blocks = (search_vectors(t[at : at + BLOCK]) for at in range(0, len(t), BLOCK))
    return write_rows(Path(scratch) / "vectors.f32", blocks, np.float32, ((THUMB_SIDE // 2) ** 2 * 3,))


def verify_pairs(
    t: np.ndarray,
    grey: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    cfg: CopyConfig,
    coarse: np.ndarray | None,
    detail_from: float = -np.inf,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`verify` of the pairs (i[k], j[k]) of rows of ``t`` / ``grey`` (detail NaN where the similarity is
    under ``detail_from``), gathered one block of pairs at a time: gathering them all at once held 14 KB a
    pair (2.1 GB for a 20,000-image pool's candidates)."""
    sims, details = [np.empty(0, np.float32)], [np.empty(0, np.float32)]
    for s in range(0, len(i), PAIR_BLOCK):
        a, b = i[s : s + PAIR_BLOCK], j[s : s + PAIR_BLOCK]
        c = None if coarse is None else coarse[s : s + PAIR_BLOCK]
        (ta, ga), (tb, gb) = take((t, grey), a), take((t, grey), b)
        sim, detail = verify(ta, tb, ga, gb, cfg, c, detail_from)
        sims.append(sim)
        details.append(detail)
    return np.concatenate(sims), np.concatenate(details)
