"""CLIP image-text similarity from any open_clip model, with normalised embeddings kept for dedup.

A model is named by one string (``--clip-model``):

- ``ARCH:TAG`` — an open_clip architecture and pretrained tag (``ViT-B-32:laion2b_s34b_b79k``); the
  weights are taken from the local open_clip / Hugging Face cache, never downloaded
  (:mod:`curate.core.pretrained`);
- ``ARCH:PATH`` — an architecture (a built-in name, or a path to an open_clip model-config JSON)
  and a local checkpoint: a state dict, or a dict holding one under ``state_dict`` (as open_clip's
  trainer saves), loaded with ``weights_only=True``;
- ``local-dir:DIR`` or ``DIR`` holding ``open_clip_config.json`` and the weights (open_clip's own
  self-describing layout), or ``hf-hub:org/repo`` (from the cache);
- ``run:PATH``, or a ``PATH`` that is not one of the above: a run directory or checkpoint written by
  ``tiers train`` — the Data Filtering Network path — resolved to its open_clip local dir
  (:mod:`curate.core.rundir`).

A bare architecture name without weights is refused: it would score with random weights.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.core import pretrained, rundir
from curate.core.errors import InputError


@dataclass(frozen=True)
class ClipSpec:
    arch: str  # open_clip model name (possibly with a schema) or a model-config JSON path
    weights: str | None  # pretrained tag or local checkpoint; None where the arch names its weights
    trainer_run: str | None = None  # a `tiers train` run or checkpoint (its open_clip local dir is loaded)


def parse_spec(text: str) -> ClipSpec:
    text = text.strip()
    if text.startswith(("hf-hub:", "local-dir:")):
        return ClipSpec(text, None)
    if text.startswith("run:"):
        return ClipSpec("", None, trainer_run=text[len("run:") :])
    p = Path(text)
    if p.is_dir() and (p / "open_clip_config.json").is_file():
        return ClipSpec(f"local-dir:{p}", None)
    if p.exists():
        return ClipSpec("", None, trainer_run=str(p))
    arch, sep, weights = text.partition(":")
    if not sep or not arch or not weights:
        raise InputError(
            f"--clip-model {text!r}: name the weights too, as ARCH:TAG (cached pretrained weights), "
            "ARCH:/path/to/checkpoint.pt, local-dir:DIR, or run:DIR (a `tiers train` run)"
        )
    return ClipSpec(arch, weights)


def _arch_name(arch: str) -> str:
    """Register a model-config JSON with open_clip and return the name it is known by."""
    import open_clip

    if arch.endswith(".json"):
        path = Path(arch)
        if not path.is_file():
            raise InputError("no open_clip model config here", path=arch)
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)
        return path.stem
    return arch


def load(spec: ClipSpec, device: str = "cpu"):
    """``(model, preprocess, tokenizer)`` in eval mode on ``device``; errors become :class:`InputError`."""
    import open_clip

    if spec.trainer_run is not None:
        if not os.path.exists(spec.trainer_run):
            raise InputError("no `tiers train` run or checkpoint here", path=spec.trainer_run)
        # A run's model and checkpoints are open_clip local dirs (curate.core.rundir): open_clip loads
        # them itself, tensors only.
        spec = ClipSpec(f"local-dir:{rundir.model_dir(spec.trainer_run).resolve()}", None)
    arch = _arch_name(spec.arch)
    weights, kwargs = spec.weights, {}
    if weights is not None and ("/" in weights or os.sep in weights or weights.endswith((".pt", ".pth", ".bin"))):
        if not os.path.isfile(weights):
            raise InputError("no CLIP checkpoint here", path=weights)
    elif weights is not None:  # a pretrained tag: from the local cache, never downloaded
        found = pretrained.cached_weights(arch, weights)
        weights, kwargs = found.path, pretrained.transforms_kwargs(found)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=weights, device=device, weights_only=True, **kwargs
        )
        tokenizer = open_clip.get_tokenizer(arch)
    except (RuntimeError, FileNotFoundError, ValueError, KeyError, OSError, pickle.UnpicklingError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"cannot load CLIP model {spec.arch}:{weights}: {first}") from None
    return model.eval(), preprocess, tokenizer


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class ClipScorer:
    """Embed images and captions in batches of ``batch_size``.

    The caller preprocesses each image with :attr:`preprocess` right after decoding it (the one
    decode every signal shares) and hands the tensors to :meth:`embed`.
    """

    def __init__(self, spec: str | ClipSpec, device: str = "auto", batch_size: int = 64):
        import torch

        self.spec = parse_spec(spec) if isinstance(spec, str) else spec
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.model, self.preprocess, self.tokenizer = load(self.spec, self.device)
        self._torch = torch
        # Mixed precision on GPU; exact fp32 on CPU, where autocast would only slow a tiny model down.
        self._autocast = self.device.startswith("cuda")
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer([""]).to(self.device)).shape[-1])

    def embed(self, images: list, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Unit-norm float32 image and text embeddings for preprocessed ``images`` and ``captions``."""
        torch = self._torch
        out_i, out_t = [], []
        for k in range(0, len(images), self.batch_size):
            pix = torch.stack(images[k : k + self.batch_size]).to(self.device, non_blocking=True)
            toks = self.tokenizer([c or "" for c in captions[k : k + self.batch_size]]).to(self.device)
            with (
                torch.inference_mode(),
                torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast),
            ):
                fi = self.model.encode_image(pix)
                ft = self.model.encode_text(toks)
            fi = torch.nn.functional.normalize(fi.float(), dim=-1)
            ft = torch.nn.functional.normalize(ft.float(), dim=-1)
            out_i.append(fi.cpu().numpy())
            out_t.append(ft.cpu().numpy())
        if not out_i:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate(out_i), np.concatenate(out_t)


# A CLIP small enough to run in tests and benchmarks on a CPU in seconds (random weights).
TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def save_random_model(out_dir: str | os.PathLike, config: dict | None = None, seed: int = 0) -> str:
    """Write a randomly initialised open_clip model as ``out_dir/{open_clip_config.json, open_clip_pytorch_model.bin}``
    (open_clip's local-dir layout; the weights are a plain state dict) and return its ``local-dir:`` spec.

    For tests, benchmarks and demos that need a real model but no downloaded weights.
    """
    import json

    import open_clip
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config or TINY_CONFIG
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}, indent=2))
    (out / "model_config.json").write_text(json.dumps(cfg, indent=2))  # for the ARCH.json:CHECKPOINT form
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    torch.save(model.state_dict(), out / "open_clip_pytorch_model.bin")
    return f"local-dir:{out}"
