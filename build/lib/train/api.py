"""The trainer as functions: train a run, evaluate it, and the two adapters the study runner calls.

A run directory::

    RUN/config.json          the TrainConfig, its hash, the tier and manifest (written first)
    RUN/metrics.jsonl        one line per log step: loss, lr, samples/s, data wait share, repetition
    RUN/checkpoints/step_N/  resumable checkpoints (open_clip local dir + state.pt), newest kept
    RUN/model/               the final model, an open_clip local dir (``train.load_model`` reads it)
    RUN/summary.json         written last: steps, samples seen, repetition, time; marks the run done
    RUN/eval.json            evaluation results by task and dataset name

:func:`train` on a finished run returns its summary without training; on an interrupted one it
resumes from the newest checkpoint; on a directory holding another config it refuses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from curate import code_version
from curate.core import rundir, storage, units
from curate.core.errors import InputError
from curate.core.manifest import read_tier
from train import tracking
from train.config import EvalConfig, TrainConfig, make_config
from train.plan import PlannedRun
from train.results import TASKS, EvalReport, TrainSummary

log = logging.getLogger(__name__)

CONFIG = rundir.CONFIG
SUMMARY = rundir.SUMMARY
EVAL = rundir.EVAL


def _write_json(path: Path, doc: dict) -> None:
    with units.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def train(
    cfg: TrainConfig, tiers_dir: str | os.PathLike, tier: str, out: str | os.PathLike, progress: bool = True
) -> TrainSummary:
    """Train ``cfg`` on tier ``tier`` of the build at ``tiers_dir`` into ``out``; returns the summary
    (with headline ``eval`` numbers when ``cfg.eval`` names datasets). Raises :class:`InputError` on bad input.

    ``out`` may be a URL: the run trains in a local mirror that uploads checkpoints as they land and the
    summary last (:mod:`train.remote`), and resumes from the bucket's newest checkpoint."""
    from train import loop

    if not storage.is_local(out):
        from train.remote import mirrored

        with mirrored(storage.normalise(out), keep=cfg.keep_checkpoints, upload=_rank() == 0) as local:
            return train(cfg, tiers_dir, tier, local, progress)
    t = read_tier(tiers_dir, tier)
    out = Path(out)
    doc = {
        "config": cfg.to_dict(),
        "config_hash": cfg.hash(),
        "tier": tier,
        "manifest": t.manifest,
        "tier_samples": t.samples,
        "code_version": code_version(),
    }
    _check_trainable(cfg, t)
    old = json.loads((out / CONFIG).read_text()) if (out / CONFIG).is_file() else None
    if old is not None and _nothing_trained(out):
        old = None  # a run that never took a step (e.g. an earlier command refused): its config is not a claim
    if old is not None and (old["config_hash"], old["tier"], old["manifest"]) != (cfg.hash(), tier, t.manifest):
        raise InputError(
            f"holds a run of another config or tier ({old['tier']}, config {old['config_hash']}); "
            "use another --out, or remove it",
            path=str(out),
        )
    if (out / SUMMARY).is_file():
        summary = TrainSummary.from_dict(json.loads((out / SUMMARY).read_text()))
        log.debug(f"{out}: already trained ({summary.steps} steps); nothing to do")
    else:
        if _rank() == 0:
            out.mkdir(parents=True, exist_ok=True)
            if old is None:
                _write_json(out / CONFIG, doc)
        summary = loop.run(cfg, t, out, progress=progress)
        if _rank() == 0:
            _write_json(out / SUMMARY, summary.to_dict())
    if _rank() == 0 and any(getattr(cfg.eval, k) for k in TASKS):
        summary = dataclasses.replace(summary, eval=evaluate(out, cfg.eval).headlines())
    return summary


def _check_trainable(cfg: TrainConfig, t) -> None:
    """Refuse before anything is written: an empty tier, a budget under one global batch."""
    if t.samples == 0 or not t.shards:
        raise InputError(
            f"tier {t.name!r} holds no samples: the build kept none in its bands (its last line says why); "
            "train on another tier, or fix the build and run it again",
            path=t.manifest,
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.samples_seen < cfg.batch_size * world:
        raise InputError(
            f"samples_seen {cfg.samples_seen} is less than one global batch ({cfg.batch_size} x {world} ranks); "
            "raise --samples-seen or lower --batch-size"
        )


def _nothing_trained(out: Path) -> bool:
    """No step was ever taken in ``out``: no checkpoint, no metrics line, no summary."""
    metrics = out / rundir.METRICS
    has_metrics = metrics.is_file() and metrics.stat().st_size > 0
    return not (out / SUMMARY).exists() and rundir.latest(out / rundir.CHECKPOINTS) is None and not has_metrics


def evaluate(
    run: str | os.PathLike, cfg: EvalConfig | None = None, *, templates=None, device: str = "auto"
) -> EvalReport:
    """Evaluate the model of ``run`` (a run dir, model dir or checkpoint) on the datasets ``cfg`` names
    (default: the run config's ``[eval]``); merges into and returns ``eval.json``. A dataset already
    evaluated at the same model step with the same settings is not evaluated again."""
    import torch

    from train import evaluation as ev
    from train.models import CONFIG_FILE, load_model, model_dir

    run = Path(run)
    cfg = cfg or run_eval_config(run)
    sets = {"zeroshot": cfg.zeroshot, "retrieval": cfg.retrieval, "linear_probe": cfg.linear_probe}
    if not any(sets.values()):
        raise InputError("nothing to evaluate: name --zeroshot, --retrieval or --linear-probe datasets", path=str(run))
    mdir = model_dir(run)
    step = json.loads((mdir / CONFIG_FILE).read_text()).get("clip_tiers", {}).get("step")
    path = (run if run.is_dir() else run.parent) / EVAL
    old = EvalReport.from_dict(json.loads(path.read_text())) if path.is_file() else None
    results = old.results if old and (old.model, old.step) == (str(mdir.resolve()), step) else {}
    report = EvalReport(str(mdir.resolve()), step, code_version(), results)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, preprocess, tokenizer = load_model(mdir, device)
    common = {"batch_size": cfg.batch_size, "limit": cfg.limit, "device": device}
    for task, specs in sets.items():
        for spec in specs:
            name, p = ev.dataset_name(spec)
            key = {"path": str(p.resolve()), "classes_file": cfg.classes, "templates": templates, "limit": cfg.limit}
            prev = report.get(task, name)
            if prev is not None and all(prev.get(k) == v for k, v in key.items()):
                if task != "zeroshot" or "correct" in prev:  # older results lack per-sample correctness
                    continue
            if task == "zeroshot":
                classes = ev.local_copy(cfg.classes) if cfg.classes else None
                res = ev.zeroshot(model, preprocess, tokenizer, p, classes, templates, **common, name=name)
            elif task == "retrieval":
                res = ev.retrieval(model, preprocess, tokenizer, p, **common)
            else:
                res = ev.linear_probe(model, preprocess, p, **common)
            report.results.setdefault(task, {})[name] = {**res, **key}
            log.debug(f"{task} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in res.items() if isinstance(v, float)))
    _write_json(path, report.to_dict())
    return report


def run_eval_config(run: str | os.PathLike) -> EvalConfig:
    """The ``[eval]`` settings a run was trained with (defaults when it has no config)."""
    run = Path(run)
    cfg_path = run / CONFIG
    if not cfg_path.is_file():
        return EvalConfig()
    return make_config(json.loads(cfg_path.read_text())["config"]).eval


def train_run(run: PlannedRun, run_dir: str | os.PathLike) -> dict:
    """Study adapter: one planned run (``pipelines.study.plan_runs``) -> flat training figures.

    Tracking (``track.log_to`` in the study's ``[train]``): each cell is one tracked run named
    variant/tier/budget/seed, grouped by the study's name (``run.study``) through
    :func:`train.tracking.study_cell`, which leaves the run's config hash as it is."""
    cell = f"{run.variant}/{run.tier}/{run.samples_seen}/seed{run.seed}"
    cfg = tracking.study_cell(run.train, run.study, cell)
    s = train(cfg, run.tiers_dir, run.tier, run_dir, progress=False)
    return {k: getattr(s, k) for k in ("steps", "repetition", "train_seconds", "samples_per_s", "final_loss")}


def evaluate_run(run: PlannedRun, run_dir: str | os.PathLike) -> dict:
    """Study adapter: evaluate a trained run on the study's eval sets -> flat metrics, with the zero-shot
    per-sample correctness as ``zeroshot_correct`` (for paired comparisons and bootstrap intervals)."""
    from train.evaluation import dataset_name, unpack_correct

    ev = run.eval
    if not ev.any():
        return {}
    cfg = EvalConfig(
        zeroshot=tuple(filter(None, [ev.zeroshot])), classes=ev.classes, retrieval=tuple(filter(None, [ev.retrieval]))
    )
    report = evaluate(run_dir, cfg)
    names = {t: dataset_name(p)[0] for t, p in (("zeroshot", ev.zeroshot), ("retrieval", ev.retrieval)) if p}
    out = report.headlines(names)
    zs = report.get("zeroshot", names.get("zeroshot", "")) or {}
    if zs.get("correct"):
        out["zeroshot_correct"] = unpack_correct(zs["correct"], zs["n"]).tolist()
    return out
