import json
import tarfile

import numpy as np
import pyarrow as pa
import pytest
import webdataset as wds

from curate.core import units
from curate.core.manifest import brace, read_tier
from curate.core.tarstream import TarWriter
from curate.select.bands import BandConfig, assign, band_names, tiers
from curate.shard.writer import ShardConfig, write_tiers


def test_band_cut_is_exact_deterministic_and_tie_broken_by_uid():
    uids = np.array([f"u{i:03d}" for i in range(100)], dtype=object)
    q = np.repeat(np.arange(10, dtype=np.float32), 10)  # ten-way ties
    bands = assign(uids, q)
    names = band_names(BandConfig())
    counts = {b: int((bands == b).sum()) for b in names}
    assert counts == {"q000-010": 10, "q010-020": 10, "q020-030": 10, "q030-040": 10, "q040-050": 10, "q050-100": 50}
    assert set(uids[bands == "q000-010"]) == {f"u{i:03d}" for i in range(90, 100)}
    perm = np.random.default_rng(0).permutation(100)
    assert (assign(uids[perm], q[perm]) == bands[perm]).all()


def test_tiers_are_nested_prefixes():
    t = tiers(BandConfig())
    assert list(t) == ["top10", "top20", "top30", "top40", "top50", "kept", "unfiltered"]
    names = list(t.values())
    assert all(a == b[: len(a)] for a, b in zip(names, names[1:], strict=False))
    assert t["unfiltered"][-1] == "filtered"
    with pytest.raises(ValueError):
        BandConfig(edges=(0.5, 0.2, 1.0)).validate()
    with pytest.raises(ValueError):
        BandConfig(edges=(0.5,)).validate()


def test_balanced_bands_take_the_best_of_every_cluster():
    rng = np.random.default_rng(0)
    sizes = {"a": 60, "b": 30, "c": 10}
    centre = {"a": [1.0, 0, 0], "b": [0, 1.0, 0], "c": [0, 0, 1.0]}
    label = np.repeat(list(sizes), list(sizes.values()))
    emb = np.array([centre[x] for x in label]) + rng.normal(0, 0.05, (100, 3))
    # The scorer likes cluster a, is lukewarm on b and dislikes c: a plain top 20% is all a.
    q = np.select([label == "a", label == "b"], [0.6, 0.3], 0.0) + rng.uniform(0, 0.2, 100)
    uids = np.array([f"u{i:03d}" for i in range(100)], dtype=object)
    cfg = BandConfig(edges=(0.2, 1.0))
    plain = assign(uids, q, cfg)
    assert set(label[plain == "q000-020"]) == {"a"}

    balanced = assign(uids, q, BandConfig(edges=(0.2, 1.0), balance="clusters", clusters=3), emb)
    top = balanced == "q000-020"
    assert top.sum() == 20  # band sizes stay exact
    assert {x: int((label[top] == x).sum()) for x in sizes} == {"a": 12, "b": 6, "c": 2}
    for x in sizes:  # within a cluster, the best by quality
        inside = label == x
        assert q[top & inside].min() > q[~top & inside].max()
    perm = rng.permutation(100)  # the same table in another row order gives the same bands
    again = assign(uids[perm], q[perm], BandConfig(edges=(0.2, 1.0), balance="clusters", clusters=3), emb[perm])
    assert (again == balanced[perm]).all()


def test_balanced_bands_need_embeddings_and_a_known_mode():
    with pytest.raises(ValueError, match="CLIP image embeddings"):
        assign(np.array(["a", "b"], dtype=object), np.array([0.1, 0.2]), BandConfig(balance="clusters"))
    with pytest.raises(ValueError, match="balance must be one of"):
        BandConfig(balance="concepts").validate()


def make_build(tmp_path, n=230, raw_shards=3, filtered=40):
    """A build dir with raw tars (as img2dataset names members) and a matching sample table."""
    raw = tmp_path / "raw"
    raw.mkdir(parents=True)
    rows = []
    per = -(-n // raw_shards)
    for s in range(raw_shards):
        with open(raw / f"{s:05d}.tar", "wb") as f:
            w = TarWriter(f.fileno())
            for k in range(s * per, min(n, (s + 1) * per)):
                key = f"{s:05d}{k:04d}"
                w.add(f"{key}.jpg", b"\xff\xd8" + k.to_bytes(4, "big") * 50)
                w.add(f"{key}.txt", f"caption {k}".encode())
                rows.append(
                    {
                        "uid": f"uid{k:04d}",
                        "url": f"http://x/{k}",
                        "caption": f"caption {k}",
                        "shard": f"{s:05d}",
                        "key": key,
                        "quality": float(k % 17) / 17,
                    }
                )
            w.close()
    t = pa.Table.from_pylist(rows)
    kept = np.arange(n) >= filtered
    bands = np.full(n, "filtered", dtype=object)
    bands[kept] = assign(t.column("uid").to_numpy(zero_copy_only=False)[kept], t.column("quality").to_numpy()[kept])
    bands[:5] = None  # duplicates: no band
    return t.append_column("band", pa.array(bands.tolist(), pa.string()))


TRICKY_CAPTIONS = ['quote " back\\slash', "line\nbreak\ttab\r\x00\x1f\x7f", "ünïcödé 😀 \u2028", "", None, "</script>"]
TRICKY_URLS = [None, "", 'http://x/ü?"q"', "http://x/\\"]
TRICKY_QUALITY = [1e-300, float("nan"), float("inf"), None, 1e-5, 0.30000000000000004, 2 / 3]


def tricky_build(tmp_path):
    """make_build's samples with captions, urls and qualities that json and tar must write exactly."""
    samples = make_build(tmp_path)
    n = samples.num_rows
    cap = [TRICKY_CAPTIONS[i % 6] if i % 3 == 0 else c for i, c in enumerate(samples.column("caption").to_pylist())]
    url = [TRICKY_URLS[i % 4] if i % 5 == 0 else u for i, u in enumerate(samples.column("url").to_pylist())]
    q = [TRICKY_QUALITY[i % 7] if i % 4 == 0 else v for i, v in enumerate(samples.column("quality").to_pylist())]
    samples = samples.set_column(samples.column_names.index("caption"), "caption", pa.array(cap, pa.string()))
    samples = samples.set_column(samples.column_names.index("url"), "url", pa.array(url, pa.string()))
    samples = samples.set_column(samples.column_names.index("quality"), "quality", pa.array(q, pa.float32()))
    assert samples.num_rows == n
    return samples


def shard_digests(tmp_path) -> str:
    import xxhash

    lines = sorted(
        f"{p.relative_to(tmp_path)} {xxhash.xxh3_128(p.read_bytes()).hexdigest()}"
        for p in (tmp_path / "tiers").rglob("*.tar")
    )
    return xxhash.xxh3_128("\n".join(lines).encode()).hexdigest()


@pytest.mark.parametrize(
    "shard_size, digest", [(16, "256bb7c3c7ed26eedeaca6d88997d3be"), (1000, "2ab4bdf6878883ac7227a6f0ed5b5a23")]
)
def test_band_shards_are_the_bytes_the_first_writer_wrote(tmp_path, shard_size, digest):
    """Digests of the shards the per-member writer (before commit 07bc62e) wrote for this build: the
    column-wise writer must give the same bytes, and record the stamps a later check computes."""
    from curate.core import integrity

    samples = tricky_build(tmp_path)
    write_tiers(tmp_path, samples, shard_cfg=ShardConfig(shard_size=shard_size, seed=3), progress=False)
    assert shard_digests(tmp_path) == digest
    for p in (tmp_path / "tiers" / "bands").rglob("*.tar"):
        marker = units.read_marker(tmp_path / "tiers", f"{p.parent.name}-{p.stem}")
        assert marker["files"][f"bands/{p.parent.name}/{p.name}"] == integrity.stamp(p)


def test_write_tiers_bands_disjoint_tiers_nested_shards_uniform_and_readable(tmp_path):
    samples = make_build(tmp_path)
    cfg = ShardConfig(shard_size=16, seed=1)
    m = write_tiers(tmp_path, samples, shard_cfg=cfg, progress=False)
    seen = {}
    for band, info in m.bands.items():
        sizes = []
        for rel in info.shards:
            keys = [s["__key__"] for s in wds.WebDataset(str(tmp_path / "tiers" / rel), shardshuffle=False)]
            sizes.append(len(keys))
            for s in wds.WebDataset(str(tmp_path / "tiers" / rel), shardshuffle=False):
                meta = json.loads(s["json"])
                assert meta["band"] == band and s["txt"].decode() == meta["caption"] and s["jpg"][:2] == b"\xff\xd8"
            for k in keys:
                assert k not in seen
                seen[k] = band
        assert all(x == 16 for x in sizes[:-1]) and 0 < sizes[-1] <= 16 if sizes else True
        assert sum(sizes) == info.samples
    assert len(seen) == 225  # 5 duplicates have no band
    assert m.tiers["unfiltered"].samples == 225 and m.tiers["kept"].samples == 190
    order = ["top10", "top20", "top30", "top40", "top50", "kept", "unfiltered"]
    sizes = [m.tiers[t].samples for t in order]
    assert sizes == sorted(sizes)
    tier = read_tier(tmp_path, "top20")
    assert tier.samples == m.tiers["top20"].samples and all(p.endswith(".tar") for p in tier.shards)
    assert "{000000.." in m.tiers["kept"].brace and "::" in m.tiers["kept"].brace


def test_each_band_shard_task_carries_its_own_rows_only(tmp_path):
    """A unit's rows pickle (for a Ray task) at their own size, not with the whole located table's buffers."""
    import pickle

    from curate.core import runner
    from curate.select.bands import band_names
    from curate.shard import bandshard, writer

    samples = make_build(tmp_path, n=2000, raw_shards=2)
    bands = band_names(BandConfig()) + ["filtered"]
    todo, _, _ = writer._plan_units(str(tmp_path / "tiers"), samples, bands, ShardConfig(shard_size=16))
    packer = writer._located(str(tmp_path / "raw"), samples, todo, runner.Executor("local"))
    located = [packer(u) for u in todo]
    assert len(located) > 50
    for unit in located:
        rows = bandshard.unpack(unit.args[1])
        assert rows.num_rows <= 16 and len(pickle.dumps(unit.args)) < 2 * rows.nbytes + 4000


def _shards_of(tmp_path, samples, order: str, shard_size: int = 16) -> dict[str, list[pa.Table]]:
    """Each band's shards as their located rows (shard, key, offset, size, ...), in write order."""
    from curate.core import runner
    from curate.shard import bandshard, writer

    bands = band_names(BandConfig()) + ["filtered"]
    cfg = ShardConfig(shard_size=shard_size, order=order)
    todo, _, _ = writer._plan_units(str(tmp_path / "tiers"), samples, bands, cfg)
    packer = writer._located(str(tmp_path / "raw"), samples, todo, runner.Executor("local"))
    out: dict[str, list[pa.Table]] = {}
    for unit in sorted(todo, key=lambda u: u.name):
        out.setdefault(unit.name.rsplit("-", 1)[0], []).append(bandshard.unpack(packer(unit).args[1]))
    return out


def test_raw_order_keeps_each_band_shard_within_one_or_two_raw_tars(tmp_path):
    """``[shards] order = "raw"``: each band cut in raw-tar order, each shard shuffled within. The same
    samples in shards of the same sizes as the whole-band shuffle, but a shard lies in a run of the band's
    consecutive raw positions: in one or two raw tars where each band holds a shard's worth of every
    raw tar (10% of 375 here; of 10,000 in a DataComp pool), from a bucket a few ranged GETs, where the
    whole-band shuffle draws from every raw tar (a GET a sample once the pool is large)."""
    import pyarrow.compute as pc

    from curate.core.tarstream import coalesce
    from curate.shard.bandshard import MAX_BLOCK, MAX_GAP

    samples = make_build(tmp_path, n=3000, raw_shards=8)
    shuffled, raw = _shards_of(tmp_path, samples, "shuffled"), _shards_of(tmp_path, samples, "raw")
    assert shuffled.keys() == raw.keys()
    unsorted = 0
    for band, shards in raw.items():
        assert [t.num_rows for t in shards] == [t.num_rows for t in shuffled[band]]
        uids = [u for t in shards for u in t.column("uid").to_pylist()]
        assert sorted(uids) == sorted(u for t in shuffled[band] for u in t.column("uid").to_pylist())
        both = pa.concat_tables(shards)
        in_raw_order = sorted(zip(both.column("shard").to_pylist(), both.column("key").to_pylist(), strict=True))
        at = 0
        for t in shards:  # shard k holds the band's raw positions [at, at + rows), in another order
            here = list(zip(t.column("shard").to_pylist(), t.column("key").to_pylist(), strict=True))
            assert sorted(here) == in_raw_order[at : at + t.num_rows]
            unsorted += here != sorted(here)
            at += t.num_rows
            assert len(set(t.column("shard").to_pylist())) <= 2
            tars = pc.unique(t.column("shard")).to_pylist()
            gets = sum(
                len(coalesce(*(x.column(c).to_numpy() for c in ("offset", "size")), MAX_GAP, MAX_BLOCK)[0])
                for x in (t.filter(pc.equal(t.column("shard"), s)) for s in tars)
            )
            assert gets <= 2
    assert unsorted > len(raw)  # shuffled within: not written in raw order
    assert max(len(set(t.column("shard").to_pylist())) for s in shuffled.values() for t in s) == 8
    cfg = ShardConfig(shard_size=16, order="raw")
    m = write_tiers(tmp_path, samples, shard_cfg=cfg, progress=False)
    first = shard_digests(tmp_path)
    assert m.config["shards"]["order"] == "raw" and m.tiers["unfiltered"].samples == 2995
    (tmp_path / "tiers" / "manifest.json").unlink()
    for p in (tmp_path / "tiers" / "bands").rglob("*.tar"):
        p.unlink()
    write_tiers(tmp_path, samples, shard_cfg=cfg, progress=False)
    assert shard_digests(tmp_path) == first


def test_shard_order_is_checked_where_the_config_is_read(tmp_path):
    from curate.core.errors import InputError
    from pipelines.build import config_from_toml

    assert config_from_toml({"shards": {"order": "raw"}}).shards.order == "raw"
    with pytest.raises(InputError, match=r"\[shards\] order must be one of shuffled, raw, not 'tar'"):
        config_from_toml({"shards": {"order": "tar"}}, source="build.toml")


def test_bytes_are_copied_not_reencoded_and_rerun_is_identical(tmp_path):
    samples = make_build(tmp_path)
    m1 = write_tiers(tmp_path, samples, shard_cfg=ShardConfig(shard_size=20), progress=False)
    blobs = {p.name: p.read_bytes() for p in (tmp_path / "tiers").rglob("*.tar")}
    with tarfile.open(tmp_path / "raw" / "00001.tar") as tf:
        raw = {m.name: tf.extractfile(m).read() for m in tf if m.name.endswith(".jpg")}
    by_uid = {r["uid"]: raw.get(r["key"] + ".jpg") for r in samples.to_pylist() if r["shard"] == "00001"}
    for p in (tmp_path / "tiers").rglob("*.tar"):
        for s in wds.WebDataset(str(p), shardshuffle=False):
            if s["__key__"] in by_uid:
                assert s["jpg"] == by_uid[s["__key__"]]
    # Kill between shards: drop a shard and its marker, leave a stale temporary; rerun heals it.
    victim = next((tmp_path / "tiers" / "bands" / "q050-100").glob("*.tar"))
    victim.unlink()
    (victim.parent / ".000000.tar.deadbeef.tmp").write_bytes(b"partial")
    m2 = write_tiers(tmp_path, samples, shard_cfg=ShardConfig(shard_size=20), progress=False)
    assert m1 == m2
    assert {p.name: p.read_bytes() for p in (tmp_path / "tiers").rglob("*.tar")} == blobs
    assert not list((tmp_path / "tiers").rglob("*.tmp"))


def recut(samples: pa.Table, cfg: BandConfig) -> pa.Table:
    """The sample table with its kept samples re-banded by ``cfg``, as `tiers retier` would."""
    kept = samples.column("band").to_numpy(zero_copy_only=False)
    mask = np.array([b not in (None, "filtered") for b in kept])
    new = kept.copy()
    new[mask] = assign(
        samples.column("uid").to_numpy(zero_copy_only=False)[mask], samples.column("quality").to_numpy()[mask], cfg
    )
    return samples.set_column(samples.column_names.index("band"), "band", pa.array(new.tolist(), pa.string()))


def test_retier_rewrites_only_what_changed(tmp_path):
    samples = make_build(tmp_path)
    write_tiers(tmp_path, samples, shard_cfg=ShardConfig(shard_size=20), progress=False)
    filtered_marker = units.read_marker(tmp_path / "tiers", "filtered-000000")
    cfg = BandConfig(edges=(0.25, 0.5, 1.0))
    samples2 = recut(samples, cfg)
    m = write_tiers(tmp_path, samples2, band_cfg=cfg, shard_cfg=ShardConfig(shard_size=20), progress=False)
    assert list(m.tiers) == ["top25", "top50", "kept", "unfiltered"]
    assert units.read_marker(tmp_path / "tiers", "filtered-000000") == filtered_marker
    assert sorted(p.name for p in (tmp_path / "tiers" / "bands").iterdir()) == [
        "filtered",
        "q000-025",
        "q025-050",
        "q050-100",
    ]


def test_an_unreadable_raw_shard_fails_the_recut_before_anything_changes(tmp_path):
    from curate.core.errors import InputError

    samples = make_build(tmp_path)
    write_tiers(tmp_path, samples, shard_cfg=ShardConfig(shard_size=20), progress=False)
    before = {p: p.read_bytes() for p in (tmp_path / "tiers").rglob("*") if p.is_file()}
    raw = tmp_path / "raw" / "00001.tar"
    raw.write_bytes(raw.read_bytes()[:5000])  # cut off mid-member
    cfg = BandConfig(edges=(0.25, 1.0))
    samples2 = recut(samples, cfg)
    with pytest.raises(InputError, match="00001.tar") as e:
        write_tiers(tmp_path, samples2, band_cfg=cfg, shard_cfg=ShardConfig(shard_size=20), progress=False)
    assert "cut off" in str(e.value)
    assert {p: p.read_bytes() for p in (tmp_path / "tiers").rglob("*") if p.is_file()} == before


def test_brace_notation():
    assert (
        brace(["/d/a/000000.tar", "/d/a/000001.tar", "/d/b/000000.tar"])
        == "/d/a/{000000..000001}.tar::/d/b/000000.tar"
    )


def test_the_shard_stage_holds_one_units_rows_at_a_time_not_every_pending_units(tmp_path):
    """The driver hands each band shard its rows as it starts: it holds the sample table's columns and
    where each image lies, not the located rows of every pending shard at once (a copy of the kept rows'
    URLs and captions, then all their packs: ~210 B a kept sample)."""
    import gc

    from curate.shard.bandshard import COLUMNS

    samples = make_build(tmp_path, n=6000, raw_shards=3, filtered=600)
    long = pa.array([f"{k:05d} " + "a long alt-text of the web " * 12 for k in range(samples.num_rows)])
    samples = samples.set_column(samples.schema.get_field_index("caption"), "caption", long)
    size = samples.select(COLUMNS).nbytes
    pool = pa.proxy_memory_pool(pa.default_memory_pool())  # what Arrow allocates while the shards are written
    before = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        m = write_tiers(tmp_path, samples, shard_cfg=ShardConfig(shard_size=50, executor="local"), progress=False)
        gc.collect()
    finally:
        pa.set_memory_pool(before)
    assert sum(b.samples for b in m.bands.values()) == samples.num_rows - 5
    # 0.24x (where the images lie, the rows the locating reads, a band's uids as it is planned); 1.15x with
    # every pending shard's rows located up front.
    assert pool.max_memory() < 0.4 * size, (pool.max_memory(), size)
