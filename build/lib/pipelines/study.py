"""Studies: tiers x budgets x seeds (x recipe variants) over one `tiers build` output.

A study is a TOML file (``examples/quantity_quality.toml``, ``examples/recipe_repetition.toml``)::

    tiers_dir = "build"                  # a `tiers build` output (relative to this file)
    tiers     = ["top10", "top30", "kept"]
    budgets   = [20000, 60000]           # samples seen
    seeds     = [0, 1, 2]                # paired across cells: the same seeds for every cell
    model     = "ct-vit-tiny-32"
    extend    = 10                       # predict the best tier at 10x the largest budget
    alpha     = 0.05                     # family-wise error rate of the verdicts
    [train]                              # the trainer's config (train.config.TrainConfig), every run
    preset = "improved"
    [eval]
    zeroshot  = "web/eval/zeroshot.parquet"
    classes   = "web/eval/classes.json"
    retrieval = "web/eval/retrieval.parquet"
    [[variants]]                         # optional recipe variants; default: one, named "default"
    name = "baseline"
    preset = "baseline"

Everything is checked before the first run trains (:mod:`pipelines.preflight`). Every run is one
row of ``DIR/results.parquet`` keyed by the hash of its :class:`~train.plan.PlannedRun`; a rerun
skips finished rows and resumes an interrupted run from its checkpoints (the trainer does that).
With ``until_decided`` the study then adds seeds where comparisons are still undecided
(:mod:`pipelines.adaptive`). Runs go one after another, or, with ``ray``, as Ray tasks that each
hold a GPU or a set number of CPUs, as many at once as the cluster has room for (:mod:`pipelines.cluster`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate import code_version
from curate.core import config, units
from curate.core.errors import InputError
from curate.core.manifest import load_manifest
from pipelines import adaptive, analysis, cluster, preflight, stats
from pipelines.decide import CORRECT, METRIC, plan_comparisons
from train.config import TrainConfig, make_config
from train.plan import EvalSets, PlannedRun

log = logging.getLogger(__name__)

RESULTS = "results.parquet"
DEFAULT_MODEL = "ct-vit-tiny-32"


@dataclass(frozen=True)
class Variant:
    """A recipe: its name and the trainer config every run of it starts from (budget and seed set per run)."""

    name: str
    train: TrainConfig


@dataclass(frozen=True)
class StudyConfig:
    tiers_dir: str
    tiers: tuple[str, ...]
    budgets: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    variants: tuple[Variant, ...] = (Variant("default", TrainConfig(model=DEFAULT_MODEL)),)
    eval: EvalSets = EvalSets()
    extend: float = 10.0
    alpha: float = 0.05
    name: str = "study"
    source: str | None = None  # the study file, named in error messages

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]


def make_variants(
    train: dict | None = None,
    variants: list[dict] | None = None,
    model: str = DEFAULT_MODEL,
    source: str | None = None,
) -> tuple[Variant, ...]:
    """Variants from a study's ``[train]`` table and ``[[variants]]`` list; a variant's keys override
    ``[train]``. Raises :class:`InputError` naming the variant when its config is not valid."""
    out = []
    for v in variants or [{"name": "default"}]:
        name = str(v.get("name", "default"))
        over = {k: val for k, val in v.items() if k != "name"}
        try:
            cfg = make_config({"model": model, **(train or {}), **over})
        except (InputError, TypeError, ValueError) as e:
            raise InputError(f"bad trainer settings for variant {name!r}: {e}", path=source) from None
        out.append(Variant(name, cfg))
    if len({v.name for v in out}) != len(out):
        raise InputError("variant names must be distinct", path=source)
    return tuple(out)


@dataclass(frozen=True)
class StudyFile:
    """A study as written in its TOML file (or in code): plain values, read key by key by the one
    config loader (:mod:`curate.core.config`); :func:`study_config` checks and types them."""

    tiers_dir: str
    tiers: tuple[str, ...]
    budgets: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    model: str = DEFAULT_MODEL
    train: dict = field(default_factory=dict)  # TrainConfig keys, for every variant
    variants: tuple[dict, ...] = ()  # each: name + TrainConfig keys over [train]
    eval: EvalSets = EvalSets()
    extend: float = 10.0
    alpha: float = 0.05
    name: str | None = None


def study_config(f: StudyFile, base: str | os.PathLike | None = None, source: str | None = None) -> StudyConfig:
    """The :class:`StudyConfig` that ``f`` describes; relative paths resolve against ``base``. Raises InputError."""
    if not f.tiers or not f.budgets or any(int(b) <= 0 for b in f.budgets) or not f.seeds:
        raise InputError("tiers, budgets and seeds must be non-empty and budgets positive", path=source)
    if not 0 < f.alpha < 1:
        raise InputError(f"alpha must be between 0 and 1, not {f.alpha}", path=source)
    root = Path(base or ".").resolve()

    def rel(p):
        return None if p is None else str((root / p).resolve())

    return StudyConfig(
        tiers_dir=rel(f.tiers_dir),
        tiers=tuple(f.tiers),
        budgets=tuple(sorted(int(b) for b in f.budgets)),
        seeds=tuple(int(s) for s in f.seeds),
        variants=make_variants(f.train, list(f.variants) or None, f.model, source),
        eval=EvalSets(rel(f.eval.zeroshot), rel(f.eval.classes), rel(f.eval.retrieval)),
        extend=float(f.extend),
        alpha=float(f.alpha),
        name=f.name or (Path(source).stem if source else "study"),
        source=source,
    )


def load_study(path: str | os.PathLike) -> StudyConfig:
    """Read a study TOML; relative paths in it are relative to the file. Raises InputError."""
    path = Path(path)
    data = config.read_toml(path)
    missing = [k for k in ("tiers_dir", "tiers", "budgets") if k not in data]
    if missing:
        raise InputError(f"study file lacks {', '.join(missing)}", path=str(path))
    f = config.from_dict(StudyFile, data, section="study", source=str(path))
    try:
        return study_config(f, path.parent, str(path))
    except (TypeError, ValueError) as e:
        raise InputError(f"bad study file: {e}", path=str(path)) from None


def tier_sizes(cfg: StudyConfig) -> dict[str, int]:
    manifest = load_manifest(cfg.tiers_dir)
    unknown = [t for t in cfg.tiers if t not in manifest.tiers]
    if unknown:
        raise InputError(f"tiers not in the manifest: {unknown}; it has {list(manifest.tiers)}", path=cfg.tiers_dir)
    return {t: int(manifest.tiers[t].samples) for t in cfg.tiers}


def plan_run(cfg: StudyConfig, variant: Variant, tier: str, budget: int, seed: int, tier_samples: int) -> PlannedRun:
    train = dataclasses.replace(variant.train, samples_seen=int(budget), seed=int(seed))
    return PlannedRun(variant.name, tier, tier_samples, cfg.tiers_dir, train, cfg.eval, study=cfg.name)


def plan_runs(cfg: StudyConfig, sizes: dict[str, int] | None = None) -> list[PlannedRun]:
    """Every planned run, seed by seed (the whole grid for the first seed, then the next), cheap budgets
    first: an interrupted study has whole seeds, and its first results cover every cell."""
    sizes = sizes or tier_sizes(cfg)
    return [
        plan_run(cfg, v, t, b, s, sizes[t])
        for s in cfg.seeds
        for v in cfg.variants
        for b in cfg.budgets
        for t in cfg.tiers
    ]


def read_results(out: Path) -> list[dict]:
    p = Path(out) / RESULTS
    if not p.exists():
        return []
    try:
        return pq.read_table(p).to_pylist()
    except Exception as e:
        raise InputError(f"unreadable results table: {e}", path=str(p)) from None


def write_results(out: Path, rows: list[dict]) -> None:
    """All rows, each with its cell's mean and 95% interval (they change as seeds are added)."""
    with units.atomic_path(Path(out) / RESULTS) as tmp:
        pq.write_table(pa.Table.from_pylist(analysis.cell_columns(rows)), tmp)


def result_row(run: PlannedRun, metrics: dict) -> dict:
    """One row of ``results.parquet``: the run's keys, its metrics, and its own eval-sample interval."""
    row = {
        "config_hash": run.config_hash,
        "variant": run.variant,
        "tier": run.tier,
        "samples_seen": run.samples_seen,
        "seed": run.seed,
        "model": run.model,
        "tier_samples": run.tier_samples,
        "repetition": run.repetition,
        "config": json.dumps(run.to_dict(), sort_keys=True),
        "code_version": code_version(),
        **metrics,
    }
    correct = row.get(CORRECT)
    if correct is not None:
        row[CORRECT] = [bool(x) for x in correct]
        iv = stats.bootstrap_interval(correct)
        row[f"{METRIC}_lo"], row[f"{METRIC}_hi"] = iv.lo, iv.hi
    return row


Runner = Callable[[PlannedRun, Path], dict]


def run_study(
    cfg: StudyConfig,
    out: str | os.PathLike,
    runner: Runner | None = None,
    until_decided: bool = False,
    max_runs: int | None = None,
    ray: cluster.RaySlots | None = None,
) -> list[dict]:
    """Run every planned run not yet in ``results.parquet`` (then, ``until_decided``, add seeds up to
    ``max_runs`` runs in all); return the rows of this study's runs. Checks everything first
    (:func:`pipelines.preflight.check_study`) and writes nothing when a check fails. With ``ray``,
    runs go to Ray as tasks, as many at once as its slots hold (:mod:`pipelines.cluster`)."""
    out = Path(out)
    n_planned = len(cfg.variants) * len(cfg.tiers) * len(cfg.budgets) * len(cfg.seeds)
    preflight.check_study(cfg, out, n_planned, max_runs if until_decided else None)
    sizes = tier_sizes(cfg)
    planned = plan_runs(cfg, sizes)
    with cluster.session(ray) if ray else contextlib.nullcontext():
        return _run_planned(cfg, out, planned, sizes, runner or default_runner, until_decided, max_runs, ray)


def _run_planned(
    cfg: StudyConfig,
    out: Path,
    planned: list[PlannedRun],
    sizes: dict[str, int],
    runner: Runner,
    until_decided: bool,
    max_runs: int | None,
    ray: cluster.RaySlots | None,
) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(
        json.dumps({"config": dataclasses.asdict(cfg), "code_version": code_version()}, indent=2, default=str)
    )
    rows = read_results(out)
    by_hash = {r["config_hash"]: r for r in rows}
    todo = [r for r in planned if r.config_hash not in by_hash]
    log.info(f"study {cfg.name}: {len(planned) - len(todo)} runs finished, {len(todo)} to go")

    def record(run: PlannedRun, metrics: dict) -> None:
        row = result_row(run, metrics)
        rows.append(row)
        by_hash[run.config_hash] = row
        write_results(out, rows)  # after every run: a kill loses at most the runs in flight

    def execute(runs: list[PlannedRun]) -> list[dict]:
        new = list({r.config_hash: r for r in runs if r.config_hash not in by_hash}.values())
        if ray:
            cluster.run_all(new, runner, lambda r: out / "runs" / r.config_hash, record, ray)
        else:
            for i, run in enumerate(new, 1):
                log.info(f"[{i}/{len(new)}]")
                log.info(f"  {run.variant} {run.tier} x {run.samples_seen:,} samples, seed {run.seed}")
                record(run, runner(run, out / "runs" / run.config_hash))
        return [by_hash[r.config_hash] for r in runs]

    execute(todo)
    mine = current_rows(cfg, rows, sizes)
    if until_decided:
        variants = {v.name: v for v in cfg.variants}

        def run_cells(todo: list[tuple[tuple[str, str, int], int]]) -> list[dict]:
            return execute([plan_run(cfg, variants[v], t, b, seed, sizes[t]) for (v, t, b), seed in todo])

        comps = plan_comparisons(cfg.variant_names, cfg.tiers, cfg.budgets)
        looks = adaptive.read_looks(out) or {}
        mine, _ = adaptive.until_decided(
            mine, comps, run_cells, max_runs, cfg.seeds, looks, cfg.alpha, lambda lk: adaptive.write_looks(out, lk)
        )
    return mine


def current_rows(cfg: StudyConfig, rows: list[dict], sizes: dict[str, int]) -> list[dict]:
    """The rows that belong to ``cfg`` as it is now (any seed): a row of a changed config is left out."""
    variants = {v.name: v for v in cfg.variants}
    out = []
    for r in rows:
        v = variants.get(r["variant"])
        if v is None or r["tier"] not in sizes or int(r["samples_seen"]) not in cfg.budgets:
            continue
        if plan_run(cfg, v, r["tier"], r["samples_seen"], r["seed"], sizes[r["tier"]]).config_hash == r["config_hash"]:
            out.append(r)
    return out


def study_analysis(cfg: StudyConfig, out: str | os.PathLike, rows: list[dict]) -> analysis.Analysis:
    """Cells, verdicts (spent over looks if the study was adaptive) and fits of a study's rows."""
    return analysis.analyse(
        rows,
        cfg.variant_names,
        list(cfg.tiers),
        list(cfg.budgets),
        cfg.extend,
        adaptive.read_looks(Path(out)),
        cfg.alpha,
    )


def default_runner(run: PlannedRun, run_dir: Path) -> dict:
    """Train with the trainer's API, then evaluate; returns flat metrics for the results row."""
    from train.api import evaluate_run, train_run  # heavy imports only when a run happens

    summary = train_run(run, run_dir)
    metrics = evaluate_run(run, run_dir)
    return {**summary, **metrics}
