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
    vision = model_cfg.get("vision_cfg", {})
    if patch_dropout and isinstance(vision.get("layers"), list | tuple):  # open_clip's ModifiedResNet
        logging.getLogger(__name__).warning(
            f"patch_dropout {patch_dropout} is ignored: {name} has a ResNet image tower, which has no patches"
        )
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


INIT_ARCH = "init"  # ``model = "init"``: the architecture of the ``init`` checkpoint


def _arch_of(model_cfg: dict) -> dict:
    """The parts of a model config that decide the shapes of its weights."""
    cfg = copy.deepcopy(model_cfg)
    cfg.pop("init_logit_scale", None)
    cfg.pop("init_logit_bias", None)
    cfg.get("vision_cfg", {}).pop("patch_dropout", None)
    return cfg


def split_pretrained(model: str) -> tuple[str, str | None]:
    """``ARCH:TAG`` or ``ARCH:CHECKPOINT`` -> (arch, weights); a plain name or config path -> (name, None)."""
    if model.startswith(("hf-hub:", "local-dir:")):
        raise InputError(f"--model {model!r}: name ARCH:TAG, or give the directory to --init")
    arch, sep, weights = model.rpartition(":")
    if not sep or not arch or os.path.exists(model):
        return model, None
    return arch, weights


def build(cfg, device) -> tuple[object, dict, object, dict]:
    """The model a run starts from: ``(model, model config, tokenizer, where its weights came from)``.

    ``cfg.init`` (a run, model or checkpoint dir: fine-tuning) loads that open_clip local dir, weights
    and all; ``cfg.model = "ARCH:TAG"`` loads open_clip's pretrained weights from the local cache
    (:mod:`curate.core.pretrained`), ``"ARCH:FILE"`` a checkpoint file; a plain name starts from random
    weights. Every load uses ``weights_only=True`` and refuses a checkpoint that does not fit exactly.
    """
    import open_clip

    if cfg.init:
        return _from_dir(cfg, device)
    arch, weights = split_pretrained(cfg.model)
    if arch == INIT_ARCH:
        raise InputError('model = "init" takes the architecture of --init; name the checkpoint to start from')
    name, model_cfg = training_config(arch, cfg.loss)
    if weights is None:
        return create(name, model_cfg, cfg.patch_dropout, device), model_cfg, open_clip.get_tokenizer(name), {}
    from curate.core import pretrained

    _check_loss(cfg.loss, model_config(arch)[1], {"weights": weights})  # the weights' own config, not ours

    kwargs, source = {}, {"weights": weights}
    if not os.path.isfile(weights):
        found = pretrained.cached_weights(name, weights)
        source = {"pretrained": f"{name}:{weights}", "weights": found.path}
        kwargs = {"force_quick_gelu": bool(found.cfg.get("quick_gelu")),
                  "force_preprocess_cfg": pretrained.preprocess_cfg(found) or None}  # fmt: skip
        weights = found.path
        if kwargs["force_quick_gelu"]:
            model_cfg["quick_gelu"] = True
    extra = {k: model_cfg[k] for k in ("init_logit_scale", "init_logit_bias") if k in model_cfg}
    model = _load(name, weights, cfg.patch_dropout, device, {**kwargs, **extra})
    return model, model_cfg, open_clip.get_tokenizer(name), source


def _from_dir(cfg, device):
    import open_clip

    d = model_dir(cfg.init)
    model_cfg = json.loads((d / CONFIG_FILE).read_text())["model_cfg"]
    if cfg.model != INIT_ARCH:
        _, named = training_config(split_pretrained(cfg.model)[0], cfg.loss)
        if _arch_of(named) != _arch_of(model_cfg):
            raise InputError(
                f"--init holds another architecture than model {cfg.model!r}; "
                'leave --model out (or set model = "init") to fine-tune the checkpoint as it is',
                path=str(d),
            )
    source = {"init": str(d.resolve()), "weights": str((d / WEIGHTS_FILE).resolve())}
    _check_loss(cfg.loss, model_cfg, source)
    model = _load(f"local-dir:{d.resolve()}", None, cfg.patch_dropout, device, {})
    return model, copy.deepcopy(model_cfg), open_clip.get_tokenizer(f"local-dir:{d.resolve()}"), source


def _check_loss(loss: str, model_cfg: dict, source: dict) -> None:
    if loss == "siglip" and "init_logit_bias" not in model_cfg:
        raise InputError(
            "SigLIP loss needs a model with a logit bias; these weights were trained without one: "
            "fine-tune them with the CLIP loss",
            path=source.get("weights"),
        )


def _load(name: str, weights: str | None, patch_dropout: float, device, kwargs: dict):
    import open_clip

    try:
        return open_clip.create_model(
            name, pretrained=weights, force_patch_dropout=patch_dropout, output_dict=True, device=device,
            weights_only=True, **kwargs,
        )  # fmt: skip
    except pickle.UnpicklingError:
        raise InputError("refusing to load: the weights file holds more than tensors", path=weights or name) from None
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"cannot start from these weights: {first}", path=weights or name) from None


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
