"""The example study files and the build config that makes their pool, run at a tiny scale so they never rot.

The build config runs as it is (a tiny filter CLIP stands in for the demo's, the eval set it
decontaminates against is the test web's); each study runs every tier and variant it names on that
pool, with the real trainer, at one tiny budget and one seed. The figures are the README's; here
only that the files still work end to end is checked.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from pipelines.build import build as tiers_build
from pipelines.build import config_from_toml
from pipelines.report import write_report
from pipelines.study import load_study, run_study, study_analysis
from synthweb import WebConfig, WebServer, build, shards_from_synthweb
from train.api import train
from train.config import make_config
from train.plan import EvalSets

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def pool(ray_local, tmp_path_factory):
    """examples/build.toml over a 240-URL web, scored by a filter CLIP trained for 64 samples."""
    root = tmp_path_factory.mktemp("examples")
    web = root / "web"
    build(web, WebConfig(n=240, seed=11, eval_per_concept=2, retrieval_pairs=20, workers=1))
    shards_from_synthweb(web, root / "trusted", tiers={"full": 1.0})
    dfn = root / "dfn"
    train(make_config({"model": "ct-vit-micro-32", "samples_seen": 64, "batch_size": 32, "workers": 0}),
          root / "trusted", "full", dfn, progress=False)  # fmt: skip
    cfg = config_from_toml(tomllib.loads((EXAMPLES / "build.toml").read_text()), str(EXAMPLES / "build.toml"))
    cfg = dataclasses.replace(
        cfg,
        annotate=dataclasses.replace(cfg.annotate, clip_model=f"run:{dfn}"),
        decontaminate=(str(web / "eval" / "zeroshot.parquet"),),
        download=dataclasses.replace(cfg.download, threads=8, timeout=1, url_deadline=5),
    )
    with WebServer(web, slow_seconds=3) as server:
        manifest = tiers_build(server.urls_path, root / "pool", cfg, allow_private="loopback", progress=False)
    ev = web / "eval"
    return (
        root / "pool",
        manifest,
        EvalSets(str(ev / "zeroshot.parquet"), str(ev / "classes.json"), str(ev / "retrieval.parquet")),
    )


def tiny(cfg, tiers_dir, eval_sets):
    variants = tuple(
        dataclasses.replace(v, train=dataclasses.replace(v.train, batch_size=16, workers=0)) for v in cfg.variants
    )
    return dataclasses.replace(
        cfg, tiers_dir=str(tiers_dir), eval=eval_sets, budgets=(32,), seeds=(0,), variants=variants
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quantity_quality", "recipe_repetition"])
def test_example_study_runs_on_the_example_pool(pool, name, tmp_path):
    tiers_dir, manifest, eval_sets = pool
    cfg = load_study(EXAMPLES / f"{name}.toml")
    assert len(cfg.seeds) >= 3  # the README's tables come from at least three seeds
    assert set(cfg.tiers) <= set(manifest.tiers)  # every tier the study names, the build config makes
    small = tiny(cfg, tiers_dir, eval_sets)
    rows = run_study(small, tmp_path / "out")
    assert len(rows) == len(cfg.tiers) * len(cfg.variants) and all(0 <= r["zeroshot_top1"] <= 1 for r in rows)
    a = study_analysis(small, tmp_path / "out", rows)
    assert write_report(tmp_path / "out", rows, dataclasses.asdict(small), small.tiers_dir, analysis=a).exists()


def test_example_budgets_span_the_repetition_the_experiments_need():
    qq = load_study(EXAMPLES / "quantity_quality.toml")
    assert qq.tiers[0] == "top10" and qq.tiers[-2:] == ("kept", "unfiltered")
    # on the example pool (about 5,000 kept, top10 about 500): from about one pass of kept to 30x of top10
    assert min(qq.budgets) / 5000 <= 1 and max(qq.budgets) / 500 >= 30
    rr = load_study(EXAMPLES / "recipe_repetition.toml")
    assert {v.name: v.train.preset for v in rr.variants} == {"baseline": "baseline", "improved": "improved"}
    assert rr.tiers == ("top20",) and max(rr.budgets) / min(rr.budgets) >= 10  # top20: about 1,000 samples
