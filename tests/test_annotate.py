"""The annotate stage: units and their resume, hostile members, CLIP scores, and Ray end to end (signals:
test_annotate_signals.py)."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.annotate import AnnotateConfig, annotate, load_embeddings, read_annotations
from curate.annotate.clip import parse_spec, save_random_model
from curate.annotate.run import ShardAnnotator, _is_current, _unit
from curate.core import runner, schema, tarindex, units
from curate.core.errors import InputError
from synthweb.bodies import HTML_BODY, bomb_png
from tests.memory import needs_proc, peak_growth_mb
from tests.test_annotate_signals import encode, hamming, scene

# --- a hand-made raw shard: units, hostile members, CLIP -------------------------------------


def write_raw_shard(raw, shard="00000", reverse=False):
    """A raw shard as img2dataset writes it, with every kind of bad member (in key order, or ``reverse``d,
    as its threads may finish); returns the success uids."""
    raw.mkdir(parents=True, exist_ok=True)
    good = scene(4)
    members = {
        "000": ("a red square on a blue background", encode(good, "JPEG", quality=90)),
        "001": ("a png stored under .jpg", encode(scene(5), "PNG")),  # disable_all_reencoding does this
        "002": ("cut off", encode(good, "JPEG")[:300]),
        "003": ("a bomb", bomb_png()),
        "004": ("a web page", HTML_BODY),
        "005": ("nothing at all", b""),
        "006": ("ein Bild von einem roten Quadrat auf blauem Grund", encode(good, "WEBP")),
    }
    rows = [{"key": key, "uid": f"uid{key}", "caption": cap, "status": "success"} for key, (cap, _) in members.items()]
    with tarfile.open(raw / f"{shard}.tar", "w") as tf:
        for key, (cap, data) in reversed(members.items()) if reverse else members.items():
            for name, payload in ((f"{key}.jpg", data), (f"{key}.txt", cap.encode()), (f"{key}.json", b"{}")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
        evil = tarfile.TarInfo("../../evil.jpg")  # never used as a path: not a key the parquet lists
        evil.size = 4
        tf.addfile(evil, io.BytesIO(b"evil"))
    rows.append({"key": "007", "uid": "uid007", "caption": "listed but absent", "status": "success"})
    rows.append({"key": "008", "uid": "uid008", "caption": "failed", "status": "failed_to_download"})
    t = pa.Table.from_pylist(rows)
    t = t.append_column("url", pa.array([f"http://127.0.0.1/{r['key']}" for r in rows]))
    t = t.append_column("original_width", pa.array([128] + [None] * (len(rows) - 1), pa.int32()))
    t = t.append_column("original_height", pa.array([96] + [None] * (len(rows) - 1), pa.int32()))
    pq.write_table(t, raw / f"{shard}.parquet")
    (raw / f"{shard}_stats.json").write_text(json.dumps({"count": len(rows)}))
    return [r["uid"] for r in rows if r["status"] == "success"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("clip") / "tiny")


def annotate_one(build_dir, cfg: AnnotateConfig, shard: str = "00000"):
    """Run one raw shard's unit in this process, as an actor would; returns the runner's report."""
    unit = _unit(str(build_dir / "raw"), shard, cfg)
    return runner.run(str(build_dir / "annotations"), [unit], ShardAnnotator(str(build_dir), cfg, worker=False))


def test_shard_unit_records_every_failure_and_resumes(tmp_path):
    ok_uids = write_raw_shard(tmp_path / "raw")
    cfg = AnnotateConfig(batch_size=3)  # several batches per shard
    report = annotate_one(tmp_path, cfg)
    assert not report.failed and report.ran["00000"]["rows"] == len(ok_uids) == 8

    t = read_annotations(tmp_path)
    assert t.column_names[:5] == [schema.UID, schema.URL, schema.CAPTION, schema.SHARD, schema.KEY]
    schema.require(t, schema.ANNOTATIONS, "test")
    rows = {r["uid"]: r for r in t.to_pylist()}
    assert sorted(rows) == sorted(ok_uids)  # one row per success, the failure left out
    err = {u: r[schema.DECODE_ERROR] for u, r in rows.items()}
    assert err == {
        "uid000": None,
        "uid001": None,
        "uid002": "truncated",
        "uid003": "too_many_pixels",
        "uid004": "not_an_image",
        "uid005": "empty",
        "uid006": None,
        "uid007": "missing_in_tar",
    }
    assert rows["uid001"][schema.IMAGE_FORMAT] == "png" and rows["uid006"][schema.IMAGE_FORMAT] == "webp"
    assert rows["uid000"][schema.WIDTH] == 128 and rows["uid000"][schema.ORIGINAL_WIDTH] == 128
    assert rows["uid002"][schema.WIDTH] is None and rows["uid002"][schema.SHA256] is not None
    assert rows["uid006"][schema.LANG] == "de" and rows["uid000"][schema.LANG] == "en"
    assert rows["uid000"][schema.CLIP_SCORE] is None
    # Different bytes, same pixels? No: JPEG and WebP of one scene differ; but the pHash sees one image.
    assert hamming(rows["uid000"][schema.PHASH], rows["uid006"][schema.PHASH]) <= 6

    marker = units.read_marker(tmp_path / "annotations", "00000")
    assert marker["rows"] == 8 and marker["decode_errors"]["truncated"] == 1
    raw = tmp_path / "raw"
    assert _is_current(tmp_path / "annotations", raw, "00000", cfg)
    assert not _is_current(tmp_path / "annotations", raw, "00000", AnnotateConfig(lid_top_k=3))
    (raw / "00000.parquet").touch()  # a re-downloaded shard is annotated again
    assert not _is_current(tmp_path / "annotations", raw, "00000", cfg)


def test_annotations_are_in_key_order_whatever_order_the_tar_holds(tmp_path):
    """Two downloads of one list order a shard's members as img2dataset's threads finished: the annotations
    (and so dedup, whose tie-breaks follow row order) must not depend on it."""
    tables = []
    for reverse in (False, True):
        write_raw_shard(tmp_path / str(reverse) / "raw", reverse=reverse)
        assert not annotate_one(tmp_path / str(reverse), AnnotateConfig(batch_size=3)).failed
        tables.append(read_annotations(tmp_path / str(reverse)))
    keys = tables[0].column(schema.KEY).to_pylist()
    assert keys == sorted(keys) == [f"{k:03d}" for k in range(8)]
    assert tables[0].equals(tables[1])


def test_annotating_a_raw_shard_indexes_its_tar_for_the_shard_stage(tmp_path):
    """The annotate stage reads every raw tar's headers: it records where each image lies, so the shard
    stage's pass 1 finds the index current (from a bucket it would download every raw tar again)."""
    from curate.core.tarscan import scan_file

    write_raw_shard(tmp_path / "raw")
    annotate_one(tmp_path, AnnotateConfig())
    raw = str(tmp_path / "raw")
    todo, done = runner.pending(tarindex.index_dir(raw), [tarindex.unit(raw, "00000")])
    assert not todo and done == ["00000"]
    index = pq.read_table(tmp_path / "raw" / "_index" / "00000.parquet")
    assert index.equals(tarindex.entries(scan_file(tmp_path / "raw" / "00000.tar")))
    assert {"000", "006"} <= set(index.column("key").to_pylist())
    (tmp_path / "raw" / "00000.tar").touch()  # a re-downloaded tar: its index is stale
    assert runner.pending(tarindex.index_dir(raw), [tarindex.unit(raw, "00000")])[0]


def test_an_unreadable_shard_is_reported_not_raised_by_the_worker(tmp_path):
    write_raw_shard(tmp_path / "raw")
    (tmp_path / "raw" / "00000.tar").write_bytes(b"not a tar at all" * 100)
    assert "00000.tar" in annotate_one(tmp_path, AnnotateConfig()).failed["00000"]
    assert not units.is_done(tmp_path / "annotations", "00000")
    with pytest.raises(InputError, match="shard 00000: .*00000.tar"):
        annotate(tmp_path, AnnotateConfig(), executor="local", progress=False)


def test_clip_scores_and_embeddings_stored_apart(tmp_path, tiny_clip):
    write_raw_shard(tmp_path / "raw")
    annotate_one(tmp_path, AnnotateConfig(clip_model=tiny_clip, batch_size=4, clip_batch_size=2))
    t = read_annotations(tmp_path)
    uids, emb = load_embeddings(tmp_path)
    _, txt = load_embeddings(tmp_path, schema.TEXT_EMBEDDING)
    assert uids == t.column(schema.UID).to_pylist() and emb.dtype == np.float16 and emb.shape == (8, 64)
    decoded = np.array([e is None for e in t.column(schema.DECODE_ERROR).to_pylist()])
    norms = np.linalg.norm(emb.astype(np.float32), axis=1)
    assert np.allclose(norms[decoded], 1.0, atol=2e-3) and np.all(norms[~decoded] == 0)
    score = t.column(schema.CLIP_SCORE).to_numpy(zero_copy_only=False)
    dots = (emb.astype(np.float32) * txt.astype(np.float32)).sum(1)
    assert np.allclose(score[decoded], dots[decoded], atol=2e-3) and np.isnan(score[~decoded]).all()

    # The same weights named as ARCH.json:CHECKPOINT (a plain state dict, loaded weights_only) score the same.
    d = tiny_clip.removeprefix("local-dir:")
    other = f"{d}/model_config.json:{d}/open_clip_pytorch_model.bin"
    assert parse_spec(other).weights.endswith(".bin")
    annotate_one(tmp_path, AnnotateConfig(clip_model=other))
    again = read_annotations(tmp_path).column(schema.CLIP_SCORE).to_numpy(zero_copy_only=False)
    assert np.allclose(again[decoded], score[decoded], atol=1e-5)

    # Annotating again without CLIP removes the embeddings, which would no longer match.
    annotate_one(tmp_path, AnnotateConfig())
    with pytest.raises(InputError, match="--clip-model"):
        load_embeddings(tmp_path)


def test_a_tiers_train_run_scores_the_pool(tmp_path):
    """The DFN path's plumbing: a CLIP trained by `tiers train` on trusted data annotates the pool."""
    import train
    from synthweb import WebConfig, build, shards_from_synthweb

    build(tmp_path / "trusted", WebConfig(n=80, seed=9, mix={"clean": 1.0}, eval_per_concept=1, retrieval_pairs=2))
    manifest = shards_from_synthweb(tmp_path / "trusted", tmp_path / "tiers", tiers={"trusted": 1.0})
    cfg = train.make_config({"model": "ct-vit-micro-32", "samples_seen": 64, "batch_size": 32})
    train.train(cfg, manifest, "trusted", tmp_path / "run", progress=False)
    write_raw_shard(tmp_path / "pool" / "raw")
    spec = f"run:{tmp_path / 'run'}"
    annotate_one(tmp_path / "pool", AnnotateConfig(clip_model=spec))
    t = read_annotations(tmp_path / "pool")
    scored = [s is not None for s in t.column(schema.CLIP_SCORE).to_pylist()]
    decoded = [e is None for e in t.column(schema.DECODE_ERROR).to_pylist()]
    assert scored == decoded and sum(scored) == 3
    missing = annotate_one(tmp_path / "pool", AnnotateConfig(clip_model="run:/no/such/run"))
    assert "no `tiers train` run" in missing.failed["00000"]


@pytest.mark.parametrize("spec", ["ViT-B-32", "ViT-B-32:/no/such/checkpoint.pt", "no-such-arch:/x.pt"])
def test_unusable_clip_models_are_input_errors(spec):
    from curate.annotate.clip import ClipScorer

    with pytest.raises(InputError):
        ClipScorer(spec, "cpu")


# --- end to end: synthetic web -> img2dataset -> annotate on Ray -> filter -----------------------

E2E_MIX = {
    "clean": 0.45,
    "foreign": 0.12,
    "generic": 0.05,
    "exact_dup": 0.05,
    "tiny": 0.06,
    "extreme_aspect": 0.06,
    "blank": 0.06,
    "truncated": 0.04,
    "html_as_image": 0.03,
    "bomb": 0.03,
    "empty_body": 0.03,
    "http_404": 0.02,
}


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory, ray_local):
    """A 200-URL synthetic web (no private addresses, no stalls) downloaded by `tiers download`."""
    from curate.download import DownloadConfig, download
    from synthweb import WebConfig, WebServer, build

    root = tmp_path_factory.mktemp("annweb")
    build(root / "web", WebConfig(n=200, seed=5, mix=E2E_MIX, eval_per_concept=1, retrieval_pairs=5, workers=1))
    cfg = DownloadConfig(timeout=2, samples_per_shard=60, threads=8)
    with WebServer(root / "web", slow_seconds=1) as web:
        download(web.urls_path, root / "build", cfg, allow_private="loopback", progress=False)
    return root


def test_annotate_end_to_end_through_ray(downloaded, ray_local, capsys):
    from pipelines.cli import main

    build_dir = downloaded / "build"
    assert main(["annotate", str(build_dir), "--actors", "2"]) == 0
    assert "annotated 4 of 4 shards" in capsys.readouterr().out

    raw = pa.concat_tables([pq.read_table(p) for p in sorted((build_dir / "raw").glob("[0-9]*.parquet"))])
    ok = {r["uid"] for r in raw.to_pylist() if r[schema.DOWNLOAD_STATUS] == "success"}
    t = read_annotations(build_dir)
    uids = t.column(schema.UID).to_pylist()
    assert len(uids) == len(set(uids)) and set(uids) == ok

    truth = {r["uid"]: r for r in pq.read_table(downloaded / "web" / "truth.parquet").to_pylist()}
    rows = t.to_pylist()
    by_kind = {}
    for r in rows:
        kind = truth[r["uid"]]["kind"]
        by_kind.setdefault(kind, []).append(r)
        assert r[schema.DECODE_ERROR] is None, (kind, r)  # the downloader kept only decodable images
        # Images of at most 256 px are stored at their size (re-encoded as JPEG); the size is the truth's.
        assert (r[schema.WIDTH], r[schema.HEIGHT]) == (truth[r["uid"]]["width"], truth[r["uid"]]["height"])
        assert (r[schema.ORIGINAL_WIDTH], r[schema.ORIGINAL_HEIGHT]) == (r[schema.WIDTH], r[schema.HEIGHT])
    assert not {"truncated", "html_as_image", "bomb", "empty_body"} & set(by_kind)
    sha = {r["uid"]: r[schema.SHA256] for r in rows}
    assert all(sha[r["uid"]] == sha[truth[r["uid"]]["dup_of"]] for r in by_kind["exact_dup"])

    # A rerun does nothing; the filter preset for the synthetic web drops every low-quality kind.
    assert main(["annotate", str(build_dir)]) == 0
    assert "annotated 0 of 4 shards" in capsys.readouterr().out
    out = downloaded / "decisions.parquet"
    assert main(["filter", str(build_dir), "--preset", "synthetic-basic", "--out", str(out)]) == 0
    decisions = {r["uid"]: r for r in pq.read_table(out).to_pylist()}
    for kind in ("tiny", "extreme_aspect", "blank", "foreign"):
        assert not any(decisions[r["uid"]]["keep"] for r in by_kind[kind]), kind
    clean = [decisions[r["uid"]]["keep"] for r in by_kind["clean"]]
    assert sum(clean) >= 0.9 * len(clean)


def test_hostile_images_through_ray_workers_are_recorded_not_fatal(tmp_path, ray_local):
    """The bytes as served (no downloader checks): Ray actors record every bad image and finish."""
    ok_uids = write_raw_shard(tmp_path / "raw", "00000")
    write_raw_shard(tmp_path / "raw", "00001")
    summary = annotate(tmp_path, AnnotateConfig(actors=2), progress=False)
    assert summary.rows == 2 * len(ok_uids) and summary.done == 2
    assert summary.decode_errors == {
        "empty": 2,
        "missing_in_tar": 2,
        "not_an_image": 2,
        "too_many_pixels": 2,
        "truncated": 2,
    }


def test_a_model_the_actors_cannot_load_is_one_input_error(tmp_path, ray_local, tiny_clip):
    write_raw_shard(tmp_path / "raw")
    d = tiny_clip.removeprefix("local-dir:")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="shard 00000"):
        annotate(tmp_path, AnnotateConfig(clip_model=f"{d}/model_config.json:{bad}"), progress=False)
    assert not units.is_done(tmp_path / "annotations", "00000")


def test_annotate_without_raw_shards_is_an_input_error(tmp_path):
    from pipelines.cli import main

    assert main(["annotate", str(tmp_path)]) == 2
    with pytest.raises(InputError, match="raw"):
        annotate(tmp_path)


def write_image_shard(raw, n: int, image_bytes: int) -> int:
    """Raw shard 00000 of ``n`` random "images" of ``image_bytes`` with captions (written just now: in the
    page cache), every one a success; returns ``n``."""
    import os

    from curate.core import storage
    from curate.core.tarstream import TarWriter

    keys = [f"{i:09d}" for i in range(n)]
    with open(os.path.join(raw, "00000.tar"), "wb") as f:
        w = TarWriter(f.fileno())
        for k in keys:
            w.add(f"{k}.jpg", os.urandom(image_bytes))
            w.add(f"{k}.txt", b"a caption")
        w.close()
    table = {"uid": [f"u{k}" for k in keys], "url": [f"http://x/{k}" for k in keys], "caption": ["c"] * n}
    storage.write_parquet(
        pa.table({**table, "key": keys, "status": ["success"] * n}), os.path.join(raw, "00000.parquet")
    )
    return n


READER_MEMORY_SETUP = """
import sys
from curate.annotate.raw import iter_samples
from tests.test_annotate import write_image_shard

raw = sys.argv[1]
n = write_image_shard(raw, 512, 256 << 10)  # a 128 MB tar
"""


@needs_proc
def test_the_annotate_reader_holds_a_batch_of_images_not_the_tar(tmp_path):
    """An annotate unit reads its raw tar a batch at a time: batches of 16 images of 256 kB from a
    128 MB tar must grow the reader's peak by a few batches and Arrow's pool (~30 MB), not by the tar.
    Mapping the tar did (~150 MB)."""
    grew = peak_growth_mb(
        READER_MEMORY_SETUP, 'assert sum(len(b) for b in iter_samples(raw, "00000", batch_size=16)) == n', tmp_path
    )
    assert grew < 64, f"the reader's peak grew by {grew} MB reading a 128 MB tar 16 images at a time"


def test_the_annotate_reader_leaves_no_view_of_its_buffer_alive(tmp_path):
    """pyarrow keeps a buffer export of every memoryview `pa.array` converts: handed the reader's views,
    every image's view and the read buffer under it stayed alive after its unit (an annotate actor grew
    ~9.5 MB a unit of 10,000 images, for as long as it ran). Three passes over a tar leave none."""
    import gc

    from curate.annotate.raw import iter_samples

    n = write_image_shard(str(tmp_path), 96, 4 << 10)

    def views() -> int:
        gc.collect()
        return sum(type(o) is memoryview for o in gc.get_objects())

    before = views()
    for _ in range(3):
        batches = list(iter_samples(str(tmp_path), "00000", batch_size=16))
        assert sum(len(b) for b in batches) == n and len(batches[0].column("image")[0].as_py()) == 4 << 10
        del batches
    assert views() - before == 0
