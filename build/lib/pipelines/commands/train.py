"""``tiers train`` and ``tiers eval``: thin wrappers over :mod:`train.api` (nothing heavy at import)."""

from __future__ import annotations

import argparse
import logging

from curate.core.errors import InputError

log = logging.getLogger("tiers")

# CLI flag -> TrainConfig field, for the common settings; anything else goes through --set.
_FLAGS = {
    "samples_seen": "samples_seen",
    "model": "model",
    "preset": "preset",
    "batch_size": "batch_size",
    "lr": "lr",
    "seed": "seed",
    "workers": "workers",
    "device": "device",
    "loss": "loss",
    "precision": "precision",
    "checkpoint_every": "checkpoint_every",
    "threads": "threads",
}


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train CLIP (open_clip) on a tier for a fixed number of samples seen; resumes an interrupted run",
        description="Train CLIP on one tier of a build for a fixed compute budget (samples seen). "
        "A rerun on a finished RUN returns at once; on an interrupted one it resumes exactly.",
    )
    p.add_argument("--tiers", required=True, help="a build dir, its tiers/ dir, or a tier manifest")
    p.add_argument("--tier", required=True, help="tier name in the manifest (e.g. top30)")
    p.add_argument("--samples-seen", type=int, help="compute budget: samples seen (steps = N // batch)")
    p.add_argument(
        "--model",
        help="ct-vit-tiny-32 (default), any open_clip model name, a config JSON, or ARCH:TAG for open_clip's "
        "pretrained weights from the local cache (e.g. ViT-B-32:laion2b_s34b_b79k)",
    )
    p.add_argument(
        "--init",
        metavar="RUN_OR_CHECKPOINT",
        help="fine-tune: start from this `tiers train` run, its model/ or a checkpoint dir (its architecture too)",
    )
    p.add_argument(
        "--log-to",
        metavar="TRACKERS",
        help="also log the metrics to tensorboard and/or wandb (comma-separated; wandb runs offline by default)",
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", help="TOML train config (see train/config.py)")
    p.add_argument("--preset", choices=["baseline", "improved"], help="recipe preset (default: baseline)")
    p.add_argument("--batch-size", type=int, help="per rank (default 128)")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="loader processes per rank (default 2)")
    p.add_argument("--threads", type=int, help="torch threads in the training process (default: torch's)")
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--loss", choices=["clip", "siglip"])
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 100)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, e.g. image_aug.flip=0.5"
    )
    _eval_options(p, "evaluate at the end of training on ")
    p.set_defaults(func=_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a trained run: zero-shot, retrieval, linear probe (results in RUN/eval.json)",
    )
    e.add_argument("run", help="a `tiers train` run dir, its model/ dir, or a checkpoint dir")
    _eval_options(e, "")
    e.add_argument("--limit", type=int, help="at most N rows per dataset (a seeded subset)")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--device", default="auto")
    e.set_defaults(func=_eval)


def _eval_options(p: argparse.ArgumentParser, prefix: str) -> None:
    sets = {
        "--zeroshot": "an ImageFolder or parquet (image, label/label_name)",
        "--retrieval": "a parquet of image and caption",
        "--linear-probe": "an ImageFolder or parquet with labels (and an optional split column)",
    }
    for flag, what in sets.items():
        p.add_argument(flag, action="append", default=[], metavar="[NAME=]PATH", help=f"{prefix}{what}; repeatable")
    p.add_argument("--classes", help="classes.json with classnames and templates (default: one beside the data)")


def _train(args) -> int:
    from train import api
    from train.config import load_config, parse_set

    overrides = parse_set(args.set)
    for flag, field in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[field] = value
    if args.init:
        overrides["init"] = args.init
        overrides.setdefault("model", "init")
    if args.log_to:
        overrides["track"] = {"log_to": [t.strip() for t in args.log_to.split(",") if t.strip()]}
    ev = {k: v for k, v in (("zeroshot", args.zeroshot), ("retrieval", args.retrieval),
                            ("linear_probe", args.linear_probe), ("classes", args.classes)) if v}  # fmt: skip
    if ev:
        overrides["eval"] = ev
    cfg = load_config(args.config, overrides)
    if cfg.samples_seen <= 0:
        raise InputError("--samples-seen is required (or samples_seen in --config)")
    s = api.train(cfg, args.tiers, args.tier, args.out, progress=args.progress)
    log.info(
        f"{args.out}: {s.steps} steps, {s.samples_seen:,} samples seen on tier {s.tier} "
        f"({s.tier_samples:,} samples, repetition {s.repetition:.2f}) in {s.train_seconds:.0f} s, "
        f"{s.samples_per_s:.0f} samples/s; final loss {s.final_loss:.4f}"
    )
    log.info(f"model: {args.out}/model (open_clip local-dir; train.load_model reads it)")
    for k, v in s.eval.items():
        log.info(f"  {k:<22} {v:.4f}")
    return 0


def _eval(args) -> int:
    import dataclasses

    from train import api
    from train.config import EvalConfig

    cfg = api.run_eval_config(args.run)
    named = {"zeroshot": args.zeroshot, "retrieval": args.retrieval, "linear_probe": args.linear_probe}
    if any(named.values()):  # datasets named here replace the run's own
        cfg = EvalConfig(batch_size=cfg.batch_size, limit=cfg.limit, **{k: tuple(v) for k, v in named.items()})
    given = {"classes": args.classes, "limit": args.limit, "batch_size": args.batch_size}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})
    report = api.evaluate(args.run, cfg, device=args.device)
    for task, results in report.results.items():
        for name, res in results.items():
            nums = ", ".join(f"{k} {v:.4f}" for k, v in res.items() if isinstance(v, float) and k != "penalty")
            log.info(f"{task:<13} {name:<20} {nums}  (n={res.get('n', res.get('n_test'))})")
    return 0
