"""The bootstrapped filter's held-out-fold rule: no sample is scored by a model trained on it."""

import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.core.errors import InputError
from curate.core.manifest import read_tier
from pipelines.bootstrap import BootstrapConfig, fold_of, run_bootstrap, within_fold_rank
from tests.test_tiers import make_build


def build_dir(tmp_path, n=120):
    samples = make_build(tmp_path, n=n, raw_shards=3, filtered=0)
    status = ["kept"] * n
    status[:7] = ["dropped"] * 7  # not kept: never trained on, never scored
    samples = samples.append_column("status", pa.array(status))
    pq.write_table(samples, tmp_path / "samples.parquet")
    return samples


class Recorder:
    """A fake trainer and scorer that remember who trained on what and who scored whom."""

    def __init__(self):
        self.trained: dict[str, set[str]] = {}

    def train(self, cfg, tiers_dir, out, seed):
        tier = read_tier(tiers_dir, "kept")
        uids = set()
        for shard in tier.shards:
            with tarfile.open(shard) as tf:
                uids |= {m.name.rsplit(".", 1)[0] for m in tf if m.name.endswith(".jpg")}
        spec = f"fake:{out}"
        self.trained[spec] = uids
        return spec

    def score(self, build_dir, kept, model_of, specs, device):
        # A score that depends on the sample only, so rounds have something to rank by.
        uids = kept.column("uid").to_pylist()
        return np.array([int(u[3:]) % 17 if m >= 0 else np.nan for u, m in zip(uids, model_of, strict=True)], float)


@pytest.mark.parametrize("rounds,folds", [(1, 2), (2, 2), (2, 5)])
def test_no_sample_is_scored_by_a_model_that_trained_on_it(tmp_path, rounds, folds):
    samples = build_dir(tmp_path)
    rec = Recorder()
    cfg = BootstrapConfig(rounds=rounds, folds=folds, top=0.5)
    scores = run_bootstrap(tmp_path, cfg, trainer=rec.train, scorer=rec.score)
    kept = {r["uid"] for r in samples.to_pylist() if r["status"] == "kept"}
    assert set(scores.column("uid").to_pylist()) == kept  # every kept sample scored, nothing else
    for r in scores.to_pylist():
        assert r["uid"] not in rec.trained[r["bootstrap_model"]], r
        assert r["bootstrap_round"] == rounds and r["bootstrap_fold"] in range(folds)
    # Each model trained on the other folds only, and on all of them in round 1.
    models = sorted(rec.trained)
    assert len(models) == folds * rounds
    fold = dict(zip(scores.column("uid").to_pylist(), scores.column("bootstrap_fold").to_pylist(), strict=True))
    for spec, uids in rec.trained.items():
        f = int(spec.split("/f")[-1].split("/")[0])
        assert uids and all(fold[u] != f for u in uids)
        if "/r1/" in spec:
            assert uids == {u for u in kept if fold[u] != f}
        else:  # later rounds: the previous round's top half of the other folds
            assert len(uids) < 0.6 * sum(fold[u] != f for u in kept)
    again = run_bootstrap(tmp_path, cfg, trainer=rec.train, scorer=rec.score)
    assert again.equals(scores)  # a rerun reads finished rounds back


def test_more_rounds_later_reuse_the_finished_ones(tmp_path):
    build_dir(tmp_path)
    rec = Recorder()
    one = run_bootstrap(tmp_path, BootstrapConfig(rounds=1), trainer=rec.train, scorer=rec.score)
    folds = BootstrapConfig().folds
    assert len(rec.trained) == folds
    calls = []
    two = run_bootstrap(
        tmp_path,
        BootstrapConfig(rounds=2),
        trainer=lambda *a: calls.append(a[2]) or rec.train(*a),
        scorer=rec.score,
    )
    assert all("/r2/" in str(out) for out in calls) and len(calls) == folds  # round 1 read back, not retrained
    assert two.column("bootstrap_round").to_pylist() == [2] * one.num_rows


def test_trusted_data_scores_every_kept_sample_with_one_model(tmp_path):
    build_dir(tmp_path / "pool")
    trusted = tmp_path / "trusted"
    make_build(trusted, n=30, raw_shards=1, filtered=0)
    rec = Recorder()
    calls = []

    def trainer(cfg, tiers_dir, out, seed):
        calls.append(tiers_dir)
        return f"fake:{out}"

    scores = run_bootstrap(
        tmp_path / "pool",
        BootstrapConfig(trusted=str(trusted)),
        trainer=trainer,
        scorer=rec.score,
    )
    assert calls == [trusted] and set(scores.column("bootstrap_fold").to_pylist()) == {-1}


def test_folds_are_stable_and_ranks_per_fold():
    uids = [f"u{i}" for i in range(1000)]
    f = fold_of(uids, 2)
    assert (f == fold_of(uids, 2)).all() and 400 < f.sum() < 600
    raw = np.r_[np.linspace(0, 1, 500), np.linspace(10, 11, 500)]  # two models on different scales
    fold = np.r_[np.zeros(500, int), np.ones(500, int)]
    rank = within_fold_rank(raw, fold, np.asarray(uids, dtype=object))
    assert rank[:500].max() == rank[500:].max() == 1.0 and rank[:500].min() == rank[500:].min() == 0.0


def test_bad_settings_and_unbuilt_dirs_are_refused(tmp_path):
    with pytest.raises(InputError, match="folds"):
        run_bootstrap(tmp_path, BootstrapConfig(folds=1))
    with pytest.raises(InputError, match="samples.parquet"):
        run_bootstrap(tmp_path, BootstrapConfig())


def test_fold_by_keeps_a_group_out_of_its_own_training(tmp_path):
    samples = make_build(tmp_path, n=90, raw_shards=2, filtered=0)
    samples = samples.append_column("status", pa.array(["kept"] * 90))
    samples = samples.append_column("photo", pa.array([f"p{k // 3}" for k in range(90)]))  # 3 captions a photo
    pq.write_table(samples, tmp_path / "samples.parquet")
    rec = Recorder()
    scores = run_bootstrap(tmp_path, BootstrapConfig(fold_by="photo"), trainer=rec.train, scorer=rec.score)
    photo = dict(zip(samples.column("uid").to_pylist(), samples.column("photo").to_pylist(), strict=True))
    for r in scores.to_pylist():
        assert photo[r["uid"]] not in {photo[u] for u in rec.trained[r["bootstrap_model"]]}
    with pytest.raises(InputError, match="no column"):
        run_bootstrap(tmp_path, BootstrapConfig(fold_by="nope"), trainer=rec.train, scorer=rec.score)


def test_demo_keeps_the_trusted_data_filter():
    """``tiers demo`` ranks by a filter CLIP trained on trusted data, not by the bootstrap or the heuristic."""
    import tomllib

    from pipelines.build import config_from_toml
    from pipelines.demo import DEMO_BUILD

    cfg = config_from_toml(tomllib.loads(DEMO_BUILD.format(dfn="/trusted/run")))
    assert cfg.quality.score == "clip"
    assert cfg.annotate.clip_model == "run:/trusted/run"


def test_the_command_line_defaults_are_the_config_defaults():
    """``tiers bootstrap``'s flags spell BootstrapConfig's defaults out (the CLI does not import the
    pipeline at start-up); they must not drift apart."""
    from pipelines.cli import build_parser
    from train.models import register_configs

    args = build_parser().parse_args(["bootstrap", "DIR"])
    d = BootstrapConfig()
    for name in (
        "rounds",
        "folds",
        "top",
        "model",
        "samples_seen",
        "epochs",
        "trusted_tier",
        "fold_by",
        "device",
        "seed",
    ):
        assert getattr(args, name) == getattr(d, name), name
    assert d.model in register_configs()  # one of ours: it builds offline


def test_each_filter_clip_trains_for_epochs_of_its_own_pool_unless_a_budget_is_fixed():
    assert BootstrapConfig().budget(4_800) == 28_800
    assert BootstrapConfig(epochs=2.5).budget(10) == 25
    assert BootstrapConfig(samples_seen=1_000).budget(4_800) == 1_000
    with pytest.raises(InputError, match="epochs"):
        BootstrapConfig(epochs=0).validate()
