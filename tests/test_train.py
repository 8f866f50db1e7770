"""The trainer: fixed compute whatever the tier, exact resume after kill -9, hostile bytes, evaluation, CLI.

Shards come straight from the synthetic web (``synthweb.shards``); models are the micro config
(2 layers, 64 wide, 32 px), so each run takes seconds on one CPU thread.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from curate.core import rundir
from curate.core.errors import InputError
from curate.core.manifest import read_tier
from pipelines.cli import main
from synthweb.shards import shards_from_synthweb
from train import api
from train.config import EvalConfig, load_config, make_config, parse_set

REPO = Path(__file__).resolve().parent.parent
MICRO = {"model": "ct-vit-micro-32", "batch_size": 32, "threads": 1, "log_every": 2, "lr": 2e-3}


@pytest.fixture(scope="module")
def tiers(small_web, tmp_path_factory):
    """Clean samples of the small web as tiers ``small`` (10%) and ``full`` in 50-sample shards."""
    out = tmp_path_factory.mktemp("tiers")
    shards_from_synthweb(small_web, out, {"small": 0.1, "full": 1.0}, shard_size=50)
    return out


def cfg(**kw):
    return make_config({**MICRO, **kw})


def weights(run: Path) -> dict:
    return torch.load(run / "model" / "open_clip_pytorch_model.bin", weights_only=True)


def test_synthetic_tiers_follow_the_manifest_contract(tiers):
    full, small = read_tier(tiers, "full"), read_tier(tiers, "small")
    assert set(small.shards) < set(full.shards)
    assert full.samples == pytest.approx(10 * small.samples, rel=0.1)
    doc = json.loads((tiers / "tiers" / "manifest.json").read_text())
    assert doc["tiers"]["full"]["bands"] == ["band-small", "band-full"]


def test_same_budget_gives_same_steps_on_a_ten_times_smaller_tier(tiers, tmp_path):
    c = cfg(samples_seen=256, workers=1)
    big = api.train(c, tiers, "full", tmp_path / "full", progress=False)
    small = api.train(c, tiers, "small", tmp_path / "small", progress=False)
    assert big.steps == small.steps == 8
    assert big.samples_seen == small.samples_seen == 256
    ratio = small.repetition / big.repetition
    assert ratio == pytest.approx(big.tier_samples / small.tier_samples) and 9 <= ratio <= 11
    lines = [json.loads(x) for x in (tmp_path / "small" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6, 8]
    assert lines[-1]["repetition"] == pytest.approx(small.repetition)
    assert all(0 <= r["data_wait"] <= 1 and r["samples_per_s"] > 0 for r in lines)
    # a finished run is not trained again
    mtime = (tmp_path / "small" / "model" / "open_clip_pytorch_model.bin").stat().st_mtime
    assert api.train(c, tiers, "small", tmp_path / "small", progress=False).steps == 8
    assert (tmp_path / "small" / "model" / "open_clip_pytorch_model.bin").stat().st_mtime == mtime
    with pytest.raises(InputError, match="another config"):
        api.train(cfg(samples_seen=640), tiers, "small", tmp_path / "small", progress=False)


def test_resume_after_kill_9_ends_with_the_same_weights(tiers, tmp_path):
    """The improved recipe (random crops, jitter, text aug, token and patch dropout) in 2 loader workers."""
    settings = {**MICRO, "samples_seen": 32 * 12, "workers": 2, "checkpoint_every": 3, "preset": "improved"}
    c = make_config(settings)
    api.train(c, tiers, "full", tmp_path / "straight", progress=False)

    toml = tmp_path / "train.toml"
    toml.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items()))
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--tiers", str(tiers), "--tier", "full"]
    cmd += ["--out", str(run), "--config", str(toml), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not rundir.all_steps(run / "checkpoints") and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its loader workers, mid-step
        proc.wait()
    assert not (run / "summary.json").exists(), "the run finished before it could be killed"
    killed_at = rundir.all_steps(run / "checkpoints")[-1][0]
    assert 0 < killed_at < 12

    resumed = api.train(c, tiers, "full", run, progress=False)
    assert resumed.resumed_from == killed_at and resumed.steps == 12
    a, b = weights(tmp_path / "straight"), weights(run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, 13, 2))  # each step logged once, across the kill


def test_hostile_bytes_are_skipped_and_counted(small_web, tmp_path):
    from curate.core.tarstream import TarWriter
    from synthweb.bodies import HTML_BODY, bomb_png
    from train import augment
    from train.data import StreamSpec, TierStream

    good = pq.read_table(small_web / "eval" / "zeroshot.parquet").column("image").to_pylist()[:6]
    bad = [good[0][: len(good[0]) // 2], HTML_BODY, bomb_png(), b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40]
    shard = tmp_path / "000000.tar"
    with open(shard, "wb") as f:
        w = TarWriter(f.fileno())
        for i, data in enumerate(good + bad):
            w.add(f"s{i:02d}.jpg", data)
            w.add(f"s{i:02d}.txt", b"a red circle" if i % 2 else "\u00e9t\u00e9 \xff".encode("utf-8", "replace"))
        w.close()
    (tmp_path / "001.tar").write_bytes(b"not a tar at all" * 100)
    spec = StreamSpec(batch_size=4, seed=0, mix_shards=2, rank=0, workers=0, world_size=1, draft=40)
    import open_clip

    tok = open_clip.get_tokenizer("ViT-B-32")
    stream = TierStream(
        [str(shard), str(tmp_path / "001.tar")],
        spec,
        augment.ImageAugmenter(32, make_config().image_aug),
        tok,
        None,
        0,
    )
    it = iter(stream)
    batches = [next(it) for _ in range(6)]  # 24 good samples drawn from 6 good + 5 hostile ones per pass
    assert all(b["images"].shape == (4, 3, 32, 32) and b["images"].dtype == torch.uint8 for b in batches)
    assert sum(b["skipped"] for b in batches) >= 5


def test_sixty_steps_learn_the_concepts_well_above_chance(tiers, small_web, tmp_path):
    c = cfg(samples_seen=32 * 60, workers=1, checkpoint_every=0, lr=3e-3)
    c = make_config({**c.to_dict(), "eval": {"zeroshot": [str(small_web / "eval" / "zeroshot.parquet")]}})
    s = api.train(c, tiers, "full", tmp_path / "run", progress=False)
    zs = json.loads((tmp_path / "run" / "eval.json").read_text())["zeroshot"]["zeroshot"]
    assert zs["classes"] == 25 and zs["chance"] == pytest.approx(0.04) and zs["n"] == 100
    assert s.eval["zeroshot_top1"] == zs["top1"] >= 3 * zs["chance"]  # chance is 4%; a fuller run is in bench/


def test_checkpoints_load_as_open_clip_models_and_refuse_pickled_code(tiers, tmp_path):
    import open_clip

    from train import load_model

    c = cfg(samples_seen=64, workers=0, checkpoint_every=1, keep_checkpoints=1)
    api.train(c, tiers, "small", tmp_path / "run", progress=False)
    assert [s for s, _ in rundir.all_steps(tmp_path / "run" / "checkpoints")] == [2]
    model, preprocess, tokenizer = load_model(tmp_path / "run")
    direct = open_clip.create_model("local-dir:" + str(tmp_path / "run" / "model"))
    for k, v in direct.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])
    ckpt_model, _, _ = load_model(tmp_path / "run" / "checkpoints" / "step_000002" / "state.pt")
    assert torch.equal(ckpt_model.logit_scale, model.logit_scale)
    with torch.no_grad():
        f = model.encode_text(tokenizer(["a red circle"]), normalize=True)
    assert f.shape == (1, 64)

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "open_clip_config.json").write_text((tmp_path / "run" / "model" / "open_clip_config.json").read_text())
    torch.save({"state_dict": {"x": Path("/")}}, evil / "open_clip_pytorch_model.bin")
    with pytest.raises(InputError, match="more than tensors"):
        load_model(evil)


def test_the_conv_filter_model_trains_and_reloads_with_its_batch_norm_statistics(tiers, tmp_path):
    """``ct-rn-micro-32`` (the bootstrap's filter CLIP): an open_clip ModifiedResNet tower whose
    BatchNorm running statistics are buffers, not parameters; they must be saved and loaded too."""
    import open_clip

    from train import load_model

    api.train(
        cfg(model="ct-rn-micro-32", samples_seen=64, workers=0), tiers, "small", tmp_path / "run", progress=False
    )
    model, preprocess, tokenizer = load_model(tmp_path / "run")
    direct = open_clip.create_model("local-dir:" + str(tmp_path / "run" / "model"))
    stats = [k for k in direct.state_dict() if k.endswith("running_mean")]
    assert stats and all(direct.state_dict()[k].abs().sum() > 0 for k in stats)  # trained, not the zero init
    for k, v in direct.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert not model.training  # scoring uses the running statistics, not the batch's
    with torch.no_grad():
        fi = model.encode_image(torch.zeros(2, 3, 32, 32), normalize=True)
    assert fi.shape == (2, 64)


def test_patch_dropout_on_a_resnet_tower_says_it_is_ignored(caplog):
    from train.models import create, model_config

    name, model_cfg = model_config("ct-rn-micro-32")
    with caplog.at_level("WARNING", logger="train.models"):
        create(name, model_cfg, patch_dropout=0.25)
    assert "patch_dropout 0.25 is ignored" in caplog.text and "ResNet" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="train.models"):
        create(*model_config("ct-vit-micro-32"), patch_dropout=0.25)
    assert "ignored" not in caplog.text


def test_cli_train_and_eval(tiers, small_web, tmp_path, capsys):
    ev = small_web / "eval"
    run = tmp_path / "run"
    argv = ["train", "--tiers", str(tiers), "--tier", "small", "--samples-seen", "64", "--out", str(run)]
    argv += ["--model", "ct-vit-micro-32", "--batch-size", "32", "--workers", "0", "--threads", "1", "--no-progress"]
    argv += ["--set", "loss='siglip'", "--set", "image_aug.flip=0.5"]
    assert main(argv) == 0
    assert "repetition" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["loss"] == "siglip" and saved["image_aug"]["flip"] == 0.5

    argv = ["eval", str(run), "--zeroshot", str(ev / "zeroshot.parquet"), "--retrieval", str(ev / "retrieval.parquet")]
    assert main(argv + ["--linear-probe", f"probe={ev / 'zeroshot.parquet'}"]) == 0
    doc = json.loads((run / "eval.json").read_text())
    assert set(doc["zeroshot"]["zeroshot"]) >= {"top1", "top5", "n", "chance"}
    assert set(doc["retrieval"]["retrieval"]) >= {f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    probe = doc["linear_probe"]["probe"]
    assert probe["n_train"] + probe["n_test"] == 100 and 0 <= probe["top1"] <= 1

    for bad in (
        ["train", "--tiers", str(tiers), "--tier", "nope", "--samples-seen", "64", "--out", str(tmp_path / "x")],
        ["train", "--tiers", str(tiers), "--tier", "small", "--samples-seen", "64", "--out", str(tmp_path / "x"),
         "--model", "no-such-model"],
        ["train", "--tiers", str(tiers), "--tier", "small", "--samples-seen", "64", "--out", str(tmp_path / "x"),
         "--set", "no_such_field=1"],
        ["eval", str(tmp_path / "nothing-here"), "--zeroshot", str(ev / "zeroshot.parquet")],
    ):  # fmt: skip
        assert main(bad) == 2, bad


def test_eval_reads_image_folders_with_a_split(small_web, tmp_path, tiers):
    from train.evaluation import dataset_name, read_labelled

    table = pq.read_table(small_web / "eval" / "zeroshot.parquet").to_pylist()
    for i, row in enumerate(table[:50]):
        d = tmp_path / "folder" / ("train" if i < 40 else "test") / row["label_name"].replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.jpg").write_bytes(row["image"])
    data = read_labelled(tmp_path / "folder")
    assert len(data.images) == 50 and (data.split == "train").sum() == 40
    assert all(" " in n for n in data.classnames)
    assert dataset_name(str(Path("x/cifar10/test.parquet")))[0] == "cifar10-test"
    run = tmp_path / "run"
    api.train(cfg(samples_seen=64, workers=0), tiers, "small", run, progress=False)
    folder = (str(tmp_path / "folder"),)
    doc = api.evaluate(run, EvalConfig(zeroshot=folder, linear_probe=folder))
    assert doc.get("linear_probe", "folder")["n_test"] == 10 and doc.get("zeroshot", "folder")["n"] == 50


def test_config_presets_toml_and_overrides(tmp_path):
    base, imp = make_config(), make_config(preset="improved")
    assert base.image_aug.scale == (0.9, 1.0) and base.label_smoothing == 0 and base.patch_dropout == 0
    assert imp.label_smoothing > 0 and imp.patch_dropout > 0 and imp.image_aug.flip > 0 and imp.text_aug.swap > 0
    assert imp.image_aug.hue == 0  # captions name colours
    p = tmp_path / "c.toml"
    p.write_text('preset = "improved"\nlr = 3e-4\n[image_aug]\nscale = [0.5, 1.0]\n[eval]\nzeroshot = "z.parquet"\n')
    c = load_config(p, parse_set(["batch_size=64", "text_aug.swap=0"]))
    assert (c.preset, c.lr, c.batch_size, c.image_aug.scale, c.image_aug.flip) == (
        "improved",
        3e-4,
        64,
        (0.5, 1.0),
        0.5,
    )
    assert c.text_aug.swap == 0 and c.text_aug.delete == imp.text_aug.delete and c.eval.zeroshot == ("z.parquet",)
    assert c.hash() == load_config(p, {"batch_size": 64, "text_aug.swap": 0}).hash() != imp.hash()
    for bad in ({"image_aug.nope": 1}, {"loss": "triplet"}, {"preset": "best"}, {"text_aug.synonyms": 0.1}):
        with pytest.raises(InputError):
            load_config(p, bad)


def test_caption_augmentation_and_token_dropout_keep_start_and_end():
    import random

    import open_clip

    from train.augment import CaptionAugmenter, drop_tokens
    from train.config import TextAug

    aug = CaptionAugmenter(TextAug(swap=1.0, delete=0.3, stopwords=1.0))
    rng = random.Random(0)
    out = aug("a photo of the bright red star on a grey background", rng)
    assert out and not {"a", "of", "the", "on"} & set(out.split())
    tok = open_clip.get_tokenizer("ViT-B-32")(["a photo of the bright red star on a grey background"])
    dropped = drop_tokens(tok, 0.5, [random.Random(1)])
    n = int((dropped > 0).sum())
    assert dropped[0, 0] == tok[0, 0] and dropped[0, n - 1] == tok.max() and n < int((tok > 0).sum())


@pytest.mark.slow
def test_torchrun_ddp_on_cpu_gathers_features_and_halves_the_steps(tiers, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "pipelines.cli", "train", "--tiers", str(tiers), "--tier", "full", "--samples-seen", "256"]
    cmd += ["--out", str(run), "--model", "ct-vit-micro-32", "--batch-size", "32", "--workers", "1", "--threads", "1"]
    res = subprocess.run(cmd + ["--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["world_size"] == 2 and s["global_batch"] == 64 and s["steps"] == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_training_runs(tiers, tmp_path):
    s = api.train(cfg(samples_seen=256, device="cuda", workers=1), tiers, "full", tmp_path / "gpu", progress=False)
    assert s.steps == 8 and s.final_loss == s.final_loss  # not NaN
