import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.core.errors import InputError
from curate.shard import ShardConfig, write_tiers
from pipelines.adaptive import LOOKS
from pipelines.report import write_report
from pipelines.scaling import predict
from pipelines.study import StudyFile, load_study, run_study, study_analysis, study_config
from tests.test_tiers import make_build
from train.plan import EvalSets


@pytest.fixture
def tiers_dir(tmp_path):
    samples = make_build(tmp_path / "build", n=400, filtered=40)
    write_tiers(tmp_path / "build", samples, shard_cfg=ShardConfig(shard_size=50), progress=False)
    return tmp_path / "build"


def write_study(tmp_path, tiers_dir, small_web, seeds=(0, 1), budgets=(100, 300, 1000), extra=""):
    ev = small_web / "eval"
    text = f"""
name = "unit"
tiers_dir = "{tiers_dir}"
tiers = ["top10", "top30", "kept"]
budgets = {list(budgets)}
seeds = {list(seeds)}
{extra}
[train]
batch_size = 50
[eval]
zeroshot = "{ev / "zeroshot.parquet"}"
classes = "{ev / "classes.json"}"
"""
    p = tmp_path / "study.toml"
    p.write_text(text)
    return p


class FakeRunner:
    """Accuracy from the scaling law itself, answered sample by sample on a 500-sample eval set, so the
    study's plumbing and statistics are tested without training."""

    TRUE = {"top10": (0.08, -0.42), "top30": (0.04, -0.4), "kept": (0.02, -0.38)}

    def __init__(self):
        self.calls = []

    def __call__(self, run, run_dir):
        self.calls.append(run.config_hash)
        a, b = self.TRUE[run.tier]
        acc = 1 - float(predict(run.samples_seen, run.tier_samples, a, b, 0.1, 3.0)[0])
        rng = np.random.default_rng([run.seed, run.samples_seen, len(run.tier)])
        correct = rng.random(500) < acc + 0.01 * rng.normal()
        return {
            "zeroshot_top1": float(correct.mean()),
            "zeroshot_correct": correct.tolist(),
            "retrieval_r1_mean": 0.5 * acc,
            "steps": run.samples_seen // 50,
        }


def test_study_runs_each_config_once_and_a_rerun_skips_them(tmp_path, tiers_dir, small_web):
    cfg = load_study(write_study(tmp_path, tiers_dir, small_web))
    runner = FakeRunner()
    rows = run_study(cfg, tmp_path / "out", runner=runner)
    assert len(rows) == 3 * 3 * 2 == len(set(runner.calls))
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert len(table) == 18 and len({r["config_hash"] for r in table}) == 18
    kept = next(r for r in table if r["tier"] == "kept")
    assert kept["repetition"] == pytest.approx(kept["samples_seen"] / kept["tier_samples"])
    # every row carries its own eval-sample interval and its cell's interval over seeds
    assert kept["zeroshot_top1_lo"] < kept["zeroshot_top1"] < kept["zeroshot_top1_hi"]
    assert kept["cell_lo"] <= kept["cell_mean"] <= kept["cell_hi"] and kept["cell_seeds"] == 2
    assert kept["cell_interval"] == "95% t interval over 2 seeds" and len(kept["zeroshot_correct"]) == 500
    again = FakeRunner()
    assert len(run_study(cfg, tmp_path / "out", runner=again)) == 18
    assert again.calls == []
    # a new budget runs only the new configs; a changed [train] config is new runs, not old rows
    cfg2 = dataclasses.replace(cfg, budgets=(100, 300, 1000, 3000))
    third = FakeRunner()
    run_study(cfg2, tmp_path / "out", runner=third)
    assert len(third.calls) == 3 * 2
    cfg3 = load_study(write_study(tmp_path, tiers_dir, small_web, extra="model = 'ct-vit-micro-32'"))
    assert len(run_study(cfg3, tmp_path / "out", runner=FakeRunner())) == 18


def test_report_opens_with_verdicts_fit_status_and_caveats_then_plots(tmp_path, tiers_dir, small_web):
    cfg = load_study(write_study(tmp_path, tiers_dir, small_web, seeds=(0, 1, 2)))
    rows = run_study(cfg, tmp_path / "out", runner=FakeRunner())
    a = study_analysis(cfg, tmp_path / "out", rows)
    path = write_report(tmp_path / "out", rows, dataclasses.asdict(cfg), cfg.tiers_dir, analysis=a)
    page = path.read_text()
    for png in ("accuracy_vs_samples", "accuracy_vs_fraction", "retrieval_vs_samples", "gaps"):
        assert (tmp_path / "out" / "plots" / f"{png}.png").stat().st_size > 5000
        assert f'alt="{png}"' in page
    assert 'src="http' not in page and "<script" not in page and 'href="http' not in page
    order = [page.index(h) for h in ("<h2>Verdicts", "<h2>Scaling-law fit", "<h2>Caveats", "<h2>Plots")]
    assert order == sorted(order)
    assert len(a.verdicts) == 9 and all(v.text in page for v in a.verdicts)
    assert any(v.decided for v in a.verdicts)  # the law's tiers differ by 10+ points at 100 samples
    assert "degrees of freedom" in page and "(3 seeds; " in page  # cells: "mean [lo, hi] (3 seeds; 2.8x)"
    doc = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert {v["status"] for v in doc["verdicts"]} <= {"decided", "cannot rank"}
    assert doc["fits"]["default"]["fit"]["dof"] == 9 - doc["fits"]["default"]["fit"]["params"]


def test_one_seed_gets_eval_sample_intervals_and_no_verdict(tmp_path, tiers_dir, small_web):
    cfg = load_study(write_study(tmp_path, tiers_dir, small_web, seeds=(0,), budgets=(100, 1000)))
    rows = run_study(cfg, tmp_path / "out", runner=FakeRunner())
    a = study_analysis(cfg, tmp_path / "out", rows)
    assert all(c.accuracy.method == "eval samples" for c in a.cells)
    assert not any(v.decided for v in a.verdicts)
    assert all("one seed each, so the training noise is unknown" in v.text for v in a.verdicts)
    assert a.fits["default"].fit is not None and not a.fits["default"].fit.trusted
    assert "refused to extrapolate" in a.fits["default"].status and a.fits["default"].extrapolation is None
    assert any("have one seed" in c for c in a.caveats)


def test_until_decided_adds_seeds_where_comparisons_are_open_within_max_runs(tmp_path, tiers_dir, small_web):
    cfg = load_study(write_study(tmp_path, tiers_dir, small_web, seeds=(0, 1), budgets=(300, 3000)))
    runner = FakeRunner()
    rows = run_study(cfg, tmp_path / "out", runner=runner, until_decided=True, max_runs=40)
    assert 12 < len(rows) <= 40 and len(runner.calls) == len(rows)
    seeds = {r["seed"] for r in rows}
    assert seeds > {0, 1} and seeds == set(range(max(seeds) + 1))  # new seeds continue the sequence
    looks = json.loads((tmp_path / "out" / LOOKS).read_text())
    assert set(looks) == {v.comparison.key for v in study_analysis(cfg, tmp_path / "out", rows).verdicts}
    assert all(lk[0] == 2 for lk in looks.values())  # the first look is at the planned seeds
    a = study_analysis(cfg, tmp_path / "out", rows)
    assert a.adaptive and "spent over" in a.summary()
    again = FakeRunner()  # a rerun with the same budget trains nothing new
    assert len(run_study(cfg, tmp_path / "out", runner=again, until_decided=True, max_runs=40)) == len(rows)
    assert again.calls == []


def test_bad_study_files_name_the_file(tmp_path, tiers_dir):
    p = tmp_path / "bad.toml"
    p.write_text("tiers = [")
    with pytest.raises(InputError, match="bad.toml"):
        load_study(p)
    p.write_text('tiers = ["top10"]')
    with pytest.raises(InputError, match="lacks tiers_dir, budgets"):
        load_study(p)
    p.write_text(f'tiers_dir = "{tiers_dir}"\ntiers = ["top10"]\nbudgets = [100]\n[train]\nlr_typo = 1')
    with pytest.raises(InputError, match="bad.toml: bad trainer settings for variant 'default'.*lr_typo"):
        load_study(p)
    p.write_text(f'tiers_dir = "{tiers_dir}"\ntiers = ["top10"]\nbudgets = [100]\nseed = [1]')
    with pytest.raises(InputError, match=r"bad.toml: \[study\] unknown key\(s\): seed; known: "):
        load_study(p)


def test_a_tiny_real_study_end_to_end(small_web, tmp_path, monkeypatch):
    """The real trainer and evaluation: 2 tiers x 2 budgets, results, plots, report; a rerun trains nothing."""
    import pipelines.study as study_mod
    from synthweb import shards_from_synthweb

    shards_from_synthweb(small_web, tmp_path / "shards", tiers={"small": 0.25, "full": 1.0})
    ev = small_web / "eval"
    cfg = study_config(
        StudyFile(
            tiers_dir=str(tmp_path / "shards"),
            tiers=("small", "full"),
            budgets=(64, 128),
            model="ct-vit-micro-32",
            train={"batch_size": 32, "workers": 0},
            eval=EvalSets(str(ev / "zeroshot.parquet"), str(ev / "classes.json"), str(ev / "retrieval.parquet")),
            name="tiny",
        )
    )
    rows = run_study(cfg, tmp_path / "out")
    assert len(rows) == 4 and all(0 <= r["zeroshot_top1"] <= 1 for r in rows)
    assert {r["steps"] for r in rows} == {2, 4}  # steps follow the budget, never the tier size
    n = pq.read_table(small_web / "eval" / "zeroshot.parquet").num_rows
    for r in rows:  # every run keeps which eval samples it got right: the paired tests and bootstraps use them
        assert len(r["zeroshot_correct"]) == n and np.mean(r["zeroshot_correct"]) == pytest.approx(r["zeroshot_top1"])
        assert r["zeroshot_top1_lo"] <= r["zeroshot_top1"] <= r["zeroshot_top1_hi"]
    path = write_report(tmp_path / "out", rows, dataclasses.asdict(cfg), cfg.tiers_dir)
    assert path.exists() and (tmp_path / "out" / "plots" / "accuracy_vs_samples.png").exists()
    calls = []
    monkeypatch.setattr(study_mod, "default_runner", lambda run, d: calls.append(run) or {})
    assert len(run_study(cfg, tmp_path / "out")) == 4 and calls == []


class SlowFakeRunner(FakeRunner):
    """FakeRunner taking a second per run, leaving when and in which process it ran in the run dir."""

    def __call__(self, run, run_dir):
        import os
        import time

        start = time.time()
        time.sleep(1.0)
        metrics = super().__call__(run, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "span.json").write_text(json.dumps([start, time.time(), os.getpid()]))
        return metrics


def _most_at_once(spans):
    events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_study_on_ray_runs_two_at_a_time_with_results_and_resume_as_today(ray_local, tmp_path, tiers_dir, small_web):
    from pipelines.cluster import RaySlots

    slots = RaySlots(gpus=0, cpus=1)  # the session's Ray has 2 CPUs: two runs at once
    cfg = load_study(write_study(tmp_path, tiers_dir, small_web, seeds=(0, 1), budgets=(100, 1000)))
    out = tmp_path / "out"
    first = run_study(dataclasses.replace(cfg, budgets=(100,)), out, runner=SlowFakeRunner(), ray=slots)
    assert len(first) == 6 and len(pq.read_table(out / "results.parquet")) == 6
    before = {p.parent.name: p.read_text() for p in out.glob("runs/*/span.json")}
    rows = run_study(cfg, out, runner=SlowFakeRunner(), ray=slots)  # resumes: only the 6 new runs train
    spans = {p.parent.name: p.read_text() for p in out.glob("runs/*/span.json")}
    assert len(rows) == 12 and len(spans) == 12 and all(spans[h] == before[h] for h in before)
    new = [json.loads(spans[h]) for h in spans if h not in before]
    # as many at once as the session's Ray has CPUs (2 here; more if a test before added nodes to it)
    cpus = int(ray_local.cluster_resources().get("CPU", 2))
    assert 2 <= _most_at_once(new) <= cpus and len({pid for _, _, pid in new}) >= 2
    # the same rows as a sequential study, and a sequential rerun finds every run finished
    seq = {r["config_hash"]: r for r in run_study(cfg, tmp_path / "seq", runner=FakeRunner())}
    assert {r["config_hash"]: r["zeroshot_top1"] for r in rows} == {h: r["zeroshot_top1"] for h, r in seq.items()}
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert len(table) == 12 and all(r["cell_seeds"] == 2 for r in table)
    again = FakeRunner()
    assert len(run_study(cfg, out, runner=again)) == 12 and again.calls == []
    # a run asking for a GPU the cluster lacks: one line, before anything is written
    with pytest.raises(InputError, match="has 0 GPUs, a run asks for 1; pass --cpus-per-run"):
        run_study(cfg, tmp_path / "gpu", runner=FakeRunner(), ray=RaySlots())
    assert not (tmp_path / "gpu").exists()


def test_a_tiny_real_study_on_ray(ray_local, small_web, tmp_path):
    """The real trainer inside Ray workers, one CPU each, two runs at once."""
    from pipelines.cluster import RaySlots
    from synthweb import shards_from_synthweb

    shards_from_synthweb(small_web, tmp_path / "shards", tiers={"full": 1.0})
    ev = small_web / "eval"
    cfg = study_config(
        StudyFile(
            tiers_dir=str(tmp_path / "shards"),
            tiers=("full",),
            budgets=(64, 128),
            model="ct-vit-micro-32",
            train={"batch_size": 32, "workers": 0},
            eval=EvalSets(str(ev / "zeroshot.parquet"), str(ev / "classes.json")),
            name="tiny-ray",
        )
    )
    rows = run_study(cfg, tmp_path / "out", ray=RaySlots(gpus=0, cpus=1))
    assert sorted(r["steps"] for r in rows) == [2, 4] and all(0 <= r["zeroshot_top1"] <= 1 for r in rows)
    assert all((tmp_path / "out" / "runs" / r["config_hash"] / "summary.json").is_file() for r in rows)
