"""The neighbour search the near-copy detection runs on its search vectors (curate.dedup.neighbours): the
planted neighbours found, each row's k nearest kept exactly, memory held to a block and spilled, the same
pairs whether run in one go or as jobs of whole cells (the thumbnails' copies: test_copies.py)."""

import numpy as np
import pytest

from curate.dedup.align import CopyConfig
from curate.dedup.copies import search_vectors
from curate.dedup.neighbours import neighbour_pairs


def test_neighbour_search_finds_planted_neighbours_without_comparing_all_pairs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 192)).astype(np.float32)
    x[2000:2300] = x[:300] + 0.3 * rng.normal(size=(300, 192))  # planted neighbours, cosine ~0.96
    v = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = neighbour_pairs(v, CopyConfig(neighbours=3, min_cosine=0.7))
    got = set(zip(i.tolist(), j.tolist(), strict=True))
    assert sum((k, 2000 + k) in got for k in range(300)) >= 0.95 * 300
    assert ((v[i] * v[j]).sum(axis=1) >= 0.7).all() and (i < j).all()


@pytest.mark.parametrize("seed", range(6))
def test_nearest_keeps_each_rows_k_largest_above_the_floor_ties_to_the_lowest_columns(seed):
    from curate.dedup.neighbours import nearest, top_columns

    rng = np.random.default_rng(seed)
    rows, cols, k = int(rng.integers(1, 40)), int(rng.integers(2, 200)), int(rng.integers(1, 8))
    # Values on a coarse grid, so rows have many ties, some of them at the k-th largest (exact copies in
    # a pool give equal similarities).
    sims = rng.integers(-10, 11, (rows, cols)).astype(np.float32) / 10
    floor = float(rng.choice([-1.0, 0.0, 0.5, 0.9]))
    want = set()
    for r in range(rows):
        order = np.lexsort((np.arange(cols), -sims[r]))[:k]  # largest first, then lowest column
        want |= {(r, int(c)) for c in order if sims[r, c] >= floor}
    i, j = nearest(sims.copy(), k, floor)
    assert len(i) == len(want) and set(zip(i.tolist(), j.tolist(), strict=True)) == want
    # The ranking the search's nearest cells come from too: in order, largest first, ties to the lowest.
    top = min(k, cols)
    picked, values = top_columns(sims.copy(), top)
    order = np.lexsort((np.broadcast_to(np.arange(cols), sims.shape), -sims), axis=1)[:, :top]
    assert np.array_equal(picked, order) and np.array_equal(values, np.take_along_axis(sims, order, axis=1))


def test_neighbour_search_holds_a_block_of_cells_not_every_rows_ranking():
    """Each row's nearest cells were kept as slices of each block's full ranking of all cells, so the
    search held n x sqrt(n) / 2 int64 (340 MB at 200,000 thumbnails; 88 MB traced here, where the search
    itself needs ~36 MB: candidate pairs and one block of similarities)."""
    import tracemalloc

    x = np.random.default_rng(0).normal(size=(80_000, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tracemalloc.start()
    try:
        i, _ = neighbour_pairs(x, CopyConfig())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(i) > 80_000
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MB traced"


def test_the_neighbour_search_spills_what_grows_with_the_pool(tmp_path, monkeypatch):
    """Cells, pairs and flushes cut small: the candidates read back a range at a time are the pairs the
    search finds in one range, and what it holds barely grows from 20,000 to 80,000 rows (the search that
    held every row's cells and every pair found, merged in memory: 10 -> 30 MB traced here)."""
    import tracemalloc

    from curate.dedup import neighbours

    def unit(n):
        x = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def search(x, name):
        tracemalloc.start()
        try:
            found = [b for b in neighbours.candidates(x, CopyConfig(), tmp_path / name)]
            return found, tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()

    for name in ("whole", "cut", "big"):
        (tmp_path / name).mkdir()
    whole, _ = search(unit(20_000), "whole")
    monkeypatch.setattr(neighbours, "PAIRS", 4096)
    monkeypatch.setattr(neighbours, "MEMBERSHIPS", 1 << 14)
    monkeypatch.setattr(neighbours, "FLUSH", 1 << 14)
    monkeypatch.setattr(neighbours, "CELL_SIMS", 1 << 16)
    cut, small = search(unit(20_000), "cut")
    assert len(whole) == 1 and len(cut) == 5 and np.array_equal(whole[0], np.concatenate(cut))
    assert all((np.diff(b) > 0).all() for b in cut) and not list((tmp_path / "cut").iterdir())
    _, large = search(unit(80_000), "big")
    assert large < 12 and large - small < 8, f"{small:.1f} MB at 20,000 rows, {large:.1f} MB at 80,000"


def test_the_neighbour_search_in_jobs_of_whole_cells_finds_the_same_pairs(tmp_path, monkeypatch):
    """Cut into many jobs (a build runs them as Ray tasks on the dedup task's node), each of whole cells,
    and run in another order, the search finds exactly the pairs it finds in one go."""
    from curate.dedup import neighbours

    x = np.random.default_rng(3).normal(size=(20_000, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for name in ("one", "jobs"):
        (tmp_path / name).mkdir()
    one = list(neighbours.candidates(x, CopyConfig(), tmp_path / "one"))
    monkeypatch.setattr(neighbours, "SEARCH_JOB", 1 << 11)
    jobs = []

    def backwards(fn, given):  # every job computed, last first; results handed back in order
        jobs.extend(given)
        return reversed([fn(*job) for job in reversed(jobs)])

    cut = list(neighbours.candidates(x, CopyConfig(), tmp_path / "jobs", map_fn=backwards))
    assert len(one) == len(cut) == 1 and np.array_equal(one[0], cut[0]) and len(one[0]) > 50_000
    cells = [job[1]["cell"] for job in jobs]
    assert len(jobs) > 20 and all(len(c) <= 2 * (1 << 11) for c in cells)  # ~2,048 records each, whole cells
    assert len(np.unique(np.concatenate(cells))) == sum(len(np.unique(c)) for c in cells)  # no cell in two


def test_search_vectors_are_unit_and_mean_free():
    t = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3)).astype(np.float32)
    v = search_vectors(t)
    assert v.shape == (5, 192)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4) and np.allclose(v.mean(axis=1), 0, atol=1e-5)
