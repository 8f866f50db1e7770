"""Studies: tiers x budgets x seeds (x recipe variants) over one `tiers build` output.

A study is a TOML file (see ``examples/study.toml``)::

    tiers_dir = "build"                  # a `tiers build` output (relative to this file)
    tiers     = ["top10", "top30", "kept"]
    budgets   = [20000, 60000]           # samples seen
    seeds     = [0]
    model     = "ct-vit-tiny-32"
    extend    = 10                       # predict the best tier at 10x the largest budget
    [train]                              # overrides of the trainer's config, for every run
    preset = "improved"
    [eval]
    zeroshot  = "web/eval/zeroshot.parquet"
    classes   = "web/eval/classes.json"
    retrieval = "web/eval/retrieval.parquet"
    [[variants]]                         # optional recipe variants; default: one, named "default"
    name = "baseline"
    preset = "baseline"

Every run is one row of ``DIR/results.parquet`` keyed by the hash of its full config; a rerun
skips finished rows and resumes an interrupted run from its checkpoints (the trainer does that).
On CPU runs go one after another; with GPUs each run is a Ray task holding one GPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate import code_version
from curate.core import units
from curate.core.errors import InputError
from curate.core.manifest import load_manifest

log = logging.getLogger(__name__)

RESULTS = "results.parquet"


@dataclass(frozen=True)
class StudyConfig:
    tiers_dir: str
    tiers: tuple[str, ...]
    budgets: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    model: str = "ct-vit-tiny-32"
    train: dict = field(default_factory=dict)
    variants: tuple[dict, ...] = ({"name": "default"},)
    zeroshot: str | None = None
    classes: str | None = None
    retrieval: str | None = None
    extend: float = 10.0
    name: str = "study"


def load_study(path: str | os.PathLike) -> StudyConfig:
    """Read a study TOML; relative paths in it are relative to the file. Raises InputError."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"unreadable study file: {e}", path=str(path)) from None
    base = path.resolve().parent
    ev = data.get("eval", {})

    def rel(p):
        return None if p is None else str((base / p).resolve())

    missing = [k for k in ("tiers_dir", "tiers", "budgets") if k not in data]
    if missing:
        raise InputError(f"study file lacks {', '.join(missing)}", path=str(path))
    try:
        cfg = StudyConfig(
            tiers_dir=rel(data["tiers_dir"]),
            tiers=tuple(data["tiers"]),
            budgets=tuple(int(b) for b in data["budgets"]),
            seeds=tuple(int(s) for s in data.get("seeds", [0])),
            model=data.get("model", StudyConfig.model),
            train=dict(data.get("train", {})),
            variants=tuple(data.get("variants", [{"name": "default"}])),
            zeroshot=rel(ev.get("zeroshot")),
            classes=rel(ev.get("classes")),
            retrieval=rel(ev.get("retrieval")),
            extend=float(data.get("extend", 10.0)),
            name=data.get("name", path.stem),
        )
    except (TypeError, ValueError) as e:
        raise InputError(f"bad study file: {e}", path=str(path)) from None
    if any(b <= 0 for b in cfg.budgets) or not cfg.tiers:
        raise InputError("budgets must be positive and tiers non-empty", path=str(path))
    return cfg


def plan_runs(cfg: StudyConfig) -> list[dict]:
    """One dict per run: everything that determines its result, plus its ``config_hash``."""
    manifest = load_manifest(cfg.tiers_dir)
    unknown = [t for t in cfg.tiers if t not in manifest.tiers]
    if unknown:
        raise InputError(f"tiers not in the manifest: {unknown}; it has {list(manifest.tiers)}", path=cfg.tiers_dir)
    runs = []
    for variant in cfg.variants:
        overrides = {**cfg.train, **{k: v for k, v in variant.items() if k != "name"}}
        for tier in cfg.tiers:
            for budget in cfg.budgets:
                for seed in cfg.seeds:
                    run = {
                        "variant": variant.get("name", "default"),
                        "tier": tier,
                        "samples_seen": budget,
                        "seed": seed,
                        "model": cfg.model,
                        "train": overrides,
                        "tier_samples": manifest.tiers[tier].samples,
                        "tiers_dir": cfg.tiers_dir,
                        "eval": {"zeroshot": cfg.zeroshot, "classes": cfg.classes, "retrieval": cfg.retrieval},
                    }
                    run["config_hash"] = config_hash(run)
                    runs.append(run)
    return runs


def config_hash(run: dict) -> str:
    keyed = {k: v for k, v in run.items() if k != "config_hash"}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_results(out: Path) -> list[dict]:
    p = out / RESULTS
    return pq.read_table(p).to_pylist() if p.exists() else []


def _write_results(out: Path, rows: list[dict]) -> None:
    with units.atomic_path(out / RESULTS) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)


Runner = Callable[[dict, Path], dict]


def run_study(cfg: StudyConfig, out: str | os.PathLike, runner: Runner | None = None) -> list[dict]:
    """Run every planned run not yet in ``results.parquet``; return all result rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps({"config": asdict(cfg), "code_version": code_version()}, indent=2))
    runner = runner or default_runner
    rows = read_results(out)
    done = {r["config_hash"] for r in rows}
    todo = [r for r in plan_runs(cfg) if r["config_hash"] not in done]
    log.info(f"study {cfg.name}: {len(done)} runs finished, {len(todo)} to go")
    for i, run in enumerate(todo, 1):
        log.info(
            f"[{i}/{len(todo)}] {run['variant']} {run['tier']} x {run['samples_seen']:,} samples, seed {run['seed']}"
        )
        metrics = runner({**run, "study": cfg.name}, out / "runs" / run["config_hash"])  # tracking groups by study
        row = {
            "config_hash": run["config_hash"],
            "variant": run["variant"],
            "tier": run["tier"],
            "samples_seen": run["samples_seen"],
            "seed": run["seed"],
            "model": run["model"],
            "tier_samples": run["tier_samples"],
            "repetition": run["samples_seen"] / max(run["tier_samples"], 1),
            "config": json.dumps(run, sort_keys=True),
            "code_version": code_version(),
            **metrics,
        }
        rows.append(row)
        _write_results(out, rows)  # after every run: a kill loses at most the run in flight
    return rows


def default_runner(run: dict, run_dir: Path) -> dict:
    """Train with the trainer's API, then evaluate; returns flat metrics for the results row."""
    from train.api import evaluate_run, train_run  # heavy imports only when a run happens

    summary = train_run(run, run_dir)
    metrics = evaluate_run(run, run_dir)
    return {**summary, **metrics}
