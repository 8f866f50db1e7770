"""DataComp interop: the 128-bit uid mapping, export -> subset round trips, and a subset tier that trains."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.core import uid128
from curate.core.errors import InputError
from curate.core.manifest import read_tier
from curate.core.tarstream import TarWriter, index_tar
from curate.select.bands import BandConfig, assign
from curate.shard.subset import export_tier, make_subset, tier_uids
from curate.shard.writer import ShardConfig, write_tiers
from pipelines.cli import main


def fake_build(web: Path, out: Path, hex_uids: bool = False) -> pa.Table:
    """A build dir from the synthetic web's clean images, without downloading: raw tars named as img2dataset
    names members, samples.parquet with fates (kept, a duplicate with bytes, failed downloads) and band shards."""
    urls = pq.read_table(web / "urls.parquet").to_pylist()
    kinds = dict(zip(*pq.read_table(web / "truth.parquet", columns=["uid", "kind"]).to_pydict().values(), strict=True))
    routes = {r["path"]: r for r in pq.read_table(web / "routes.parquet").to_pylist()}
    clean = [u for u in urls if kinds[u["uid"]] == "clean" and routes[urlsplit(u["url"]).path]["length"]][:240]
    raw = out / "raw"
    raw.mkdir(parents=True)
    rows = []
    with open(web / "blobs.bin", "rb") as blobs:
        for s in range(2):
            with open(raw / f"{s:05d}.tar", "wb") as f:
                w = TarWriter(f.fileno())
                for k, u in enumerate(clean[s::2]):
                    path = urlsplit(u["url"]).path
                    r = routes[path]
                    key = f"{s:05d}{k:04d}"
                    w.add(f"{key}.{path.rsplit('.', 1)[-1]}", os.pread(blobs.fileno(), r["length"], r["offset"]))
                    w.add(f"{key}.txt", u["caption"].encode())
                    uid = f"{int(u['uid'], 16):032x}" if hex_uids else u["uid"]
                    rows.append(
                        {"uid": uid, "url": u["url"], "caption": u["caption"], "shard": f"{s:05d}", "key": key}
                    )
                w.close()
    for k in range(5):  # failed downloads: no bytes
        rows.append({"uid": f"failed{k}", "url": f"http://x/{k}", "caption": "c", "shard": None, "key": None})
    n = len(rows)
    t = pa.Table.from_pylist(rows)
    status = np.array(["kept"] * (n - 5) + ["failed"] * 5, dtype=object)
    reason = np.array([None] * (n - 5) + ["http_404"] * 5, dtype=object)
    status[:3], reason[:3] = "dropped", "duplicate"
    quality = np.random.default_rng(0).uniform(size=n).astype(np.float32)
    bands = np.full(n, None, dtype=object)
    kept = status == "kept"
    uids = np.asarray(t.column("uid").to_pylist(), dtype=object)
    bands[kept] = assign(uids[kept], quality[kept], BandConfig(edges=(0.3, 1.0)))
    t = t.append_column("status", pa.array(status.tolist(), pa.string()))
    t = t.append_column("reason", pa.array(reason.tolist(), pa.string()))
    t = t.append_column("quality", pa.array(quality))
    t = t.append_column("band", pa.array(bands.tolist(), pa.string()))
    pq.write_table(t, out / "samples.parquet")
    write_tiers(out, t, BandConfig(edges=(0.3, 1.0)), ShardConfig(shard_size=25), progress=False)
    return t


@pytest.fixture(scope="module")
def build(small_web, tmp_path_factory):
    out = tmp_path_factory.mktemp("dcbuild")
    fake_build(small_web, out)
    return out


def shard_uids(build: Path, tier: str) -> list[str]:
    return [k for s in read_tier(build, tier).shards for k in index_tar(s)]


def test_datacomp_hex_uids_map_to_their_own_128_bits_and_ours_through_blake2b():
    pairs = uid128.to_pairs(["139e4a9b22a614771f06c700a8ebe150", "6e356964a967af455c8016b75d691203"])
    # DataComp's own conversion, as its README gives it
    assert pairs.tolist() == [(0x139E4A9B22A61477, 0x1F06C700A8EBE150), (0x6E356964A967AF45, 0x5C8016B75D691203)]
    import hashlib

    ours = uid128.to_pairs(["0b5e6a3f9d2c41e8a7b6c5d4"])
    digest = int.from_bytes(hashlib.blake2b(b"0b5e6a3f9d2c41e8a7b6c5d4", digest_size=16).digest(), "big")
    assert ours.tolist() == [(digest >> 64, digest & (2**64 - 1))]
    assert uid128.to_hex(pairs) == ["139e4a9b22a614771f06c700a8ebe150", "6e356964a967af455c8016b75d691203"]


def test_uid_files_in_every_format_read_the_same(tmp_path):
    uids = ["139e4a9b22a614771f06c700a8ebe150", "abc123", "0b5e6a3f9d2c41e8a7b6c5d4"]
    want = sorted(uid128.to_pairs(uids).tolist())
    uid128.write_npy(tmp_path / "a.npy", uid128.to_pairs(uids))
    uid128.sort_pairs(uid128.to_pairs(uids)).tofile(tmp_path / "b.bin")  # DataComp's memory-mapped format
    pq.write_table(pa.table({"uid": uids}), tmp_path / "c.parquet")
    (tmp_path / "d.txt").write_text("\n".join(uids) + "\n\n")
    for f in ("a.npy", "b.bin", "c.parquet", "d.txt"):
        assert sorted(uid128.read_uid_file(tmp_path / f).tolist()) == want, f
    arr = np.load(tmp_path / "a.npy")
    assert arr.dtype == np.dtype("u8,u8") and arr.tolist() == want  # sorted, as the resharder expects
    np.save(tmp_path / "bad.npy", np.arange(3.0))
    with pytest.raises(InputError, match="u8,u8"):
        uid128.read_uid_file(tmp_path / "bad.npy")
    pq.write_table(pa.table({"key": ["x"]}), tmp_path / "nouid.parquet")
    with pytest.raises(InputError, match="no uid column"):
        uid128.read_uid_file(tmp_path / "nouid.parquet")


@pytest.mark.parametrize("fmt", ["datacomp-npy", "parquet"])
def test_export_then_subset_gives_the_same_tier(build, tmp_path, fmt):
    out = tmp_path / ("top30.npy" if fmt == "datacomp-npy" else "top30.parquet")
    n = export_tier(build, "top30", fmt, out)
    assert n == read_tier(build, "top30").samples > 0
    name = f"rt-{fmt}"
    s = make_subset(build, out, name, progress=False)
    assert (s.samples, s.unknown, s.no_bytes) == (n, 0, {})
    assert sorted(tier_uids(build, name)) == sorted(tier_uids(build, "top30"))
    assert sorted(shard_uids(build, name)) == sorted(shard_uids(build, "top30"))  # what a trainer reads
    again = tmp_path / "again.npy"
    export_tier(build, name, "datacomp-npy", again)
    export_tier(build, "top30", "datacomp-npy", tmp_path / "ref.npy")
    assert again.read_bytes() == (tmp_path / "ref.npy").read_bytes()
    doc = json.loads((build / "tiers" / "manifest.json").read_text())
    assert doc["tiers"][name]["samples"] == n and doc["tiers"][name]["brace"]  # open_clip's --train-data


def test_a_subset_takes_any_stored_sample_and_says_what_it_could_not(build, tmp_path):
    t = pq.read_table(build / "samples.parquet").to_pylist()
    dup = [r["uid"] for r in t if r["reason"] == "duplicate"]
    failed = [r["uid"] for r in t if r["status"] == "failed"]
    kept = [r["uid"] for r in t if r["status"] == "kept"][:20]
    (tmp_path / "list.txt").write_text("\n".join(dup + failed + kept + kept[:2] + ["not-in-this-build"]))
    s = make_subset(build, tmp_path / "list.txt", "mixed", progress=False)
    assert s.samples == len(dup) + len(kept) and s.unknown == 1 and s.no_bytes == {"http_404": len(failed)}
    assert s.requested == len(dup + failed + kept) + 3 and s.by_status["dropped"] == {"duplicate": len(dup)}
    assert sorted(shard_uids(build, "mixed")) == sorted(dup + kept)
    again = make_subset(build, tmp_path / "list.txt", "mixed", progress=False)  # the same list: nothing to do
    assert again.samples == s.samples
    (tmp_path / "other.txt").write_text("\n".join(kept[:5]))
    with pytest.raises(InputError, match="--replace"):
        make_subset(build, tmp_path / "other.txt", "mixed", progress=False)
    assert make_subset(build, tmp_path / "other.txt", "mixed", replace=True, progress=False).samples == 5
    assert sorted(shard_uids(build, "mixed")) == sorted(kept[:5])
    with pytest.raises(InputError, match="band tier"):
        make_subset(build, tmp_path / "other.txt", "top30", progress=False)
    (tmp_path / "none.txt").write_text("nobody\n")
    with pytest.raises(InputError, match="none of the 1 uids"):
        make_subset(build, tmp_path / "none.txt", "none", progress=False)


def test_subsets_survive_a_recut_of_the_bands(build, tmp_path):
    export_tier(build, "kept", "datacomp-npy", tmp_path / "kept.npy")
    make_subset(build, tmp_path / "kept.npy", "keeps", progress=False)
    samples = pq.read_table(build / "samples.parquet")
    write_tiers(build, samples, BandConfig(edges=(0.3, 1.0)), ShardConfig(shard_size=25), progress=False)
    assert read_tier(build, "keeps").samples == read_tier(build, "kept").samples


def test_datacomp_pool_exports_its_own_uids(small_web, tmp_path):
    fake_build(small_web, tmp_path, hex_uids=True)
    export_tier(tmp_path, "kept", "datacomp-npy", tmp_path / "kept.npy")
    got = np.load(tmp_path / "kept.npy").tolist()
    want = sorted((int(u[:16], 16), int(u[16:], 16)) for u in tier_uids(tmp_path, "kept"))
    assert got == want


def test_cli_subset_and_export_and_a_subset_tier_trains(build, tmp_path, capsys):
    from train import api
    from train.config import make_config

    assert (
        main(["export", str(build), "--tier", "top30", "--format", "datacomp-npy", "--out", str(tmp_path / "a.npy")])
        == 0
    )
    assert main(["subset", str(build), "--uids", str(tmp_path / "a.npy"), "--name", "fromnpy", "--quiet"]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # export's line; subset was quiet
    cfg = make_config({"model": "ct-vit-micro-32", "batch_size": 16, "threads": 1, "workers": 0, "samples_seen": 64})
    s = api.train(cfg, build, "fromnpy", tmp_path / "run", progress=False)
    assert s.tier == "fromnpy" and s.tier_samples == read_tier(build, "top30").samples and s.steps == 4
    assert s.skipped == 0 and np.isfinite(s.final_loss)
    assert main(["export", str(build), "--tier", "nope", "--format", "parquet", "--out", str(tmp_path / "x")]) == 2
