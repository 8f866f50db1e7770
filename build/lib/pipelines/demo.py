"""``tiers demo``: the whole chain on the embedded synthetic web, with no network.

1. Build a synthetic web (the pool: a raw crawl's mix of clean, noisy, duplicate and hostile URLs)
   and serve it on 127.0.0.1.
2. Train a filter CLIP on trusted data: the clean part of a *separate* synthetic web, so the filter
   never sees a pool image (the Data Filtering Network idea).
3. ``tiers build`` the pool: download, annotate (the filter CLIP scores every pair), dedup, filter,
   bands by CLIP score (balanced across image clusters, so no concept drops out of a top tier),
   shards.
4. A study: 3 tiers x 2 budgets of samples seen x 3 training seeds with a tiny CLIP, zero-shot and
   retrieval on the web's held-out evaluation set; every cell with its 95% interval, every pair of
   tiers decided or "cannot rank", the scaling-law fit's status, ``report.html``.

Every step is resumable: run it again and finished work is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_BUILD = """
[download]
image_size = 64
timeout = 2
url_deadline = 8
samples_per_shard = 500
threads = 32
[annotate]
clip_model = "run:{dfn}"
device = "cpu"
[filters]
preset = "synthetic-basic"
image_size = 64
[quality]
score = "clip"
[bands]
edges = [0.2, 0.5, 1.0]
balance = "clusters"
[shards]
shard_size = 250
"""


@dataclass(frozen=True)
class DemoConfig:
    out: str = "demo_out"
    n: int = 8000  # URLs in the synthetic web
    seed: int = 0  # of the synthetic web
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds per study cell: three give intervals and verdicts
    model: str = "ct-vit-micro-32"  # the CLIP of the study and of the filter
    budgets: tuple[int, ...] = (3000, 12000)  # samples seen per run: 18 runs, 135,000 samples seen in all
    filter_samples: int = 20000  # samples seen by the filter CLIP
    port: int = 8765  # fixed, so a rerun resumes the same URL list
    progress: bool = True


def _trusted(out: Path, seed: int) -> Path:
    """Tier shards of clean pairs from a synthetic web of another seed: the filter's trusted data."""
    import pyarrow.parquet as pq

    from synthweb import WebConfig, build
    from synthweb.shards import shards_from_synthweb

    web, shards = out / "trusted_web", out / "trusted"
    if not (shards / "tiers" / "manifest.json").exists():
        build(web, WebConfig(n=1500, seed=seed + 1000, mix={"clean": 1.0}, eval_per_concept=1, retrieval_pairs=1))
        shards_from_synthweb(web, shards, tiers={"full": 1.0})
        log.info(f"  trusted data: {pq.read_table(web / 'truth.parquet').num_rows} clean pairs of another web")
    return shards


def run_demo(args: DemoConfig) -> int:
    """Run the demo as ``args`` says; every step skips what a previous run finished."""
    from curate.core.errors import InputError
    from pipelines.analysis import describe
    from pipelines.build import build as tiers_build
    from pipelines.build import config_from_toml
    from pipelines.report import write_report
    from pipelines.study import StudyFile, run_study, study_analysis, study_config
    from synthweb import WebConfig, WebServer, build
    from train.api import train as train_run
    from train.config import make_config
    from train.plan import EvalSets

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    web_dir = out / "web"
    if not (web_dir / "web.json").exists():
        summary = build(web_dir, WebConfig(n=args.n, seed=args.seed), progress=args.progress)
        noisy = summary["rows"] - summary["counts"]["clean"]
        log.info(f"[1/4] synthetic web: {summary['rows']} URLs, {noisy} noisy or hostile -> {web_dir}")
    else:
        log.info(f"[1/4] synthetic web: reusing {web_dir}")

    log.info(f"[2/4] filter CLIP on trusted data ({time.perf_counter() - t0:.0f} s)")
    trusted = _trusted(out, args.seed)
    dfn = out / "dfn"
    cfg = make_config({"model": args.model, "samples_seen": args.filter_samples})
    train_run(cfg, trusted, "full", dfn, progress=args.progress)

    log.info(f"[3/4] tiers build of the pool ({time.perf_counter() - t0:.0f} s)")
    import tomllib

    build_cfg = config_from_toml(tomllib.loads(DEMO_BUILD.format(dfn=dfn)))
    build_cfg = dataclasses.replace(build_cfg, decontaminate=(str(web_dir / "eval" / "zeroshot.parquet"),))
    try:
        server = WebServer(web_dir, port=args.port, slow_seconds=30).start()
    except OSError as e:
        raise InputError(f"cannot serve the synthetic web on 127.0.0.1:{args.port} ({e}); pass --port") from None
    try:
        manifest = tiers_build(
            server.urls_path, out / "build", build_cfg, allow_private="loopback", progress=args.progress
        )
    finally:
        server.stop()
    for name, t in manifest.tiers.items():
        log.info(f"  {name:<11} {t.samples:>6} samples")

    budgets, seeds = args.budgets, args.seeds
    log.info(f"[4/4] study: 3 tiers x {len(budgets)} budgets x {len(seeds)} seeds ({time.perf_counter() - t0:.0f} s)")
    ev = web_dir / "eval"
    study = study_config(
        StudyFile(
            tiers_dir=str(out / "build"),
            tiers=("top20", "top50", "kept"),
            budgets=budgets,
            seeds=seeds,
            model=args.model,
            train={"preset": "baseline"},
            eval=EvalSets(str(ev / "zeroshot.parquet"), str(ev / "classes.json"), str(ev / "retrieval.parquet")),
            name="demo",
        )
    )
    rows = run_study(study, out / "study")
    result = study_analysis(study, out / "study", rows)
    report = write_report(
        out / "study", rows, dataclasses.asdict(study), study.tiers_dir, study.extend, analysis=result
    )
    n_classes = len(json.loads((web_dir / "eval" / "classes.json").read_text())["classnames"])
    for line in describe(result, chance=1 / n_classes):
        log.info(f"  {line}")
    log.info(f"done in {time.perf_counter() - t0:.0f} s; report: {report}")
    return 0
