"""The trainer's configuration: one frozen dataclass, read from TOML, with named recipe presets.

Everything that decides a run's result is in :class:`TrainConfig` (model, budget, optimiser,
recipe, seed), so ``config_hash`` names a run. A TOML file may start from a preset and override
any field; nested tables are ``[image_aug]``, ``[text_aug]``, ``[eval]`` and ``[track]``::

    preset = "improved"
    batch_size = 256
    [image_aug]
    scale = [0.5, 1.0]
    [eval]
    zeroshot = ["web/eval/zeroshot.parquet"]

The presets follow Fini et al., "Improved baselines for vision-language pre-training" (TMLR 2023):
``baseline`` is open_clip's own recipe (a mild random resized crop, nothing else); ``improved``
adds image augmentation (crop scale range, colour jitter, grayscale, blur, flip), text
augmentation (word swap, deletion, stopword removal), label smoothing, text token dropout and FLIP
patch dropout. Hue jitter stays off in both: captions name colours, and a hue shift makes them lie.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from curate.core import config
from curate.core.errors import InputError


@dataclass(frozen=True)
class ImageAug:
    scale: tuple[float, float] = (0.9, 1.0)  # random resized crop: share of the image area kept
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: float = 0.0  # brightness, contrast and saturation strength
    jitter_p: float = 0.8  # probability of applying the jitter when jitter > 0
    hue: float = 0.0
    grayscale: float = 0.0  # probability
    blur: float = 0.0  # probability of a Gaussian blur
    flip: float = 0.0  # probability of a horizontal flip


@dataclass(frozen=True)
class TextAug:
    swap: float = 0.0  # probability that a caption gets two of its words swapped
    delete: float = 0.0  # per-word deletion probability (a caption always keeps one word)
    stopwords: float = 0.0  # probability that a caption loses its stopwords
    synonyms: float = 0.0  # per-word replacement probability; needs ``thesaurus``
    thesaurus: str | None = None  # JSON file {word: [synonym, ...]}, for offline synonym replacement


@dataclass(frozen=True)
class EvalConfig:
    """Evaluations run at the end of training (and by ``tiers eval`` when given no paths)."""

    zeroshot: tuple[str, ...] = ()  # ImageFolder dirs or parquets (image bytes + label / label_name)
    classes: str | None = None  # classes.json: {"classnames": [...], "templates": [...]}
    retrieval: tuple[str, ...] = ()  # parquets of image bytes + caption
    linear_probe: tuple[str, ...] = ()  # ImageFolder dirs or parquets with labels (and an optional split)
    batch_size: int = 256
    limit: int = 0  # evaluate at most this many rows per set (0: all)


TRACKERS = ("tensorboard", "wandb")


@dataclass(frozen=True)
class TrackConfig:
    """Where a run's metrics go besides ``metrics.jsonl`` (the same numbers); not part of the run's identity.

    A study runner sets ``group`` to the study's name and ``name`` to the cell's, so each cell is one
    tracked run and a study is one group (see :mod:`train.tracking`).
    """

    log_to: tuple[str, ...] = ()  # "tensorboard" (RUN/tensorboard/), "wandb" (RUN/wandb/)
    project: str = "clip-tiers"  # W&B project
    group: str = ""  # W&B group, TensorBoard run-name prefix: the study
    name: str = ""  # the run's name (default: the run directory's name)
    wandb_mode: str = "offline"  # "offline": nothing leaves this machine (sync later with `wandb sync`); "online"


@dataclass(frozen=True)
class TrainConfig:
    model: str = "ct-vit-tiny-32"  # our config name, any open_clip name, a model-config JSON path, or ARCH:TAG
    init: str | None = None  # fine-tune: start from this `tiers train` run, model or checkpoint dir
    samples_seen: int = 0  # the compute budget; steps = samples_seen // (batch_size * world size)
    batch_size: int = 128  # per rank
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_frac: float = 0.05  # share of the steps spent warming up, then cosine decay
    min_lr_frac: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0: off
    loss: str = "clip"  # "clip" or "siglip"
    label_smoothing: float = 0.0
    token_dropout: float = 0.0  # probability of dropping each caption token (never start/end)
    patch_dropout: float = 0.0  # FLIP: share of image patches dropped in training
    image_aug: ImageAug = field(default_factory=ImageAug)
    text_aug: TextAug = field(default_factory=TextAug)
    seed: int = 0
    workers: int = 2  # data loader processes per rank; 0 decodes in the training process
    mix_shards: int = 4  # shards read together and shuffled as one group (the shuffle window)
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32", "bf16"
    device: str = "auto"  # "auto", "cpu", "cuda"
    threads: int = 0  # torch intra-op threads in the training process; 0: torch's default
    checkpoint_every: int = 100  # steps; the last step always writes one
    keep_checkpoints: int = 2
    log_every: int = 10
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    preset: str = "baseline"  # the preset this config started from (for the record)

    def __post_init__(self):
        problems = []
        if self.samples_seen < 0 or self.batch_size < 1:
            problems.append("samples_seen must be >= 0 and batch_size >= 1")
        if self.loss not in ("clip", "siglip"):
            problems.append(f"loss must be 'clip' or 'siglip', not {self.loss!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            problems.append(f"precision must be auto, fp32 or bf16, not {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            problems.append(f"device must be auto, cpu or cuda, not {self.device!r}")
        for name in ("label_smoothing", "token_dropout", "patch_dropout", "warmup_frac", "min_lr_frac"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1)")
        lo, hi = self.image_aug.scale
        if not 0 < lo <= hi <= 1:
            problems.append("image_aug.scale must satisfy 0 < lo <= hi <= 1")
        if self.text_aug.synonyms and not self.text_aug.thesaurus:
            problems.append("text_aug.synonyms needs text_aug.thesaurus (a JSON file of synonyms)")
        if set(self.track.log_to) - set(TRACKERS):
            problems.append(f"track.log_to takes {', '.join(TRACKERS)}, not {', '.join(self.track.log_to)}")
        if self.track.wandb_mode not in ("offline", "online", "disabled"):
            problems.append("track.wandb_mode must be offline, online or disabled")
        if self.workers < 0 or self.mix_shards < 1 or self.checkpoint_every < 0 or self.log_every < 1:
            problems.append("workers >= 0, mix_shards >= 1, checkpoint_every >= 0 and log_every >= 1")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Names the run: the same config gives the same hash (the eval and tracking settings left out; an
        unset ``init`` too, so runs from before it existed keep their names)."""
        d = self.to_dict()
        d.pop("eval")
        d.pop("track")
        if d["init"] is None:
            d.pop("init")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "improved": {
        "image_aug": {
            "scale": (0.4, 1.0),
            "jitter": 0.4,
            "jitter_p": 0.8,
            "grayscale": 0.1,
            "blur": 0.2,
            "flip": 0.5,
        },
        "text_aug": {"swap": 0.2, "delete": 0.1, "stopwords": 0.2},
        "label_smoothing": 0.1,
        "token_dropout": 0.1,
        "patch_dropout": 0.25,
    },
}


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, table by table; dotted keys (``image_aug.flip``) reach into tables."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in over.items():
        if "." in k:
            table, _, key = k.partition(".")
            out[table] = {**out.get(table, {}), key: v}
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def make_config(values: dict | None = None, preset: str | None = None, source: str | None = None) -> TrainConfig:
    """A config from a preset plus overrides; ``values`` may name its own ``preset``. Raises InputError
    (naming ``source``, the file the values came from, if any)."""
    values = dict(values or {})
    preset = values.pop("preset", None) or preset or "baseline"
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}", path=source)
    merged = merge(PRESETS[preset], values)
    merged["preset"] = preset
    return config.from_dict(TrainConfig, merged, section="train", source=source)


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> TrainConfig:
    """Read a TOML config (or none), apply ``overrides``; bad input raises :class:`InputError`."""
    values: dict = {} if path is None else config.read_toml(path)
    overrides = dict(overrides or {})
    if "preset" in overrides:  # a preset named on the command line replaces the file's base
        values["preset"] = overrides.pop("preset")
    return make_config(merge(values, overrides), source=None if path is None else os.fspath(path))


def parse_set(items: list[str]) -> dict:
    """``["lr=3e-4", "image_aug.flip=0.5", "loss=siglip"]`` -> overrides; values are TOML, else strings."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out[key.strip()] = value
    return out
