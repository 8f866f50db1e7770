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
import os
from pathlib import Path

from curate import code_version, units
from curate.errors import InputError
from curate.manifest import read_tier
from train.config import EvalConfig, TrainConfig, make_config
from train.plan import PlannedRun

CONFIG = "config.json"
SUMMARY = "summary.json"
EVAL = "eval.json"
TASKS = ("zeroshot", "retrieval", "linear_probe")


def _write_json(path: Path, doc: dict) -> None:
    with units.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def train(
    cfg: TrainConfig, tiers_dir: str | os.PathLike, tier: str, out: str | os.PathLike, progress: bool = True, log=print
) -> dict:
    """Train ``cfg`` on tier ``tier`` of the build at ``tiers_dir`` into ``out``; returns the summary
    (with ``eval`` results when ``cfg.eval`` names datasets). Raises :class:`InputError` on bad input."""
    from train import loop

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
    old = json.loads((out / CONFIG).read_text()) if (out / CONFIG).is_file() else None
    if old is not None and (old["config_hash"], old["tier"], old["manifest"]) != (cfg.hash(), tier, t.manifest):
        raise InputError(
            f"holds a run of another config or tier ({old['tier']}, config {old['config_hash']}); "
            "use another --out, or remove it",
            path=str(out),
        )
    if (out / SUMMARY).is_file():
        summary = json.loads((out / SUMMARY).read_text())
        log(f"{out}: already trained ({summary['steps']} steps); nothing to do")
    else:
        if _rank() == 0:
            out.mkdir(parents=True, exist_ok=True)
            if old is None:
                _write_json(out / CONFIG, doc)
        summary = loop.run(cfg, t, out, progress=progress, log=log)
        if _rank() == 0:
            _write_json(out / SUMMARY, summary)
    if _rank() == 0 and any(getattr(cfg.eval, k) for k in TASKS):
        summary = {**summary, "eval": flat(evaluate(out, eval_cfg=cfg.eval, log=log))}
    return summary


def evaluate(
    run: str | os.PathLike,
    zeroshot=(),
    classes: str | None = None,
    retrieval=(),
    linear_probe=(),
    templates=None,
    eval_cfg: EvalConfig | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    log=print,
) -> dict:
    """Evaluate the model of ``run`` (a run dir, model dir or checkpoint) on the named datasets, or on
    the run config's ``[eval]`` datasets when none are named; merges into and returns ``eval.json``.
    A dataset already evaluated at the same model step is not evaluated again."""
    import torch

    from train import evaluation as ev
    from train.models import CONFIG_FILE, load_model, model_dir

    run = Path(run)
    if eval_cfg is None:
        eval_cfg = _run_eval_config(run)
        if zeroshot or retrieval or linear_probe:
            eval_cfg = EvalConfig(batch_size=eval_cfg.batch_size, limit=eval_cfg.limit)
    if limit is not None or batch_size is not None:
        eval_cfg = dataclasses.replace(
            eval_cfg, limit=eval_cfg.limit if limit is None else limit, batch_size=batch_size or eval_cfg.batch_size
        )
    sets = {
        "zeroshot": tuple(zeroshot) or eval_cfg.zeroshot,
        "retrieval": tuple(retrieval) or eval_cfg.retrieval,
        "linear_probe": tuple(linear_probe) or eval_cfg.linear_probe,
    }
    classes = classes or eval_cfg.classes
    if not any(sets.values()):
        raise InputError("nothing to evaluate: name --zeroshot, --retrieval or --linear-probe datasets", path=str(run))
    mdir = model_dir(run)
    step = json.loads((mdir / CONFIG_FILE).read_text()).get("clip_tiers", {}).get("step")
    out_dir = run if run.is_dir() else run.parent
    path = out_dir / EVAL
    doc = json.loads(path.read_text()) if path.is_file() else {}
    if doc.get("model") != str(mdir.resolve()) or doc.get("step") != step:
        doc = {}
    doc.update({"model": str(mdir.resolve()), "step": step, "code_version": code_version()})
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, preprocess, tokenizer = load_model(mdir, device)
    common = {"batch_size": eval_cfg.batch_size, "limit": eval_cfg.limit, "device": device}
    for task, specs in sets.items():
        for spec in specs:
            name, p = ev.dataset_name(spec)
            key = {"path": str(p.resolve()), "classes_file": classes, "templates": templates, "limit": eval_cfg.limit}
            prev = doc.get(task, {}).get(name)
            if prev is not None and all(prev.get(k) == v for k, v in key.items()):
                if task != "zeroshot" or "correct" in prev:  # older results lack per-sample correctness
                    continue
            if task == "zeroshot":
                res = ev.zeroshot(model, preprocess, tokenizer, p, classes, templates, **common)
            elif task == "retrieval":
                res = ev.retrieval(model, preprocess, tokenizer, p, **common)
            else:
                res = ev.linear_probe(model, preprocess, p, **common)
            doc.setdefault(task, {})[name] = {**res, **key}
            log(f"{task} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in res.items() if isinstance(v, float)))
    _write_json(path, doc)
    return doc


def _run_eval_config(run: Path) -> EvalConfig:
    cfg_path = run / CONFIG
    if not cfg_path.is_file():
        return EvalConfig()
    return make_config(json.loads(cfg_path.read_text())["config"]).eval


def flat(doc: dict, names: dict[str, str] | None = None) -> dict:
    """Headline numbers of an eval doc: the named (else first) dataset of each task."""
    names = names or {}
    out = {}
    for task, fields in (
        ("zeroshot", ("top1", "top5")),
        ("retrieval", ("mean_r1", "i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5")),
        ("linear_probe", ("top1",)),
    ):
        results = doc.get(task) or {}
        name = names.get(task) or next(iter(results), None)
        if name in results:
            out.update({f"{task}_{f}": results[name][f] for f in fields})
    if "retrieval_mean_r1" in out:
        out["retrieval_r1_mean"] = out.pop("retrieval_mean_r1")
    return out


def train_run(run: PlannedRun, run_dir: str | os.PathLike) -> dict:
    """Study adapter: one planned run (``pipelines.study.plan_runs``) -> flat training figures."""
    s = train(run.train, run.tiers_dir, run.tier, run_dir, progress=False, log=lambda *_: None)
    return {k: s[k] for k in ("steps", "repetition", "train_seconds", "samples_per_s", "final_loss")}


def evaluate_run(run: PlannedRun, run_dir: str | os.PathLike) -> dict:
    """Study adapter: evaluate a trained run on the study's eval sets -> flat metrics, with the zero-shot
    per-sample correctness as ``zeroshot_correct`` (for paired comparisons and bootstrap intervals)."""
    from train.evaluation import dataset_name, unpack_correct

    sets = {t: [getattr(run.eval, t)] if getattr(run.eval, t, None) else [] for t in TASKS}
    if not any(sets.values()):
        return {}
    doc = evaluate(run_dir, **sets, classes=run.eval.classes, log=lambda *_: None)
    names = {t: dataset_name(v[0])[0] for t, v in sets.items() if v}
    out = flat(doc, names)
    zs = (doc.get("zeroshot") or {}).get(names.get("zeroshot"), {})
    if zs.get("correct"):
        out["zeroshot_correct"] = unpack_correct(zs["correct"], zs["n"]).tolist()
    return out
