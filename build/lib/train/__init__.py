"""clip-tiers training: open_clip models on a tier under a fixed compute budget, and their evaluation.

The API (imports are lazy, so ``import train`` costs nothing)::

    from train import TrainConfig, make_config, load_config, train, evaluate, load_model

    cfg = make_config({"model": "ct-vit-tiny-32", "samples_seen": 100_000}, preset="improved")
    summary = train(cfg, "build", "top30", "runs/top30")       # resumes / skips as needed
    results = evaluate("runs/top30", zeroshot=["web/eval/zeroshot.parquet"])
    model, preprocess, tokenizer = load_model("runs/top30")     # an open_clip model, weights_only
"""

_EXPORTS = {
    "TrainConfig": "train.config",
    "EvalConfig": "train.config",
    "PRESETS": "train.config",
    "make_config": "train.config",
    "load_config": "train.config",
    "train": "train.api",
    "evaluate": "train.api",
    "train_run": "train.api",
    "evaluate_run": "train.api",
    "load_model": "train.models",
    "register_configs": "train.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
