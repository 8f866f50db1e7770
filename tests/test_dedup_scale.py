"""Partitioned dedup (curate.dedup.partitioned) decides exactly as the in-memory path does."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.dedup import DedupConfig, deduplicate
from curate.dedup.partitioned import deduplicate_partitioned, partitions
from synthweb.copies import FAMILIES, near_copy
from synthweb.hashpool import PoolConfig, pool
from tests.photos import encode, photo
from tests.test_copies import annotation_table


def busy_pool(n=20_000, seed=3):
    """Planted exact, re-encoded, near and placeholder copies, plus null hashes, repeated captions,
    unknown shapes, and a quality with ties and NaNs."""
    table, truth = pool(n, PoolConfig(seed=seed, near=0.08, placeholder=0.01))
    rng = np.random.default_rng(seed)
    nulls = rng.random(n) < 0.01
    phash = pa.array(table.column("phash").to_numpy(), pa.uint64(), mask=nulls)
    width = pa.array(table.column("width").to_numpy(), pa.int32(), mask=rng.random(n) < 0.01)
    captions = [f"a photo of thing {k % 3000}" if k % 7 else None for k in range(n)]
    table = (
        table.set_column(3, "phash", phash).set_column(4, "width", width).append_column("caption", pa.array(captions))
    )
    quality = np.round(rng.random(n), 2)
    quality[rng.random(n) < 0.02] = np.nan
    return table, quality, rng.random(n) < 0.8


@pytest.mark.parametrize("partition_rows", [10**9, 3_000, 97])
@pytest.mark.parametrize("kinds", ["default", "captions", "wide bands"])
def test_partitioned_decisions_are_the_in_memory_ones(partition_rows, kinds):
    table, quality, prefer = busy_pool()
    cfg = DedupConfig(semantic=False, captions=kinds == "captions")
    if kinds == "wide bands":  # the setting README suggests for 1B hashes
        cfg = replace(cfg, near_bands=2, near_tables=110)
    want = deduplicate(table, cfg, quality=quality, prefer=prefer)
    got = deduplicate(table, replace(cfg, partition_rows=partition_rows), quality=quality, prefer=prefer)
    assert got.equals(want)
    kinds_seen = set(want.column("dup_kind").to_pylist())
    assert {"exact", "pixels", "near"} <= kinds_seen  # the pool exercises every link kind
    assert ("caption" in kinds_seen) == (kinds == "captions")


def test_parquet_files_in_decisions_out_the_same_bytes(tmp_path):
    table, _, _ = busy_pool(8_000, seed=5)
    files = []
    for k, part in enumerate([table.slice(0, 3_000), table.slice(3_000, 1), table.slice(3_001)]):
        files.append(str(tmp_path / f"{k:05d}.parquet"))
        pq.write_table(part, files[-1])
    cfg = DedupConfig(semantic=False, partition_rows=1_000)
    memory = deduplicate(table, replace(cfg, partition_rows=0))
    # What the dedup stage writes: the same bytes from either path.
    pq.write_table(memory, tmp_path / "memory.parquet")
    pq.write_table(deduplicate(table, cfg), tmp_path / "partitioned.parquet")
    assert (tmp_path / "partitioned.parquet").read_bytes() == (tmp_path / "memory.parquet").read_bytes()
    # Streamed from the files, written a batch at a time: the same rows.
    work = tmp_path / "work"
    work.mkdir()
    assert deduplicate_partitioned(files, cfg, out=str(tmp_path / "streamed.parquet"), workdir=str(work)) is None
    assert pq.read_table(tmp_path / "streamed.parquet").equals(memory)
    assert list(work.iterdir()) == []  # the spill is gone


def test_verified_near_copies_and_semantic_links_are_decided_alike(monkeypatch):
    from curate.dedup import neighbours

    rng = np.random.default_rng(32)
    blobs = []
    for s in range(10):
        im = photo(s, (32, 24))
        blobs += [encode(im)] + [near_copy(im, f, rng) for f in FAMILIES]
    table = annotation_table(blobs)
    e = rng.normal(size=(table.num_rows, 8)).astype(np.float32)
    e[5] = e[40] + 1e-4
    for cfg in (DedupConfig(semantic=False), DedupConfig(semantic=True), DedupConfig(verify=False, semantic=False)):
        want = deduplicate(table, cfg, embeddings=e)
        assert want.column("dup_of").null_count < table.num_rows - 40  # copies were found
        assert deduplicate(table, replace(cfg, partition_rows=7), embeddings=e).equals(want)
        with monkeypatch.context() as m:  # candidates spilled and read back 8 rows' worth at a time
            m.setattr(neighbours, "PAIRS", 8)
            assert deduplicate(table, replace(cfg, partition_rows=7), embeddings=e).equals(want)


def test_empty_and_hashless_pools():
    empty = pa.table({"uid": pa.array([], pa.string()), "phash": pa.array([], pa.uint64())})
    cfg = DedupConfig(partition_rows=10)
    assert deduplicate(empty, cfg).num_rows == 0
    nulls = pa.table(
        {
            "uid": ["a", "b"],
            "sha256": pa.array([None, None], pa.string()),
            "phash": pa.array([None, None], pa.uint64()),
        }
    )
    assert deduplicate(nulls, cfg).equals(deduplicate(nulls))


def test_partition_count_follows_rows_per_partition():
    assert partitions(10, 0) == 1 and partitions(10, 100) == 1
    assert partitions(10_000_000, 1_000_000) == 10
    assert partitions(10**12, 1_000) == 1024  # bounded open files; partitions grow instead


def test_band_pairs_are_made_unique_as_they_pile_up():
    """A pair close in several bands is found once per band: 4M pairs found here, 200,000 distinct. Kept
    as two int64 each and made unique at the end, they took 16 bytes a pair found (the 465,000-image
    synthetic web's pHash bands: 220 MB traced; the same done here, 187 MB); packed and merged as they come, the
    distinct pairs and at most ``PENDING`` more (38 MB here, the test's own arrays included)."""
    import tracemalloc

    from curate.dedup.neighbours import PackedPairs

    rng = np.random.default_rng(0)
    n = 1_000_000
    i, j = rng.integers(0, n, 200_000), rng.integers(0, n, 200_000)
    want = np.unique(np.minimum(i, j) * n + np.maximum(i, j))
    found = PackedPairs(n)
    tracemalloc.start()
    try:
        for _ in range(20):  # the same pairs found again and again, either way round, in any order
            order = rng.permutation(len(i))
            found.add(j[order], i[order])
        got_i, got_j = found.pairs()
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert np.array_equal(got_i * n + got_j, want) and (got_i <= got_j).all()
    assert peak < 50, f"{peak:.0f} MB traced for 4M pairs found, {len(want):,} distinct"


def test_candidates_to_verify_are_spilled_as_found_and_read_back_a_range_at_a_time(tmp_path, monkeypatch):
    """The pHash bands' candidates, when they are to be verified, are never held whole: 2M distinct pairs
    found twice each, 80,000 at a time, come back once each, ascending, a range of rows at a time, with
    what is traced bounded by one add: 4 MB (held packed, as ``PackedPairs`` holds them, then handed out a
    range at a time: 103 MB)."""
    import tracemalloc

    from curate.dedup import neighbours

    monkeypatch.setattr(neighbours, "PAIRS", 1 << 14)
    rng = np.random.default_rng(1)
    n = 1_000_000
    i, j = rng.integers(0, n, 2_000_000), rng.integers(0, n, 2_000_000)
    i, j = i[i != j], j[i != j]
    want = np.unique(np.minimum(i, j) * n + np.maximum(i, j))
    found = neighbours.SpilledPairs(n, tmp_path)
    orders = [rng.permutation(len(i)) for _ in range(2)]
    tracemalloc.start()
    try:
        for order in orders:  # each pair found again, the other way round, in another order
            for s in range(0, len(i), 80_000):
                found.add(j[order[s : s + 80_000]], i[order[s : s + 80_000]])
                i, j = j, i
        at, ranges, k = 0, 0, -(-n // neighbours.PAIRS)
        for got_i, got_j in found:
            got = got_i * n + got_j
            assert np.array_equal(got, want[at : at + len(got)]) and (got_i < got_j).all()
            assert len(np.unique(got_i * k // n)) == 1  # one range of lo rows
            at, ranges = at + len(got), ranges + 1
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert at == len(want) and ranges == k and list(tmp_path.iterdir()) == []
    assert peak < 10, f"{peak:.0f} MB traced for {len(want):,} distinct pairs"


def test_pairs_filtered_as_they_are_made_are_the_pairs_filtered_at_the_end(monkeypatch):
    """Clustered hashes (long runs of equal band keys): filtering every few pairs made, or all at once,
    keeps the same pairs in the same order; and ``unique_ints`` is ``np.unique`` by a sort."""
    from curate.dedup import near

    rng = np.random.default_rng(1)
    centres = rng.integers(0, 2**63, 40, dtype=np.int64).astype(np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (6000, 3)).astype(np.uint64)
    hashes = np.unique(centres[rng.integers(0, 40, 6000)] ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2])
    whole = near.near_pairs(hashes)
    monkeypatch.setattr(near, "RAW_PAIRS", 7)
    cut = near.near_pairs(hashes)
    assert len(whole[0]) > 1000 and all(np.array_equal(a, b) for a, b in zip(whole, cut, strict=True))
    for a in (np.zeros(0, np.int64), rng.integers(-50, 50, 1000), rng.integers(0, 2**40, 10_000)):
        assert np.array_equal(near.unique_ints(a), np.unique(a))


def test_band_masks_fanned_out_over_the_cluster_decide_as_in_one_process(ray_local):
    """In a build's dedup task the pHash band masks are jobs too (each mask a Ray task anywhere in the
    cluster, scattering the distinct values, read from the task's node through a replica on its own, into
    partitions in its node's scratch directory and searching each): the decisions are those made in one
    process, the jobs ran on more than one of the session's three nodes, and no replica or partition
    file is left behind. Each partition of the group keys is a job as well."""
    import ray

    from curate.core import storage

    scratch = Path(storage.scratch_dir())
    before = {p.name for p in scratch.glob("clip-tiers-*")}

    from curate.core import raypool
    from curate.dedup.copies import verifying_with

    table, quality, prefer = busy_pool(6_000)
    cfg = DedupConfig(semantic=False, partition_rows=1_000)
    want = deduplicate(table, cfg, quality=quality, prefer=prefer)

    @ray.remote(num_cpus=1)
    def dedup_task():
        ran = []

        def traced(fn, jobs):
            node = lambda *job: (fn(*job), ray.get_runtime_context().get_node_id())  # noqa: E731
            for out, where in raypool.fan_out(node, jobs):
                ran.append((fn.__name__, where))
                yield out

        with verifying_with(traced):
            return deduplicate(table, cfg, quality=quality, prefer=prefer), ran

    got, ran = ray.get(dedup_task.remote(), timeout=300)
    assert got.equals(want)
    bands = [node for name, node in ran if name == "mask_pairs"]
    assert len(bands) == 30 and len(set(bands)) >= 2
    # The partitions of the group keys are jobs too, one each.
    assert sum(name == "group_links" for name, _ in ran) == 2 * partitions(6_000, 1_000)  # sha256, pixels
    assert {p.name for p in scratch.glob("clip-tiers-*")} <= before


def test_the_phash_search_is_chosen_by_the_pool_size(monkeypatch):
    """``near_bands`` / ``near_tables`` left 0: 3 bands x 10 tables below ``LARGE_POOL`` rows, 2 x 110 from it
    on (a mask's random candidates grow as n^2 / 2^bits, its sort as n); both paths choose alike, and a
    value set is kept."""
    import curate.dedup.decide as decide
    from curate.core.config import from_dict
    from curate.core.errors import InputError

    table, quality, prefer = busy_pool(6_000, seed=7)
    cfg = DedupConfig(semantic=False)
    small, large = replace(cfg, near_bands=3, near_tables=10), replace(cfg, near_bands=2, near_tables=110)
    want_small = deduplicate(table, small, quality=quality, prefer=prefer)
    want_large = deduplicate(table, large, quality=quality, prefer=prefer)
    assert not want_small.equals(want_large)  # the two searches miss different far pairs here
    assert deduplicate(table, cfg, quality=quality, prefer=prefer).equals(want_small)
    monkeypatch.setattr(decide, "LARGE_POOL", 6_000)
    assert deduplicate(table, cfg, quality=quality, prefer=prefer).equals(want_large)
    partitioned = replace(cfg, partition_rows=1_000)
    assert deduplicate(table, partitioned, quality=quality, prefer=prefer).equals(want_large)
    assert cfg.for_rows(6_000) == large and cfg.for_rows(5_999) == small
    assert replace(cfg, near_tables=50).for_rows(6_000).near_tables == 50
    for bad in ({"near_bands": 65}, {"near_tables": -1}):
        with pytest.raises(InputError, match=r"\[dedup\] near_"):
            from_dict(DedupConfig, bad, section="dedup")


def test_the_pool_size_the_stage_chooses_by_is_the_annotation_tables(tmp_path):
    """``run_dedup`` chooses by the annotation table's rows: the rankings' length where given (they are
    aligned with it), else the annotation files' footers (the files its key fingerprints)."""
    from curate.dedup.stage import _pool_rows

    (tmp_path / "annotations" / "embeddings").mkdir(parents=True)
    for name, n in (("00000", 30), ("00001", 20)):
        pq.write_table(
            pa.table({"uid": [f"{name}-{k}" for k in range(n)]}), tmp_path / "annotations" / f"{name}.parquet"
        )
    assert _pool_rows(str(tmp_path), None, None) == 50
    assert _pool_rows(str(tmp_path), np.zeros(7), None) == 7 == _pool_rows(str(tmp_path), None, np.ones(7, bool))
    assert _pool_rows(str(tmp_path / "elsewhere"), None, None) == 0  # nothing annotated: the small-pool search


def test_a_large_pool_is_told_which_search_it_gets(caplog):
    import logging

    from curate.dedup.decide import LARGE_POOL
    from curate.dedup.stage import _search_for

    with caplog.at_level(logging.INFO, logger="curate.dedup.stage"):
        assert _search_for(DedupConfig(), LARGE_POOL - 1).near_bands == 3
        assert not caplog.records  # a pool as before: nothing to say
        assert _search_for(DedupConfig(), LARGE_POOL).near_tables == 110
        assert "2 bands x 110 tables" in caplog.text and f"{LARGE_POOL:,} rows" in caplog.text
        caplog.clear()
        assert _search_for(DedupConfig(near_bands=3, near_tables=10), LARGE_POOL).near_bands == 3  # asked for
        assert not caplog.records
