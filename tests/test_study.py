import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.core.errors import InputError
from curate.shard.writer import ShardConfig, write_tiers
from pipelines.report import write_report
from pipelines.scaling import predict
from pipelines.study import load_study, run_study
from tests.test_tiers import make_build


@pytest.fixture
def tiers_dir(tmp_path):
    samples = make_build(tmp_path / "build", n=400, filtered=40)
    write_tiers(tmp_path / "build", samples, shard_cfg=ShardConfig(shard_size=50), progress=False)
    return tmp_path / "build"


def write_study(tmp_path, tiers_dir):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classnames": [f"c{i}" for i in range(20)], "templates": ["a {}."]}))
    text = f"""
name = "unit"
tiers_dir = "{tiers_dir}"
tiers = ["top10", "top30", "kept"]
budgets = [100, 300, 1000]
seeds = [0, 1]
[eval]
classes = "{classes}"
"""
    p = tmp_path / "study.toml"
    p.write_text(text)
    return p


class FakeRunner:
    """Accuracy from the scaling law itself, so the study's plumbing is tested without training."""

    def __init__(self):
        self.calls = []

    def __call__(self, run, run_dir):
        self.calls.append(run["config_hash"])
        q = {"top10": (0.08, -0.42), "top30": (0.04, -0.4), "kept": (0.02, -0.38)}[run["tier"]]
        err = float(predict(run["samples_seen"], run["tier_samples"], *q, 0.1, 3.0)[0])
        noise = 0.005 * np.random.default_rng(run["seed"]).normal()
        return {
            "zeroshot_top1": 1 - err + noise,
            "retrieval_r1_mean": 0.5 * (1 - err),
            "steps": run["samples_seen"] // 10,
        }


def test_study_runs_each_config_once_and_a_rerun_skips_them(tmp_path, tiers_dir):
    cfg = load_study(write_study(tmp_path, tiers_dir))
    runner = FakeRunner()
    rows = run_study(cfg, tmp_path / "out", runner=runner)
    assert len(rows) == 3 * 3 * 2 == len(set(runner.calls))
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert len(table) == 18 and len({r["config_hash"] for r in table}) == 18
    kept = next(r for r in table if r["tier"] == "kept")
    assert kept["repetition"] == pytest.approx(kept["samples_seen"] / kept["tier_samples"])
    again = FakeRunner()
    assert len(run_study(cfg, tmp_path / "out", runner=again)) == 18
    assert again.calls == []
    # a new budget runs only the new configs
    cfg2 = dataclasses.replace(cfg, budgets=(100, 300, 1000, 3000))
    third = FakeRunner()
    run_study(cfg2, tmp_path / "out", runner=third)
    assert len(third.calls) == 3 * 2


def test_report_is_self_contained_with_plots_and_fit(tmp_path, tiers_dir):
    cfg = load_study(write_study(tmp_path, tiers_dir))
    rows = run_study(cfg, tmp_path / "out", runner=FakeRunner())
    path = write_report(tmp_path / "out", rows, {"name": "unit", "classes": cfg.classes}, cfg.tiers_dir)
    page = path.read_text()
    for png in ("accuracy_vs_samples", "accuracy_vs_fraction", "retrieval_vs_samples"):
        assert (tmp_path / "out" / "plots" / f"{png}.png").stat().st_size > 5000
        assert f'alt="{png}"' in page
    assert 'src="http' not in page and "<script" not in page and 'href="http' not in page
    fit = json.loads((tmp_path / "out" / "fit.json").read_text())["default"]
    assert fit["best_tier"] in ("top10", "top30", "kept") and fit["predict_at"] == 10_000
    assert "Predicted best at" in page and "top30" in page


def test_bad_study_files_name_the_file(tmp_path, tiers_dir):
    p = tmp_path / "bad.toml"
    p.write_text("tiers = [")
    with pytest.raises(InputError, match="bad.toml"):
        load_study(p)
    p.write_text('tiers = ["top10"]')
    with pytest.raises(InputError, match="lacks tiers_dir, budgets"):
        load_study(p)
    p.write_text(f'tiers_dir = "{tiers_dir}"\ntiers = ["top99"]\nbudgets = [10]')
    with pytest.raises(InputError, match="top99"):
        run_study(load_study(p), tmp_path / "o", runner=FakeRunner())


def test_a_tiny_real_study_end_to_end(small_web, tmp_path, monkeypatch):
    """The real trainer and evaluation: 2 tiers x 2 budgets, results, plots, report; a rerun trains nothing."""
    import pipelines.study as study_mod
    from synthweb.shards import shards_from_synthweb

    shards_from_synthweb(small_web, tmp_path / "shards", tiers={"small": 0.25, "full": 1.0})
    cfg = study_mod.StudyConfig(
        tiers_dir=str(tmp_path / "shards"),
        tiers=("small", "full"),
        budgets=(64, 128),
        model="ct-vit-micro-32",
        train={"batch_size": 32, "workers": 0},
        zeroshot=str(small_web / "eval" / "zeroshot.parquet"),
        classes=str(small_web / "eval" / "classes.json"),
        retrieval=str(small_web / "eval" / "retrieval.parquet"),
        name="tiny",
    )
    rows = run_study(cfg, tmp_path / "out")
    assert len(rows) == 4 and all(0 <= r["zeroshot_top1"] <= 1 for r in rows)
    assert {r["steps"] for r in rows} == {2, 4}  # steps follow the budget, never the tier size
    path = write_report(tmp_path / "out", rows, dataclasses.asdict(cfg), cfg.tiers_dir)
    assert path.exists() and (tmp_path / "out" / "plots" / "accuracy_vs_samples.png").exists()
    calls = []
    monkeypatch.setattr(study_mod, "default_runner", lambda run, d: calls.append(run) or {})
    assert len(run_study(cfg, tmp_path / "out")) == 4 and calls == []
