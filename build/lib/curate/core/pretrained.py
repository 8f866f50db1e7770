"""open_clip's pretrained weights (``ARCH:TAG``), found in the local caches only: nothing is ever downloaded.

open_clip fetches ``ViT-B-32:laion2b_s34b_b79k`` from the Hugging Face Hub (or OpenAI's URL) on first
use. Here there may be no network, and a training job must not stall on one: :func:`cached_weights`
looks where open_clip would have stored the file — the Hugging Face hub cache (``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``) for tags with a hub repo, then open_clip's URL
cache (``~/.cache/clip``) — and returns the file, or raises one line naming the paths it looked at.
:func:`create_kwargs` then gives ``open_clip.create_model`` what the tag would have set (QuickGELU,
mean/std), so a file loads exactly as the tag does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from curate.core.errors import InputError


@dataclass(frozen=True)
class Pretrained:
    arch: str
    tag: str
    path: str  # the weights file in the cache
    cfg: dict  # open_clip's pretrained config of the tag (quick_gelu, mean, std, ...)


def hub_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it (read now, so tests may point it elsewhere)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def url_cache() -> Path:
    return Path("~/.cache/clip").expanduser()  # open_clip.pretrained.download_pretrained_from_url's default


def is_tag(arch: str, tag: str) -> bool:
    import open_clip

    return bool(open_clip.get_pretrained_cfg(arch, tag))


def cached_weights(arch: str, tag: str) -> Pretrained:
    """The cached weights file of open_clip's ``arch:tag``; InputError when unknown or not in the cache."""
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        known = f"its tags: {', '.join(tags)}" if tags else "open_clip has no pretrained weights for that model"
        raise InputError(f"{arch}:{tag}: not an open_clip pretrained tag ({known})")
    looked = []
    if cfg.get("file"):
        looked.append(cfg["file"])
        if os.path.isfile(cfg["file"]):
            return Pretrained(arch, tag, cfg["file"], dict(cfg))
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        cache = hub_cache()
        looked.append(str(cache / f"models--{repo.replace('/', '--')}"))
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=cache)
            if isinstance(found, str) and os.path.isfile(found):
                return Pretrained(arch, tag, found, dict(cfg))
    if cfg.get("url"):
        path = url_cache() / os.path.basename(cfg["url"])
        looked.append(str(path))
        if path.is_file():
            return Pretrained(arch, tag, str(path), dict(cfg))
    raise InputError(
        f"{arch}:{tag} is not in the local cache (looked in {' and '.join(looked)}); nothing is downloaded here: "
        "put the weights there (or set HF_HUB_CACHE), or name a local checkpoint"
    )


def preprocess_cfg(p: Pretrained) -> dict:
    """The tag's image statistics (mean, std, interpolation, resize mode) that a bare file does not carry."""
    return {k: p.cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if p.cfg.get(k)}


def transforms_kwargs(p: Pretrained) -> dict:
    """What ``open_clip.create_model_and_transforms(arch, pretrained=p.path, ...)`` needs to build what the tag
    would: QuickGELU where the tag was trained with it, and the tag's image statistics."""
    pp = preprocess_cfg(p)
    names = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
             "resize_mode": "image_resize_mode"}  # fmt: skip
    return {"force_quick_gelu": bool(p.cfg.get("quick_gelu")), **{names[k]: v for k, v in pp.items()}}
