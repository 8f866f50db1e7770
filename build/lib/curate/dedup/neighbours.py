"""Near-copy candidates: each image's nearest thumbnails, found in inverted-file cells, spilled as found.

:func:`candidates` gives the candidate pairs of :mod:`curate.dedup.copies` (each row's
``neighbours`` nearest rows by the cosine of their search vectors, at or above ``min_cosine``, plus
pairs given from elsewhere, e.g. pHash matches) as one int64 a pair (``lo * n + hi``), ascending and
unique, a range of ``lo`` rows at a time. Nothing in it is held for the whole pool:

- the cells are fitted on a sample of at most 50,000 rows;
- each row's ``probes`` nearest cells are computed a block of rows at a time and spilled, as (cell,
  row) records, to files by range of cells; a range is read back, sorted by cell, cut into jobs of
  whole cells (``SEARCH_JOB`` records, about), and each job's cells searched (their rows read from the
  spilled vectors), one job after another here or, given a ``map_fn``, e.g. as Ray tasks across the cluster
  (the pairs are the same either way: they are made unique and sorted when read back);
- the pairs found are spilled, as found, to files by range of ``lo``; a range is read back and made
  unique when the caller asks for it.

Held at once: the sample, a block, one range of cells' records and one cell's vectors, one range of
pairs. (The in-memory search this replaced held every row's cells and every pair found, several times
over while merging them: ~300 MB more at 465,000 thumbnails than at none.) :class:`SpilledPairs` keeps
pairs found elsewhere (the pHash bands' candidates) the same way; :class:`PackedPairs` holds them
packed, where they are not to be verified.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from curate.core import scratch
from curate.core.buckets import Buckets
from curate.core.runtime import keep_freed_heap
from curate.dedup.near import unique_ints

SEARCH_BLOCK = 1024  # rows whose nearest cells, or neighbours within a cell, are computed at a time
CELL_SIMS = 1 << 20  # similarities within a cell computed at a time (4 MB; what ranks them, a row's worth)
FIT_ROWS = 50_000  # rows the cells are fitted on
MEMBERSHIPS = 1 << 18  # (cell, row) records per range of cells, about
PAIRS = 1 << 16  # rows per range of ``lo`` (~20 pairs a row, as found, before they are made unique)
FLUSH = 1 << 18  # pairs found before they are spilled (sorting them to their files takes ~40 B a pair)
# (cell, row) records a search job takes, about (whole cells): a range of cells makes ~8 jobs to spread over
# a node's CPUs (ranges alone: 3 at 186,000 rows), ~1.5 s each there (cells grow as the pool's square root).
SEARCH_JOB = 1 << 15


def packed(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """Unordered pairs as one int64 each (lo * n + hi), self-pairs dropped."""
    lo, hi = np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)
    keep = lo != hi
    return lo[keep] * n + hi[keep]


class PackedPairs:
    """Unordered pairs of rows, each once (a pair close in several bands is found several times), kept as
    one int64 each (lo * n + hi) and made unique as they pile up: what is held is the distinct pairs and
    at most as many more (or ``PENDING``, when more), where pairs kept as two int64 and made unique once
    held every mask's pairs twice over (792 MB traced for 930,000 synthetic-web images, 4.8M distinct
    pairs). Merging only once as many have piled up as are held keeps the sorts' total linear-ish."""

    PENDING = 1 << 20

    def __init__(self, n: int):
        self.n, self.parts, self.held, self.pending = n, [np.empty(0, np.int64)], 0, 0

    def add(self, i: np.ndarray, j: np.ndarray) -> None:
        self.parts.append(np.minimum(i, j).astype(np.int64) * self.n + np.maximum(i, j))
        self.pending += len(i)
        if self.pending > max(self.PENDING, self.held):
            self.parts = [unique_ints(np.concatenate(self.parts))]
            self.held, self.pending = len(self.parts[0]), 0

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        packed = unique_ints(np.concatenate(self.parts))
        return packed // max(self.n, 1), packed % max(self.n, 1)


class SpilledPairs:
    """Unordered pairs of rows spilled as they are found, by range of their ``lo`` row, and read back a
    range at a time, each range's pairs once: ``for i, j in pairs``, or packed and ascending,
    :meth:`ranges`. For candidates that go on to be verified (:func:`candidates` spills its own this way), so
    none of the pool's pairs is held whole."""

    def __init__(self, n: int, work: Path, name: str = "found-pairs"):
        self.n, self.count = n, max(1, -(-n // PAIRS))
        self.buckets = Buckets(work, name, self.count, np.int64)

    def add(self, i: np.ndarray, j: np.ndarray) -> None:
        self.add_packed(packed(i, j, self.n))

    def add_packed(self, p: np.ndarray) -> None:
        self.buckets.add(p, p // self.n * self.count // self.n)  # the range of the pair's lo row

    def ranges(self) -> Iterator[np.ndarray]:
        for block in self.buckets:
            yield unique_ints(block)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for block in self.ranges():
            yield block // self.n, block % self.n


def neighbour_pairs(x, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j: each row's ``cfg.neighbours`` nearest rows of unit vectors ``x`` by cosine, at or
    above ``cfg.min_cosine`` (``x``: an array, or rows read on demand, e.g. spilled)."""
    with scratch.directory("pairs") as work:
        found = np.concatenate([np.zeros(0, np.int64), *candidates(x, cfg, Path(work))])
    return found // max(len(x), 1), found % max(len(x), 1)


def candidates(x, cfg, work: Path, extra: Iterable[np.ndarray] = (), map_fn=None) -> Iterator[np.ndarray]:
    """The candidate pairs (packed, ascending, unique) of rows of ``x`` with ``extra`` among them (packed
    pairs, a chunk at a time, spilled as they come), a range of ``lo`` rows at a time; scratch files
    under ``work``, removed as they are read. ``map_fn(fn, jobs)`` (``fn(*job)`` for each job, results in
    order) runs the search's jobs, e.g. :func:`curate.core.raypool.fan_out` where ``x`` is spilled
    (a job carries ``x``); None: here, one after another."""
    n = len(x)
    pairs = SpilledPairs(n, work, "pairs")
    if n >= 2:
        _search(x, cfg, work, pairs.add_packed, map_fn or in_order)
    for chunk in extra:
        if len(chunk):
            pairs.add_packed(np.asarray(chunk, np.int64))
    yield from pairs.ranges()


def in_order(fn, jobs):
    """``fn(*job)`` for each of ``jobs``, here, in order: the default ``map_fn``."""
    return (fn(*job) for job in jobs)


def _search(x, cfg, work: Path, add, map_fn) -> None:
    """Each row's nearest rows within the cells it probes, handed to ``add`` (packed) as they are found."""
    from curate.dedup.semantic import kmeans

    n = len(x)
    cells = max(1, min(n, round(np.sqrt(n) / 2)))
    rng = np.random.default_rng(cfg.seed)
    fit = x[:] if n <= FIT_ROWS else x[np.sort(rng.choice(n, FIT_ROWS, replace=False))]
    _, centres = kmeans(fit, min(cells, len(fit)), iterations=10, seed=cfg.seed)
    del fit
    probes = min(cfg.probes, len(centres))
    ranges = max(1, min(len(centres), -(-n * probes // MEMBERSHIPS)))
    member = np.dtype([("cell", "<i4"), ("row", "<i8")])
    members = Buckets(work, "cells", ranges, member)
    chunk = max(1, MEMBERSHIPS // probes // SEARCH_BLOCK) * SEARCH_BLOCK  # whole blocks of rows
    for s in range(0, n, chunk):
        rows = np.arange(s, min(n, s + chunk))
        # Each block's nearest cells, picked out of its similarities to every centre (a full argsort of
        # them took 28x as long: ~7 ms a block of 1,024 rows at 500 cells, 1M rows; cells grow as sqrt(n)).
        near = np.concatenate(
            [
                top_columns(x[b : min(b + SEARCH_BLOCK, n)] @ centres.T, probes)[0].astype(np.int32)
                for b in range(s, s + len(rows), SEARCH_BLOCK)
            ]
        )
        rec = np.empty(near.size, member)
        rec["cell"], rec["row"] = near.ravel(), np.repeat(rows, probes)
        members.add(rec, rec["cell"].astype(np.int64) * ranges // len(centres))
    pending: list[np.ndarray] = []
    for found in map_fn(cells_pairs, _jobs(x, members, cfg, n)):
        pending.append(found)
        if sum(len(p) for p in pending) > FLUSH:
            add(np.concatenate(pending))
            pending = []
    if pending:
        add(np.concatenate(pending))


def _jobs(x, members: Buckets, cfg, n: int) -> Iterator[tuple]:
    """The search's jobs: each range of cells' records, sorted by cell, in pieces of whole cells of about
    ``SEARCH_JOB`` records."""
    for rec in members:
        # Rows of each cell, ascending: records came in row order, and the sort by cell is stable.
        rec = rec[np.argsort(rec["cell"], kind="stable")]
        bounds = _cell_bounds(rec["cell"])
        ends = bounds[np.searchsorted(bounds, np.arange(SEARCH_JOB, len(rec), SEARCH_JOB))]  # a cell's end each
        cuts = np.unique(np.r_[0, ends, len(rec)])
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            yield x, rec[a:b], cfg, n


def _cell_bounds(cells: np.ndarray) -> np.ndarray:
    """Where each cell of sorted ``cells`` starts, and the end: cell k is ``bounds[k]:bounds[k + 1]``."""
    return np.flatnonzero(np.r_[True, cells[1:] != cells[:-1], True])


def cells_pairs(x, rec: np.ndarray, cfg, n: int) -> np.ndarray:
    """The pairs (packed) of every cell of ``rec`` ((cell, row) records sorted by cell, rows ascending
    within a cell)."""
    keep_freed_heap()  # each cell's similarities are made and dropped a block at a time
    bounds = _cell_bounds(rec["cell"])
    out = [np.zeros(0, np.int64)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b - a >= 2:
            out += _cell_pairs(x, rec["row"][a:b], cfg, n)
    return np.concatenate(out)


def _cell_pairs(x, rows: np.ndarray, cfg, n: int) -> list[np.ndarray]:
    """Each of ``rows``' ``cfg.neighbours`` nearest rows among ``rows`` (one cell), above ``min_cosine``."""
    k = min(cfg.neighbours, len(rows) - 1)
    xr = x[rows]
    # A block of rows against its whole cell: cells grow as sqrt(n) on average and far more where
    # images crowd, so the block shrinks as the cell grows: at most CELL_SIMS similarities at once
    # (float32; their ranking, :func:`nearest`, holds a few values a row more).
    step = max(16, min(SEARCH_BLOCK, CELL_SIMS // len(rows)))
    out = []
    for s in range(0, len(rows), step):
        sims = xr[s : s + step] @ xr.T
        sims[np.arange(sims.shape[0]), np.arange(s, s + sims.shape[0])] = -2.0  # not oneself
        i, j = nearest(sims, k, cfg.min_cosine)
        out.append(packed(rows[s + i], rows[j], n))
    return out


def nearest(sims: np.ndarray, k: int, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of each row's ``k`` largest values at or above ``floor``; of values tied at a row's
    k-th largest, those of the lowest columns. ``sims`` is used up (see :func:`top_columns`)."""
    cols, values = top_columns(sims, k)
    keep = values >= floor
    return np.broadcast_to(np.arange(len(sims))[:, None], cols.shape)[keep], cols[keep]


def top_columns(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(columns, values), each (rows, ``k``): each row's ``k`` largest values, largest first, ties to the
    lowest column. ``values`` is used up: each pick is overwritten with -inf.

    ``k`` rounds of each row's first maximum: a pass each, ~0.1 ns a value (``np.argpartition`` was 70%
    of the neighbour search at 186,000 rows, 14x slower at ``k`` = 6, and broke ties as its
    implementation happened to).
    """
    rows = np.arange(len(values))
    cols = np.empty((len(values), k), np.int64)
    picked = np.empty((len(values), k), values.dtype)
    for t in range(k):
        cols[:, t] = j = values.argmax(axis=1)
        picked[:, t] = values[rows, j]
        values[rows, j] = -np.inf
    return cols, picked
