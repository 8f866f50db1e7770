"""Starting from weights: fine-tuning a run (--init), open_clip's ARCH:TAG from the local cache only, and
experiment tracking (TensorBoard event files, W&B offline) carrying the numbers of metrics.jsonl."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from curate.core.errors import InputError
from pipelines.cli import main
from synthweb.shards import shards_from_synthweb
from train import api
from train.config import make_config

MICRO = {"model": "ct-vit-micro-32", "batch_size": 32, "threads": 1, "log_every": 2, "lr": 2e-3, "workers": 0}


@pytest.fixture(scope="module")
def tiers(small_web, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft-tiers")
    shards_from_synthweb(small_web, out, {"small": 0.1, "full": 1.0}, shard_size=50)
    return out


@pytest.fixture(scope="module")
def base(tiers, small_web, tmp_path_factory):
    """A run trained from scratch long enough to have learnt something: the checkpoint others start from."""
    run = tmp_path_factory.mktemp("ft") / "base"
    zs = str(small_web / "eval" / "zeroshot.parquet")
    api.train(make_config({**MICRO, "samples_seen": 32 * 60, "eval": {"zeroshot": [zs]}}), tiers, "full", run, False)
    return run


def weights(run: Path) -> dict:
    return torch.load(run / "model" / "open_clip_pytorch_model.bin", weights_only=True)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def first_loss(run: Path) -> float:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss"]


def test_fine_tuning_starts_from_the_checkpoint_and_changes_the_eval(base, tiers, small_web, tmp_path):
    zs = str(small_web / "eval" / "zeroshot.parquet")
    short = {**MICRO, "samples_seen": 32 * 4, "lr": 5e-4, "eval": {"zeroshot": [zs]}}
    scratch = api.train(make_config(short), tiers, "small", tmp_path / "scratch", False)
    tuned = api.train(
        make_config({**short, "init": str(base), "model": "init"}), tiers, "small", tmp_path / "ft", False
    )
    base_eval = api.evaluate(base).get("zeroshot", "zeroshot")["top1"]
    # it starts where the base run ended, far below a random start, and lands elsewhere than either
    assert first_loss(tmp_path / "ft") < first_loss(tmp_path / "scratch") - 0.3
    assert tuned.eval["zeroshot_top1"] != scratch.eval["zeroshot_top1"]
    assert tuned.eval["zeroshot_top1"] > scratch.eval["zeroshot_top1"]
    assert tuned.eval["zeroshot_top1"] != base_eval or weights(tmp_path / "ft") != weights(base)
    started = json.loads((tmp_path / "ft" / "model" / "open_clip_config.json").read_text())["clip_tiers"]
    assert started["started_from"]["init"] == str((base / "model").resolve())
    # with a zero learning rate the weights are exactly the checkpoint's
    frozen = api.train(make_config({**short, "lr": 0.0, "init": str(base), "model": "init"}), tiers, "small",
                       tmp_path / "lr0", False)  # fmt: skip
    assert frozen.steps == 4
    assert same(weights(tmp_path / "lr0"), weights(base))


def test_init_refuses_another_architecture_and_siglip_without_a_bias(base, tiers, tmp_path):
    with pytest.raises(InputError, match="another architecture"):
        api.train(make_config({**MICRO, "samples_seen": 64, "init": str(base), "model": "ct-vit-tiny-32"}),
                  tiers, "small", tmp_path / "a", False)  # fmt: skip
    with pytest.raises(InputError, match="logit bias"):
        api.train(make_config({**MICRO, "samples_seen": 64, "init": str(base), "model": "init", "loss": "siglip"}),
                  tiers, "small", tmp_path / "b", False)  # fmt: skip


def fake_hub(cache: Path, repo: str, weights_file: Path) -> None:
    """The layout huggingface_hub leaves after a download: blobs, a snapshot and refs/main."""
    d = cache / f"models--{repo.replace('/', '--')}"
    (d / "snapshots" / "0123abc").mkdir(parents=True)
    (d / "refs").mkdir()
    (d / "refs" / "main").write_text("0123abc")
    shutil.copy(weights_file, d / "snapshots" / "0123abc" / "open_clip_pytorch_model.bin")


def test_arch_tag_loads_pretrained_weights_from_the_local_cache_only(base, tiers, tmp_path, monkeypatch, capsys):
    import open_clip.pretrained as pretrained

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    fake = {"hf_hub": "clip-tiers/micro-test/", "url": "", "quick_gelu": False}
    monkeypatch.setitem(pretrained._PRETRAINED, "ct-vit-micro-32", {"testtag": fake})
    args = ["train", "--tiers", str(tiers), "--tier", "small", "--samples-seen", "64", "--batch-size", "32",
            "--workers", "0", "--threads", "1", "--lr", "0", "--model", "ct-vit-micro-32:testtag"]  # fmt: skip
    # not cached: one line naming where it looked, exit 2, nothing downloaded
    assert main(args + ["--out", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "hub" / "models--clip-tiers--micro-test") in err
    assert "not in the local cache" in err
    fake_hub(tmp_path / "hub", "clip-tiers/micro-test", base / "model" / "open_clip_pytorch_model.bin")
    assert main(args + ["--out", str(tmp_path / "cached"), "--quiet"]) == 0
    assert same(weights(tmp_path / "cached"), weights(base))
    assert main(args[:-1] + ["ViT-B-32:no-such-tag", "--out", str(tmp_path / "x")]) == 2
    assert "not an open_clip pretrained tag" in capsys.readouterr().err


def test_tensorboard_event_file_holds_the_loss_curve_of_metrics_jsonl(tiers, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    args = ["train", "--tiers", str(tiers), "--tier", "small", "--samples-seen", str(32 * 8), "--batch-size", "32",
            "--workers", "0", "--threads", "1", "--model", "ct-vit-micro-32", "--set", "log_every=2",
            "--log-to", "tensorboard", "--out", str(run), "--quiet"]  # fmt: skip
    assert main(args) == 0
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    curve = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in curve] == [r["step"] for r in lines] == [2, 4, 6, 8]
    assert [v for _, v in curve] == pytest.approx([r["loss"] for r in lines], rel=1e-6)
    assert {"train/lr", "train/samples_per_s", "train/repetition"} <= set(acc.Tags()["scalars"])
    assert main(args[:-5] + ["--log-to", "mlflow", "--out", str(tmp_path / "mlflow")]) == 2


def test_wandb_offline_run_per_training_run_grouped(tiers, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    c = make_config(
        {**MICRO, "samples_seen": 64, "track": {"log_to": ["wandb"], "group": "study-a", "name": "cell-1"}}
    )
    api.train(c, tiers, "small", tmp_path / "w", False)
    runs = list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert c.hash() == make_config({**MICRO, "samples_seen": 64}).hash()  # tracking is not the run's identity


def test_a_study_cell_is_one_tracked_run_grouped_by_study(tiers, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train.plan import PlannedRun

    cfg = make_config({**MICRO, "samples_seen": 64, "seed": 0, "track": {"log_to": ["tensorboard"]}})
    cell = PlannedRun("default", "small", 60, str(tiers), cfg, study="quality-vs-size")
    api.train_run(cell, tmp_path / "cell")
    doc = json.loads((tmp_path / "cell" / "config.json").read_text())["config"]["track"]
    assert (doc["group"], doc["name"]) == ("quality-vs-size", "default/small/64/seed0")
    acc = EventAccumulator(str(tmp_path / "cell" / "tensorboard"))
    acc.Reload()
    assert len(acc.Scalars("train/loss")) == 1


def test_run_study_hands_each_cell_its_study_name_for_tracking(tiers, small_web, tmp_path):
    from pipelines.study import StudyFile, run_study, study_config
    from train.plan import EvalSets

    train = {k: v for k, v in MICRO.items() if k != "model"} | {"track": {"log_to": ["tensorboard"]}}
    ev = EvalSets(str(small_web / "eval" / "zeroshot.parquet"), str(small_web / "eval" / "classes.json"))
    f = StudyFile(str(tiers), ("small",), (64,), model="ct-vit-micro-32", train=train, eval=ev, name="q-vs-size")
    (row,) = run_study(study_config(f), tmp_path / "study", runner=api.train_run)
    doc = json.loads((tmp_path / "study" / "runs" / row["config_hash"] / "config.json").read_text())["config"]
    assert (doc["track"]["group"], doc["track"]["name"]) == ("q-vs-size", "default/small/64/seed0")
    assert list((tmp_path / "study").glob("runs/*/tensorboard/events.out.tfevents.*"))
