"""Pre-flight: every bad input stops `tiers study` before anything trains — one line, exit 2, the
output directory untouched."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipelines.study as study_mod
from curate.shard import ShardConfig, write_tiers
from pipelines.cli import main
from tests.test_tiers import make_build


@pytest.fixture
def setup(tmp_path, small_web, monkeypatch):
    """A valid study (its runner records instead of training) and an existing output dir with a marker."""
    samples = make_build(tmp_path / "build", n=400, filtered=40)
    write_tiers(tmp_path / "build", samples, shard_cfg=ShardConfig(shard_size=50), progress=False)
    trained = []
    monkeypatch.setattr(study_mod, "default_runner", lambda run, d: trained.append(run) or {"zeroshot_top1": 0.5})
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    ev = small_web / "eval"
    values = {
        "tiers_dir": f'"{tmp_path / "build"}"',
        "tiers": '["top10", "kept"]',
        "budgets": "[200, 400]",
        "seeds": "[0]",
        "train": "{ batch_size = 100 }",
        "eval": f'{{ zeroshot = "{ev / "zeroshot.parquet"}", classes = "{ev / "classes.json"}", '
        f'retrieval = "{ev / "retrieval.parquet"}" }}',
    }

    def study(**over):
        p = tmp_path / "study.toml"
        p.write_text("\n".join(f"{k} = {v}" for k, v in {**values, **over}.items() if v is not None))
        return p

    return study, out, trained, tmp_path


def refused(capsys, argv, out, trained, *needles):
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing was trained" in err, err
    for needle in needles:
        assert needle in err, err
    assert trained == []
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before
    return err


def test_the_valid_study_passes_and_trains(setup, capsys):
    study, out, trained, _ = setup
    assert main(["study", str(study()), "--out", str(out)]) == 0
    assert len(trained) == 4 and (out / "results.parquet").exists()


def test_unknown_tier(setup, capsys):
    study, out, trained, _ = setup
    refused(capsys, ["study", str(study(tiers='["top10", "top99"]')), "--out", str(out)], out, trained, "top99")


def test_empty_tier_and_missing_shard(setup, capsys):
    study, out, trained, tmp = setup
    m = tmp / "build" / "tiers" / "manifest.json"
    doc = json.loads(m.read_text())
    doc["tiers"]["top10"].update(samples=0, shards=[])
    m.write_text(json.dumps(doc))
    refused(capsys, ["study", str(study()), "--out", str(out)], out, trained, "tier 'top10' is empty")
    shard = tmp / "build" / "tiers" / doc["tiers"]["kept"]["shards"][0]
    shard.unlink()
    err = refused(capsys, ["study", str(study()), "--out", str(out)], out, trained, "missing or empty")
    assert "2 problems" in err and shard.name in err


def test_budget_below_one_batch(setup, capsys):
    study, out, trained, _ = setup
    refused(capsys, ["study", str(study(budgets="[50, 400]")), "--out", str(out)], out, trained, "less than one batch")


def test_eval_path_typo(setup, capsys):
    study, out, trained, tmp = setup
    bad = f'{{ zeroshot = "{tmp / "zeroshoot.parquet"}" }}'
    refused(capsys, ["study", str(study(eval=bad)), "--out", str(out)], out, trained, "zeroshoot.parquet")


def test_eval_file_without_the_columns_its_task_needs(setup, capsys):
    study, out, trained, tmp = setup
    pq.write_table(pa.table({"image": [b"x"], "caption": ["a"]}), tmp / "nolabels.parquet")
    bad = f'{{ zeroshot = "{tmp / "nolabels.parquet"}" }}'
    refused(capsys, ["study", str(study(eval=bad)), "--out", str(out)], out, trained, "no label or label_name")
    pq.write_table(pa.table({"image": [b"x"], "label": [0]}), tmp / "nocaption.parquet")
    bad = f'{{ retrieval = "{tmp / "nocaption.parquet"}" }}'
    argv = ["study", str(study(eval=bad)), "--out", str(out)]
    refused(capsys, argv, out, trained, "no caption (or text, or captions) column")
    (tmp / "garbage.parquet").write_bytes(b"not parquet")
    bad = f'{{ zeroshot = "{tmp / "garbage.parquet"}" }}'
    refused(capsys, ["study", str(study(eval=bad)), "--out", str(out)], out, trained, "not a readable parquet")


def test_no_eval_set_at_all(setup, capsys):
    study, out, trained, _ = setup
    refused(
        capsys, ["study", str(study(eval=None)), "--out", str(out)], out, trained, "no [eval] zeroshot or retrieval"
    )


def test_class_names_that_do_not_resolve(setup, capsys, small_web):
    study, out, trained, tmp = setup
    (tmp / "classes.json").write_text(json.dumps({"classnames": ["red", "blue"]}))
    bad = f'{{ zeroshot = "{small_web / "eval" / "zeroshot.parquet"}", classes = "{tmp / "classes.json"}" }}'
    refused(capsys, ["study", str(study(eval=bad)), "--out", str(out)], out, trained, "2 class names for 25 classes")
    (tmp / "ints").mkdir()  # away from the classes.json above, which would name its two classes
    pq.write_table(pa.table({"image": [b"x", b"y"], "label": [0, 1]}), tmp / "ints" / "intlabels.parquet")
    bad = f'{{ zeroshot = "{tmp / "ints" / "intlabels.parquet"}" }}'
    refused(capsys, ["study", str(study(eval=bad)), "--out", str(out)], out, trained, "'a photo of a 3.'")


def test_output_dir_that_cannot_be_written(setup, capsys):
    study, _, trained, tmp = setup
    blocker = tmp / "a_file"
    blocker.write_text("x")
    refused(capsys, ["study", str(study()), "--out", str(blocker / "out")], blocker / "out", trained, "cannot create")
    refused(capsys, ["study", str(study()), "--out", str(blocker)], tmp / "build", trained, "not a directory")


def test_bad_trainer_settings_and_run_budget(setup, capsys):
    study, out, trained, _ = setup
    bad = "{ batch_size = 100, lr_typo = 1 }"
    assert main(["study", str(study(train=bad)), "--out", str(out)]) == 2
    assert "lr_typo" in capsys.readouterr().err and trained == []
    argv = ["study", str(study()), "--out", str(out), "--until-decided", "--max-runs", "3"]
    refused(capsys, argv, out, trained, "--max-runs 3 is fewer than the 4 runs")
    assert main(["study", str(study()), "--out", str(out), "--until-decided"]) == 2
    assert "--until-decided needs --max-runs N" in capsys.readouterr().err and trained == []


def test_a_missing_output_dir_is_not_created_when_a_check_fails(setup, capsys):
    study, _, trained, tmp = setup
    out = tmp / "new" / "out"
    refused(capsys, ["study", str(study(budgets="[1]")), "--out", str(out)], out, trained, "less than one batch")
    assert not (tmp / "new").exists()


def test_a_gpu_the_ray_cluster_lacks(setup, capsys, ray_local):
    study, out, trained, _ = setup  # the session's Ray: 2 CPUs, no GPU
    argv = ["study", str(study()), "--out", str(out), "--gpus-per-run", "1"]
    refused(capsys, argv, out, trained, "the local Ray has 0 GPUs, a run asks for 1; pass --cpus-per-run N")
