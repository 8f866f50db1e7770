"""The whole chain where users run it: `tiers build` on a 3-node Ray cluster writing to S3 (moto's server,
through s3fs), against a local build of the same list; kill -9 of the S3 build healing; training from the bucket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from curate.core import rundir, storage
from curate.core.failpoints import ENV
from tests.test_build import CONFIG  # the local builds' settings: the outputs must compare

ROOT = Path(__file__).resolve().parents[1]
MICRO = {"model": "ct-vit-micro-32", "batch_size": 16, "threads": 1, "log_every": 2, "lr": 2e-3}


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    from synthweb import WebConfig, WebServer, build

    root = tmp_path_factory.mktemp("clusterweb")
    build(root, WebConfig(n=100, seed=11, eval_per_concept=1, retrieval_pairs=2, workers=1))
    with WebServer(root, slow_seconds=3) as server:
        (root / "build.toml").write_text(CONFIG)
        yield root, server.urls_path


def tiers(args: list[str], cluster=None, failpoint: str | None = None) -> int:
    """Run `tiers ...` as a user would, on the cluster when given; returns the exit code (-9 when killed)."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "RAY_ADDRESS")}
    if failpoint:
        env[ENV] = failpoint
    cmd = [sys.executable, "-m", "pipelines.cli", *args, "--no-progress"]
    if cluster is not None:
        cmd += ["--ray-address", cluster.address]
    res = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if res.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"tiers {args[0]} failed ({res.returncode}): {res.stderr[-3000:]}")
    return res.returncode


def build_args(web, out: str) -> list[str]:
    root, urls = web
    config = str(root / "build.toml")
    return ["build", str(urls), "--out", out, "--config", config, "--allow-private-hosts", "loopback"]


@pytest.fixture(scope="module")
def builds(web, ray_cluster, tmp_path_factory):
    """The same list built locally and into a bucket, both on the cluster."""
    import uuid

    local = str(tmp_path_factory.mktemp("local") / "build")
    bucket = f"s3://c-{uuid.uuid4().hex[:10]}"
    fs, _ = storage.filesystem(bucket)
    fs.mkdir(bucket[5:])
    assert tiers(build_args(web, local), ray_cluster) == 0
    assert tiers(build_args(web, f"{bucket}/build"), ray_cluster) == 0
    return local, f"{bucket}/build", bucket


def snapshot(out: str) -> tuple:
    """(samples, manifest with the location taken out, {band shard: bytes}) of a build at any URL."""
    samples = storage.read_parquet(storage.join(out, "samples.parquet"))
    text = storage.read_text(storage.join(out, "tiers", "manifest.json"))
    prefix = str(Path(out).resolve()) if storage.is_local(out) else out
    manifest = json.loads(text.replace(prefix, "OUT"))
    manifest.pop("code_version")
    shards = {
        rel: storage.read_bytes(storage.join(out, "tiers", rel))
        for b in manifest["bands"].values()
        for rel in b["shards"]
    }
    return samples, manifest, shards


def test_s3_build_on_the_cluster_equals_the_local_build(builds):
    local, remote, _ = builds
    s_local, m_local, shards_local = snapshot(local)
    s_remote, m_remote, shards_remote = snapshot(remote)
    assert s_local.equals(s_remote)
    assert m_local == m_remote and m_remote["tiers"]["kept"]["brace"].startswith("OUT/tiers/bands/")
    assert shards_local == shards_remote and len(shards_remote) > 5  # byte-identical band shards
    assert s_remote.num_rows == 100
    # Every stage wrote its markers next to its outputs in the bucket; nothing staged was left there.
    names = storage.glob(remote, "**")
    assert not [n for n in names if n.endswith(".tmp") or "/_tmp/" in n]
    assert storage.exists(f"{remote}/raw/_done/00000.json") and storage.exists(
        f"{remote}/annotations/_done/00000.json"
    )


def test_kill_9_of_the_s3_build_at_three_points_then_rerun_equals_uninterrupted(builds, web, ray_cluster):
    _, remote, bucket = builds
    out = f"{bucket}/killed"
    points = ["build:after_download", "decide:after_dedup", "tiers:after_shard@3"]
    killed = [tiers(build_args(web, out), ray_cluster, failpoint=p) for p in points]
    assert killed == [-signal.SIGKILL] * 3
    # Killed after 3 band shards: the bucket holds shards but no manifest, so nothing looks finished.
    assert not storage.exists(f"{out}/tiers/manifest.json")
    assert tiers(build_args(web, out), ray_cluster) == 0
    a, b = snapshot(out), snapshot(remote)
    assert a[0].equals(b[0]) and a[1] == b[1] and a[2] == b[2]


SETTINGS = {**MICRO, "samples_seen": 16 * 12, "workers": 2, "checkpoint_every": 3, "preset": "improved"}


@pytest.fixture(scope="module")
def straight(builds, tmp_path_factory):
    """An uninterrupted run on the bucket's `kept` tier: the weights every resumed run must end with."""
    from train import api
    from train.config import make_config

    run = tmp_path_factory.mktemp("straight")
    summary = api.train(make_config(SETTINGS), builds[1], "kept", run, progress=False)
    assert summary.steps == 12
    return run, summary


def kill_after_checkpoint(tiers_url: str, out: str, toml: Path, has_checkpoint) -> None:
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--tiers", tiers_url, "--tier", "kept"]
    cmd += ["--out", out, "--config", str(toml), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not has_checkpoint() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its loader workers, mid-step
        proc.wait()


def same_weights(a_dir: Path, b_dir: Path) -> None:
    a = torch.load(a_dir / "model" / "open_clip_pytorch_model.bin", weights_only=True)
    b = torch.load(b_dir / "model" / "open_clip_pytorch_model.bin", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_training_streams_an_s3_tier_and_resumes_exactly_after_kill_9(builds, straight, tmp_path):
    from train import api
    from train.config import make_config

    local, remote, _ = builds
    cfg = make_config(SETTINGS)
    toml = tmp_path / "train.toml"
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in SETTINGS.items()))
    run = tmp_path / "killed"
    kill_after_checkpoint(remote, str(run), toml, lambda: rundir.all_steps(run / "checkpoints"))
    assert not (run / "summary.json").exists(), "the run finished before it could be killed"
    killed_at = rundir.all_steps(run / "checkpoints")[-1][0]
    resumed = api.train(cfg, remote, "kept", run, progress=False)
    assert resumed.resumed_from == killed_at and resumed.steps == 12
    same_weights(straight[0], run)
    # The same tier read from local disk gives the same model: the stream does not depend on the store.
    on_disk = api.train(cfg, local, "kept", tmp_path / "local", progress=False)
    assert on_disk.final_loss == pytest.approx(straight[1].final_loss, rel=1e-5)


def test_a_run_directory_in_the_bucket_resumes_on_another_machine(builds, straight, tmp_path):
    """--out s3://...: checkpoints land in the bucket as they are made; a rerun with no local state
    (another machine) resumes from the bucket's newest one and ends with the same weights."""
    import shutil

    from train import api
    from train.config import make_config
    from train.remote import mirror_dir

    _, remote, bucket = builds
    out = f"{bucket}/runs/r1"
    toml = tmp_path / "train.toml"
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in SETTINGS.items()))
    kill_after_checkpoint(remote, out, toml, lambda: storage.glob(out, "checkpoints/step_*/state.pt"))
    assert not storage.exists(f"{out}/summary.json")
    shutil.rmtree(mirror_dir(out))  # the next run starts from the bucket alone
    resumed = api.train(make_config(SETTINGS), remote, "kept", out, progress=False)
    assert resumed.resumed_from > 0 and resumed.steps == 12
    assert storage.exists(f"{out}/summary.json") and storage.exists(f"{out}/model/open_clip_pytorch_model.bin")
    assert not mirror_dir(out).exists()  # finished: the local working copy goes
    mine = tmp_path / "mine"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "open_clip_pytorch_model.bin").write_bytes(
        storage.read_bytes(f"{out}/model/open_clip_pytorch_model.bin")
    )
    same_weights(straight[0], mine)
