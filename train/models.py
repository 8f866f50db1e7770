"""Models come from open_clip; architectures are open_clip JSON configs; weights are saved as open_clip local dirs.

Names: any open_clip config name (``ViT-B-32``), ours in ``train/model_configs/`` (``ct-vit-tiny-32``,
registered with ``open_clip.add_model_config`` on first use), or a path to a model-config JSON.

A saved model is a directory in open_clip's ``local-dir`` layout::

    open_clip_config.json         {"model_cfg": {...}, "preprocess_cfg": {...}}
    open_clip_pytorch_model.bin   a plain state dict (tensors only)

so ``open_clip.create_model_and_transforms("local-dir:DIR")`` loads it with no clip-tiers code at
all, and :func:`load_model` accepts a run directory, its ``model/``, a checkpoint directory, or a
file inside one. Loading always uses ``torch.load(weights_only=True)``: a checkpoint cannot carry code.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import pickle
from pathlib import Path

import torch

from curate.core import rundir, units
from curate.core.errors import InputError
from curate.core.rundir import model_dir

CONFIG_DIR = Path(__file__).parent / "model_configs"
CONFIG_FILE = rundir.OPEN_CLIP_CONFIG
WEIGHTS_FILE = rundir.WEIGHTS


def register_configs() -> list[str]:
    """Make our model configs known to open_clip (idempotent); returns their names."""
    import open_clip

    ours = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    if any(n not in open_clip.list_models() for n in ours):
        open_clip.add_model_config(CONFIG_DIR)
    return ours


def model_config(name: str) -> tuple[str, dict]:
    """``(open_clip name, model config)`` for a model name or a config-JSON path; InputError if unknown."""
    import open_clip

    ours = register_configs()
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise InputError("no model config here", path=name)
        open_clip.add_model_config(path)
        name = path.stem
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise InputError(
            f"unknown model {name!r}: ours are {', '.join(ours)}; or any of open_clip.list_models(), "
            "or a path to an open_clip model-config JSON"
        )
    return name, copy.deepcopy(cfg)


def training_config(name: str, loss: str) -> tuple[str, dict]:
    """The model config a run trains and saves: SigLIP needs a learnable bias and its own init."""
    name, cfg = model_config(name)
    if loss == "siglip":
        cfg.setdefault("init_logit_scale", math.log(10))
        cfg.setdefault("init_logit_bias", -10.0)
    return name, cfg


def create(name: str, model_cfg: dict, patch_dropout: float = 0.0, device="cpu"):
    """A randomly initialised open_clip model for training (dict outputs), built from ``model_cfg``."""
    import open_clip

    kwargs = {k: model_cfg[k] for k in ("init_logit_scale", "init_logit_bias") if k in model_cfg}
    # Random initialisation is the point here; open_clip warns about it on the root logger every time,
    # which reads to a user like something went wrong.
    root = logging.getLogger()
    root.addFilter(_random_init_notice)
    try:
        return open_clip.create_model(
            name, pretrained=None, force_patch_dropout=patch_dropout, output_dict=True, device=device, **kwargs
        )
    finally:
        root.removeFilter(_random_init_notice)


def _random_init_notice(record: logging.LogRecord) -> bool:
    return "Model initialized randomly" not in record.getMessage()


def image_stats(model) -> tuple[int, tuple, tuple]:
    """Input side, mean and std the model's visual tower expects."""
    pp = model.visual.preprocess_cfg
    size = pp["size"] if isinstance(pp["size"], int) else pp["size"][0]
    return int(size), tuple(pp["mean"]), tuple(pp["std"])


def save_dir(model, model_cfg: dict, out: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``model`` as an open_clip local dir at ``out`` (files written then renamed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(model_cfg)
    cfg.get("vision_cfg", {}).pop("patch_dropout", None)  # a training-time setting, off at inference
    pp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.visual.preprocess_cfg.items()}
    doc = {"model_cfg": cfg, "preprocess_cfg": pp, **({"clip_tiers": extra} if extra else {})}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with units.atomic_path(out / WEIGHTS_FILE) as tmp:
        torch.save(state, tmp)
    with units.atomic_path(out / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(doc, indent=2))
    return out


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """``(model, preprocess, tokenizer)`` from a ``tiers train`` run (its final model, else its latest
    checkpoint), a model dir or a checkpoint; model in eval mode. Uses ``weights_only=True``."""
    import open_clip

    d = model_dir(path)
    spec = f"local-dir:{d.resolve()}"
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(spec, device=device, weights_only=True)
        tokenizer = open_clip.get_tokenizer(spec)
    except pickle.UnpicklingError:
        raise InputError(
            "refusing to load: the weights file holds more than tensors (weights_only)", path=str(d)
        ) from None
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"cannot load the model: {first}", path=str(d)) from None
    return model.eval(), preprocess, tokenizer
