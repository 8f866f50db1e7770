"""tiers build end to end on the synthetic web: one fate per input row, nested tiers, shards that
open_clip trains on, and kill -9 at five points across stages healing to the uninterrupted result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curate.core.failpoints import ENV

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
[download]
image_size = 64
timeout = 1
url_deadline = 5
samples_per_shard = 40
threads = 8
[filters]
preset = "synthetic-basic"
image_size = 64
[shards]
shard_size = 16
"""
# What each kind must end as (status, reason or None for "any").
FATES = {
    "clean": {"kept", "duplicate"},  # an original whose copy won the keeper rule is a duplicate
    "foreign": {"language"},
    "exact_dup": {"kept", "duplicate"},
    "near_dup": {"kept", "duplicate"},
    "http_404": {"http_404"},
    "http_500": {"http_5xx"},
    "slow": {"timeout"},
    "truncated": {"truncated"},
    "noai": {"noai_header"},
    "bomb": {"too_large"},
    "private_address": {"private_address"},
    "redirect_loop": {"redirect_loop"},
    "blank": {"blank"},
    "tiny": {"min_side"},
}


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    from synthweb import WebConfig, WebServer, build

    root = tmp_path_factory.mktemp("buildweb")
    build(root, WebConfig(n=160, seed=7, eval_per_concept=1, retrieval_pairs=2, workers=1))
    with WebServer(root, slow_seconds=3) as server:
        (root / "build.toml").write_text(CONFIG)
        yield root, server.urls_path


@pytest.fixture(scope="module")
def built(web, ray_local, tmp_path_factory):
    import curate.urllist.stream as stream
    from pipelines.build import build, load_build_config

    root, urls = web
    out = tmp_path_factory.mktemp("build")
    stage = stream.stage_url_list
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stream, "stage_url_list", lambda *a, **k: (STAGED.append(a[0]), stage(*a, **k))[1])
        manifest = build(urls, out, load_build_config(root / "build.toml"), allow_private="loopback", progress=False)
    return out, manifest


STAGED: list = []  # what the build fixture's build staged (read into a local parquet file)


def test_the_build_reads_its_url_list_once(web, built):
    # Staging reads every row, checks uids and writes a local copy: the download reuses the build's copy.
    assert STAGED == [web[1]]
    out, _ = built
    assert json.loads((out / "raw" / "_input" / "plan.json").read_text())["source"] == str(out / "inputs.parquet")


def test_every_input_row_has_one_fate_matching_the_truth(web, built):
    root, urls = web
    out, manifest = built
    samples = pq.read_table(out / "samples.parquet").to_pylist()
    truth = {r["uid"]: r for r in pq.read_table(root / "truth.parquet").to_pylist()}
    assert [s["uid"] for s in samples] == pq.read_table(urls).column("uid").to_pylist()
    assert manifest.input_rows == 160 == sum(sum(v.values()) for v in manifest.counts.values())
    by_kind: dict[str, list[str]] = {}
    for s in samples:
        kind = truth[s["uid"]]["kind"]
        by_kind.setdefault(kind, []).append("kept" if s["status"] == "kept" else s["reason"])
        assert (s["band"] is not None) == (
            s["status"] == "kept" or (s["status"] == "dropped" and s["reason"] not in ("duplicate", "contaminated"))
        )
    for kind, got in by_kind.items():
        if kind in FATES:
            # Faults and duplicates are exact; language ID on short captions errs now and then.
            share = sum(g in FATES[kind] for g in got) / len(got)
            assert share >= (0.9 if kind in ("clean", "foreign") else 1.0), (kind, Counter(got))
    fates = Counter((truth[s["uid"]]["kind"], s["status"]) for s in samples)
    assert fates[("misaligned", "kept")] > 0  # only CLIP can see these; heuristics keep them


def test_tiers_nested_bands_disjoint_shards_read_back(built):
    out, manifest = built
    seen = {}
    for band, info in manifest.bands.items():
        for rel in info.shards:
            for s in wds.WebDataset(str(out / "tiers" / rel), shardshuffle=False):
                assert s["__key__"] not in seen
                seen[s["__key__"]] = band
                assert json.loads(s["json"])["band"] == band
    samples = {r["uid"]: r for r in pq.read_table(out / "samples.parquet").to_pylist()}
    assert {u for u, r in samples.items() if r["band"]} == set(seen)
    tiers = list(manifest.tiers.values())
    for small, big in zip(tiers, tiers[1:], strict=False):
        assert big.bands[: len(small.bands)] == small.bands and big.samples >= small.samples


def test_retier_recuts_without_downloading(built, tmp_path):
    from pipelines.build import retier, stored_config

    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)

    def state(d):
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}

    before = state(copy / "raw") | state(copy / "annotations")
    cfg = stored_config(copy)
    cfg = type(cfg)(**{**cfg.__dict__, "bands": type(cfg.bands)(edges=(0.25, 0.5, 1.0))})
    t0 = time.perf_counter()
    m = retier(copy, cfg, progress=False)
    assert list(m.tiers) == ["top25", "top50", "kept", "unfiltered"]
    assert state(copy / "raw") | state(copy / "annotations") == before  # nothing downloaded or decoded again
    assert time.perf_counter() - t0 < 30


def test_balanced_bands_without_clip_embeddings_say_what_to_do(built, tmp_path):
    from curate.core.errors import InputError
    from pipelines.build import retier, stored_config

    copy = tmp_path / "copy"
    shutil.copytree(built[0], copy)
    cfg = stored_config(copy)
    cfg = type(cfg)(**{**cfg.__dict__, "bands": type(cfg.bands)(balance="clusters")})
    with pytest.raises(InputError, match="needs CLIP image embeddings"):
        retier(copy, cfg, progress=False)
    assert (copy / "tiers" / "manifest.json").exists()  # refused before anything changed


def _normalised(out: Path) -> tuple[list[dict], dict]:
    samples = pq.read_table(out / "samples.parquet").to_pylist()
    text = (out / "tiers" / "manifest.json").read_text().replace(str(out.resolve()), "OUT")
    manifest = json.loads(text)
    manifest.pop("code_version")
    return samples, manifest


def _run(out: Path, root: Path, urls: Path, failpoint: str | None = None, until=None) -> int:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop(ENV, None)
    if failpoint:
        env[ENV] = failpoint
    cmd = [sys.executable, "-m", "pipelines.cli", "build", str(urls), "--out", str(out)]
    cmd += ["--config", str(root / "build.toml"), "--allow-private-hosts", "loopback"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if until is not None:
        while proc.poll() is None and not until(out):
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"tiers build failed ({proc.returncode}): {err[-3000:]}")
    return proc.returncode


def test_kill_9_at_five_points_then_rerun_equals_uninterrupted(web, built, tmp_path):
    root, urls = web
    out = tmp_path / "killed"
    kills = [
        ("mid-download", None, lambda d: len(list((d / "raw" / "_done").glob("*.json"))) >= 1),
        ("after download", "build:after_download", None),
        ("mid-annotate", None, lambda d: len(list((d / "annotations").glob("[0-9]*.parquet"))) >= 1),
        ("after dedup", "decide:after_dedup", None),
        ("mid-sharding", "tiers:after_shard@3", None),
        ("before manifest", "tiers:before_manifest", None),
    ]
    killed = 0
    for _, fp, until in kills:
        killed += _run(out, root, urls, fp, until) == -signal.SIGKILL
    assert killed >= 5
    assert _run(out, root, urls) == 0
    assert _normalised(out) == _normalised(built[0])


def test_open_clip_trains_on_a_tier_from_the_manifest(built, tmp_path):
    from train.models import model_config

    out, manifest = built
    _, cfg = model_config("ct-vit-micro-32")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    cmd = [sys.executable, "-m", "open_clip_train.main", "--train-data", manifest.tiers["kept"].brace]
    cmd += ["--dataset-type", "webdataset", "--dataset-resampled", "--train-num-samples", "64", "--batch-size", "16"]
    cmd += ["--model", f"local-dir:{model_dir}", "--workers", "1", "--epochs", "1", "--precision", "fp32"]
    cmd += ["--save-frequency", "0", "--report-to", "", "--logs", str(tmp_path / "logs"), "--name", "interop"]
    cmd += ["--zeroshot-frequency", "0", "--val-frequency", "0", "--log-every-n-steps", "1"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Train Epoch: 0 [" in res.stdout + res.stderr


def test_bootstrap_trains_real_filter_clips_on_the_build_and_recuts_by_their_held_out_scores(built, tmp_path):
    """``tiers bootstrap``'s path end to end with the real trainer and scorer (the held-out rule itself is
    tested with stand-ins in test_bootstrap.py): every kept sample scored by the model of its fold,
    each model trained on the other folds only, and the bands re-cut by those scores."""
    import dataclasses

    from pipelines.bootstrap import BootstrapConfig, run_bootstrap
    from pipelines.build import retier, stored_config

    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    tiny = {"workers": 0, "threads": 1, "batch_size": 16}
    cfg = BootstrapConfig(folds=2, samples_seen=32, train=tiny, device="cpu")
    scores = run_bootstrap(copy, cfg).to_pylist()
    samples = pq.read_table(copy / "samples.parquet").to_pylist()
    kept = {r["uid"] for r in samples if r["status"] == "kept"}
    assert {r["uid"] for r in scores} == kept
    assert all(r["bootstrap_raw"] == r["bootstrap_raw"] for r in scores)  # every kept image decodes: no NaN
    for f in (0, 1):
        mine = [r for r in scores if r["bootstrap_fold"] == f]
        run = copy / "bootstrap" / "r1" / f"f{f}" / "run"
        assert {r["bootstrap_model"] for r in mine} == {f"local-dir:{(run / 'model').resolve()}"}
        trained_on = json.loads((run / "summary.json").read_text())["tier_samples"]
        assert trained_on == len(scores) - len(mine)  # the other fold, all of it
    build_cfg = stored_config(copy)
    recut = dataclasses.replace(build_cfg, quality=dataclasses.replace(build_cfg.quality, score="bootstrap"))
    retier(copy, recut, progress=False)
    quality = {r["uid"]: r["quality"] for r in pq.read_table(copy / "samples.parquet").to_pylist()}
    assert all(quality[r["uid"]] == pytest.approx(r["bootstrap_score"]) for r in scores)


def test_dedup_in_partitions_writes_what_the_in_memory_stage_writes(built, tmp_path, monkeypatch):
    """`[dedup] partition_rows` makes the stage read the annotation files a batch at a time instead of
    holding the pool's columns: the same dedup.parquet and summary, contamination included."""
    import tarfile

    import numpy as np
    import pyarrow as pa

    import curate.annotate
    import curate.dedup.stage
    from curate.annotate import read_annotations
    from curate.dedup import DedupConfig
    from curate.dedup.stage import read_dedup, run_dedup

    out, _ = built
    with tarfile.open(out / "raw" / "00000.tar") as tar:  # three pool images as an "evaluation set"
        images = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith((".jpg", ".png", ".webp"))]
    pq.write_table(pa.table({"image": images[:3]}), tmp_path / "eval.parquet")
    n = read_annotations(out, columns=["uid"]).num_rows
    rng = np.random.default_rng(0)
    quality, prefer = rng.random(n).astype(np.float32), rng.random(n) < 0.8
    got = {}
    # In this process (not the Ray task a build's dedup is), where the stand-in reader below acts.
    monkeypatch.setattr(curate.dedup.stage, "ray_running", lambda: False)
    for rows in (0, 7):  # 0: in memory; 7 rows a partition: the pool spread over many
        d = tmp_path / f"rows-{rows}"
        shutil.copytree(out, d)
        if rows:  # the partitioned stage never reads the annotation table whole

            def whole(*_a, **_k):
                raise AssertionError("the annotation table was read whole")

            monkeypatch.setattr(curate.annotate, "read_annotations", whole)
        cfg = DedupConfig(semantic=False, partition_rows=rows)
        summary = run_dedup(d, cfg, quality, prefer, (str(tmp_path / "eval.parquet"),))
        got[rows] = (read_dedup(d), summary)
    (memory, a), (parts, b) = got[0], got[7]
    assert parts.equals(memory)
    assert (b.rows, b.duplicates, b.by_kind, b.contaminated) == (a.rows, a.duplicates, a.by_kind, a.contaminated)
    assert a.duplicates > 0 and a.by_kind.get("contamination", 0) >= 3
