"""Near-copy detection with thumbnails: transformed copies are found, distinct images are left alone."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from curate.annotate import image as img
from curate.core import schema
from curate.dedup import DedupConfig, deduplicate
from curate.dedup.align import CopyConfig, verify
from curate.dedup.copies import copy_pairs, flat, thumbs
from synthweb.copies import FAMILIES, near_copy
from tests.photos import encode, photo


def annotation_table(blobs: list[bytes]) -> pa.Table:
    """The columns the annotate stage writes for dedup, measured by its own decoder and signals."""
    rows = []
    for k, data in enumerate(blobs):
        dec, err = img.decode(data)
        assert err is None
        m = img.measure(dec.pixels)
        rows.append(
            {
                "uid": f"u{k:04d}",
                "sha256": img.sha256(data),
                "pixel_hash": m.pixel_hash,
                "phash": m.phash,
                "width": m.width,
                "height": m.height,
                "thumb": m.thumb,
            }
        )
    return pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("uid", pa.string()),
                ("sha256", pa.string()),
                ("pixel_hash", pa.string()),
                ("phash", pa.uint64()),
                ("width", pa.int32()),
                ("height", pa.int32()),
                (schema.THUMB, pa.binary(schema.THUMB_BYTES)),
            ]
        ),
    )


@pytest.mark.parametrize("side", [32, 256])
def test_every_family_of_near_copy_is_found_and_distinct_photos_stay(side):
    rng = np.random.default_rng(side)
    originals = [photo(s, (side, side * 3 // 4)) for s in range(24)]
    blobs, source = [], []
    for k, im in enumerate(originals):
        blobs.append(encode(im))
        source.append(k)
        for family in FAMILIES:
            blobs.append(near_copy(im, family, rng))
            source.append(k)
    out = deduplicate(annotation_table(blobs), DedupConfig(semantic=False)).to_pydict()
    cluster = [d or u for u, d in zip(out["uid"], out["dup_of"], strict=True)]
    original = {s: cluster[k] for k, s in enumerate(source) if k % (len(FAMILIES) + 1) == 0}
    found = {f: [] for f in FAMILIES}
    for k, (s, c) in enumerate(zip(source, cluster, strict=True)):
        if k % (len(FAMILIES) + 1):
            found[FAMILIES[k % (len(FAMILIES) + 1) - 1]].append(c == original[s])
    # Each single transformation is always found; all of them at once (a 32 px photo halved, cropped,
    # re-toned and saved at JPEG quality 30 keeps little detail) nearly always.
    assert all(all(v) for f, v in found.items() if f != "combined"), found
    assert np.mean(found["combined"]) >= 0.85
    # No two distinct photos share a cluster.
    assert len(set(original.values())) == len(originals)


def test_phash_alone_misses_crops_that_the_verified_search_finds():
    rng = np.random.default_rng(3)
    blobs = []
    for s in range(16):
        im = photo(100 + s, (64, 48))
        blobs += [encode(im), near_copy(im, "crop", rng)]
    table = annotation_table(blobs)
    found = sum(d is not None for d in deduplicate(table, DedupConfig(semantic=False)).column("dup_of").to_pylist())
    old = DedupConfig(semantic=False, verify=False)
    found_old = sum(d is not None for d in deduplicate(table, old).column("dup_of").to_pylist())
    assert found == 16 and found_old < 16


def test_same_background_with_the_object_elsewhere_is_not_a_copy():
    """Two sky photos with a small aeroplane in different places correlate in colour, not in detail."""
    sky = Image.fromarray(np.linspace([90, 140, 230], [150, 190, 250], 64).astype(np.uint8)[:, None].repeat(64, 1))
    a, b = sky.copy(), sky.copy()
    ImageDraw.Draw(a).polygon([(10, 12), (26, 16), (10, 20)], fill=(40, 40, 40))
    ImageDraw.Draw(b).polygon([(40, 44), (56, 48), (40, 52)], fill=(40, 40, 40))
    table = annotation_table([encode(a), encode(b)])
    _, t, grey = thumbs(table.column(schema.THUMB), 2)
    sim, detail = verify(t[:1], t[1:], grey[:1], grey[1:])
    assert sim[0] > 0.9  # the colours alone would call them copies
    assert detail[0] < CopyConfig().min_detail
    assert deduplicate(table, DedupConfig(semantic=False)).column("dup_of").null_count == 2


def test_detail_is_measured_only_where_the_similarity_can_make_a_copy(monkeypatch):
    """``detail_from`` skips the second figure below the copy threshold and changes nothing else: the same
    similarities, the same details above it, and the same pairs kept, with either image of a pair the crop,
    at 32 px (detail at 16 px) and 96 px, in blocks larger than one. How many windows are scored at a time
    changes nothing either."""
    from curate.dedup import align, copies

    rng = np.random.default_rng(5)
    blobs, sides = [], []
    for s in range(12):
        side = 32 if s % 3 == 0 else 96
        im = photo(s, (side, side * 3 // 4))
        blobs += [encode(im)] + [near_copy(im, f, rng) for f in FAMILIES]
        sides += [side] * (1 + len(FAMILIES))
    _, t, grey = thumbs(annotation_table(blobs).column(schema.THUMB), len(blobs))
    i, j = np.triu_indices(len(blobs), 1)
    swap = rng.random(len(i)) < 0.5  # either image first
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    side = np.array(sides)
    coarse = np.minimum(side[i], side[j]) < img.DETAIL_SIDE
    cfg = CopyConfig()
    sim, detail = verify(t[i], t[j], grey[i], grey[j], cfg, coarse)
    sim_from, detail_from = verify(t[i], t[j], grey[i], grey[j], cfg, coarse, detail_from=cfg.min_similarity)
    above = sim >= cfg.min_similarity
    assert len(i) > align.PAIR_BLOCK and 0 < above.sum() < len(i) // 10
    assert np.array_equal(sim, sim_from)
    assert np.array_equal(detail[above], detail_from[above]) and np.isnan(detail_from[~above]).all()
    kept = above & (detail >= cfg.min_detail)
    assert kept.sum() >= 12 * len(FAMILIES) - 2  # the copies are among them
    got_i, got_j = copies.verified_pairs(t, grey, i, j, cfg, coarse)
    assert np.array_equal(got_i, i[kept]) and np.array_equal(got_j, j[kept])
    for windows in (1, 49):  # one window at a time, every coarse window at once
        monkeypatch.setattr(align, "WINDOWS_AT_ONCE", windows)
        again = verify(t[i], t[j], grey[i], grey[j], cfg, coarse)
        assert np.array_equal(again[0], sim) and np.array_equal(again[1], detail)


def test_flat_images_are_never_near_copies():
    blobs = [encode(Image.new("RGB", (40, 40), (200, 200, 200 - k))) for k in range(3)]
    table = annotation_table(blobs)
    _, t, grey = thumbs(table.column(schema.THUMB), 3)
    assert flat(t).all()
    assert len(copy_pairs(t, grey)[0]) == 0


def test_tables_without_thumbnails_keep_the_phash_rule():
    t = annotation_table([encode(photo(7))]).drop_columns([schema.THUMB])
    assert deduplicate(t, DedupConfig(semantic=False)).column("dup_of").null_count == 1


def test_the_build_stage_verifies_near_copies_with_the_stored_thumbnails(tmp_path, monkeypatch):
    """`tiers build` / `tiers dedup` decide from the stored annotations: they must read the thumbnails,
    or every near copy falls back to the pHash-only rule (crops missed)."""
    import curate.annotate
    import curate.dedup.stage
    from curate.dedup.stage import run_dedup

    rng = np.random.default_rng(3)
    blobs = []
    for s in range(16):
        im = photo(100 + s, (64, 48))
        blobs += [encode(im), near_copy(im, "crop", rng)]
    t = annotation_table(blobs)
    n = t.num_rows
    t = t.append_column(schema.ORIGINAL_WIDTH, t.column("width")).append_column(
        schema.ORIGINAL_HEIGHT, t.column("height")
    )
    t = t.append_column(schema.CAPTION, pa.array([f"c{k}" for k in range(n)]))
    t = t.append_column(schema.DECODE_ERROR, pa.nulls(n, pa.string()))
    monkeypatch.setattr(curate.annotate, "annotation_columns", lambda d: t.column_names)
    monkeypatch.setattr(curate.annotate, "read_annotations", lambda d, columns=None: t.select(columns))
    # The thumbnails are read shard by shard (spilled, never held whole): two shards here.
    monkeypatch.setattr(curate.annotate, "annotation_tables", lambda d, columns: iter([t.slice(0, 9), t.slice(9)]))
    # The stand-in readers live in this process: the unit must run here, not as the Ray task a build's dedup
    # is when the test session has Ray up.
    monkeypatch.setattr(curate.dedup.stage, "ray_running", lambda: False)
    # In memory: the partitioned stage reads the annotation files themselves (tests/test_build.py).
    summary = run_dedup(tmp_path, DedupConfig(semantic=False, partition_rows=0))
    assert summary.duplicates == 16
    # The pHash search chosen for the pool's size, recorded in what the decisions were made from.
    assert (summary.key["config"]["near_bands"], summary.key["config"]["near_tables"]) == (3, 10)


def test_no_rows_to_compare_is_no_duplicates():
    """A build where nothing decoded reaches dedup with an empty table; it must decide nothing, not fail."""
    t = annotation_table([]).slice(0, 0)
    assert deduplicate(t, DedupConfig(semantic=False)).num_rows == 0


def test_spilled_thumbnails_read_each_row_once_for_colour_and_grey(tmp_path, monkeypatch):
    """Verification reads a block of candidate pairs' thumbnails from the spilled file: the colour and
    grey views of one row come from one read of it, in the order asked, repeats included."""
    import os

    from curate.dedup import thumbstore

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (300, schema.THUMB_BYTES), dtype=np.uint8)
    spilled = thumbstore.write_rows(tmp_path / "t.bin", [stored[:128], stored[128:]], np.uint8, (schema.THUMB_BYTES,))
    colour = spilled.view(slice(0, 768), (16, 16, 3))
    grey = spilled.view(slice(768, None), (32, 32))
    read = []
    real = os.pread
    monkeypatch.setattr(thumbstore.os, "pread", lambda fd, n, at: read.append(n) or real(fd, n, at))
    for rows in (np.array([5, 299, 5, 17, 0, 18, 19]), np.arange(0), rng.integers(0, 300, 1024)):
        read.clear()
        c, g = thumbstore.take((colour, grey), rows)
        assert np.array_equal(c, stored[rows, :768].reshape(-1, 16, 16, 3))
        assert np.array_equal(g, stored[rows, 768:].reshape(-1, 32, 32))
        assert sum(read) == len(np.unique(rows)) * schema.THUMB_BYTES
        assert np.array_equal(colour[rows], c) and np.array_equal(grey[rows], g)


def test_the_detail_band_is_each_grey_image_minus_its_3x3_mean():
    """Within float32 rounding of the exact box mean (summed-area tables lost ~4e-3 of a grey level)."""
    from curate.dedup.align import _high_pass

    x = (np.random.default_rng(1).random((64, 32, 32)) * 255).astype(np.float32)
    pad = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1)), mode="edge")
    want = x - sum(pad[:, dy : dy + 32, dx : dx + 32] for dy in range(3) for dx in range(3)) / 9
    assert np.abs(_high_pass(x) - want).max() < 1e-4


def test_a_dedup_task_fans_its_jobs_out_over_the_cluster_and_finds_the_same_pairs(ray_local):
    """In a build the dedup task (a Ray task holding one CPU) hands its neighbour search's jobs and its
    chunks of candidates to Ray tasks across the cluster (the session's three one-CPU nodes), which read
    the spilled vectors and thumbnails on the task's node or a replica pulled to their own: the pairs are
    those found in one process, in the same order; the jobs ran in other processes (the task gives its CPU
    back while it waits) and on more than one node; the replicas are gone when the thumbnails are."""
    import os

    import ray

    from curate.core import nodefiles, raypool
    from curate.dedup import copies, neighbours
    from curate.dedup.thumbstore import spilled_thumbs

    rng = np.random.default_rng(5)
    blobs = []
    for s in range(12):
        im = photo(200 + s, (64, 48))
        blobs += [encode(im)] + [near_copy(im, f, rng) for f in FAMILIES]
    table = annotation_table(blobs)

    def where(fn):
        def run(*job):
            node = ray.get_runtime_context().get_node_id()
            src = Path(job[0].path)  # the spilled file the job reads: thumbnails, or the search vectors
            return fn(*job), os.getpid(), node, (src, nodefiles.replica_dir(str(src.parent), job[0].origin))

        return run

    @ray.remote(num_cpus=1, max_calls=1)  # its worker exits after it: no later task sees the chunk size
    def dedup_task(colour, grey, scratch: str):
        copies.VERIFY_CHUNK = 16  # several chunks, so several tasks
        neighbours.SEARCH_JOB = 8  # and the neighbour search in several jobs
        ran = []

        def traced(fn, jobs):
            for out, pid, node, replicas in raypool.fan_out(where(fn), jobs):
                ran.append((fn.__name__, pid, node, replicas))
                yield out

        with copies.verifying_with(traced):
            return copy_pairs(colour, grey, scratch=scratch), os.getpid(), ran

    with spilled_thumbs([table.column(schema.THUMB)]) as (_, store, scratch):
        assert store.origin == ray.get_runtime_context().get_node_id()  # the driver's node wrote it
        colour = store.view(slice(0, copies.COLOUR_BYTES), (copies.THUMB_SIDE, copies.THUMB_SIDE, 3))
        grey = store.view(slice(copies.COLOUR_BYTES, None), (copies.DETAIL_SIDE, copies.DETAIL_SIDE))
        want = copy_pairs(colour, grey, scratch=scratch)
        (got, pid, ran) = ray.get(dedup_task.remote(colour, grey, scratch), timeout=180)
        # Each job on another node read a whole replica of its own file (a node that ran search jobs only
        # holds the vectors' replica, not the thumbnails').
        pulled = {read for *_, node, read in ran if node != store.origin}
        assert pulled and all((r / src.name).read_bytes() == src.read_bytes() for src, r in pulled)
        replicas = {r for _, r in pulled}
    assert len(want[0]) >= 12 * len(FAMILIES) // 2  # copies were found
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    verified = [p for name, p, *_ in ran if name == "verified_pairs"]
    searched = [p for name, p, *_ in ran if name == "cells_pairs"]
    assert len(verified) > 3 and len(searched) > 3 and pid not in verified + searched
    assert len({node for *_, node, _ in ran}) >= 2
    assert not any(r.exists() for r in replicas)  # dropped with the thumbnails
