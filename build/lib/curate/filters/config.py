"""Filter configuration: presets, TOML files, and combinations of the two.

A config names presets and adds, replaces or drops filters::

    preset = ["datacomp-basic", "clip-score"]   # one name or a list, concatenated in order
    image_size = 256                            # the download size; DataComp's 200 px scales with it
    drop = ["min_side"]                         # leave these (by name) out

    [[filters]]                                 # same name as a preset filter: replaces it
    type = "clip_score"
    top_fraction = 0.2

    [[filters]]                                 # a new name: appended
    type = "max_blank_share"
    value = 0.95

Presets:

- ``datacomp-basic`` — DataComp's basic filtering: English caption by fastText, more than 2 words,
  more than 5 characters, shorter side >= 200 px at a 512 px download (scaled: ``200 * image_size /
  512``), aspect ratio <= 3; plus the image must decode. "English" is fastText's top label, as in
  DataComp, or ``P(en) >= 0.2`` among its top-5 labels. The argmax alone drops ~3% of short English
  alt-texts as French or German look-alikes ("blue plus sign"); the second clause keeps 99% of them,
  at the price, on real labelled text (``bench/filters_quality.py``), of keeping 1.7% instead of
  1.5% of non-English sentences and 9.4% instead of 8.0% of non-English word pairs. A
  ``[[filters]]`` entry of type ``language`` without ``min_score`` gives DataComp's argmax rule.
- ``clip-score`` — DataComp's CLIP-score baseline: the top 30% of rows by CLIP similarity (or
  ``threshold = x``); needs annotations made with ``--clip-model``.
- ``synthetic-basic`` — ``datacomp-basic`` with size rules that fit the synthetic web (64-256 px
  images, so 32 px for the shorter side instead of 200) plus its low-quality kinds: near-blank
  images (blank share > 0.97) and boilerplate / URL / HTML captions.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass, field

from curate.core import config
from curate.core.errors import InputError
from curate.filters.core import Filter
from curate.filters.rules import RULES

# P(en) that keeps a caption whose top label is another language; see the module docstring.
EN_MIN_SCORE = 0.2
DATACOMP_SIZE = 512


def _datacomp_basic(image_size: int) -> list[dict]:
    return [
        {"type": "decoded"},
        {"type": "language", "langs": ["en"], "min_score": EN_MIN_SCORE},
        {"type": "min_words", "value": 3},
        {"type": "min_chars", "value": 6},
        {"type": "min_side", "value": round(200 * image_size / DATACOMP_SIZE)},
        {"type": "max_aspect", "value": 3.0},
    ]


def _clip_score(image_size: int) -> list[dict]:
    return [{"type": "decoded"}, {"type": "clip_score", "top_fraction": 0.3}]


def _synthetic_basic(image_size: int) -> list[dict]:
    specs = [dict(s) for s in _datacomp_basic(image_size)]
    for s in specs:
        if s["type"] == "min_side":
            s["value"] = 32  # the synthetic web renders 64-256 px; its `tiny` kind is 8-24 px
    return specs + [
        {"type": "max_blank_share", "value": 0.97},
        {"type": "no_boilerplate"},
        {"type": "no_url"},
        {"type": "no_html"},
    ]


PRESETS = {"datacomp-basic": _datacomp_basic, "clip-score": _clip_score, "synthetic-basic": _synthetic_basic}


@dataclass(frozen=True)
class FilterConfig:
    preset: tuple[str, ...] = ("datacomp-basic",)
    image_size: int = DATACOMP_SIZE
    filters: tuple[dict, ...] = ()
    drop: tuple[str, ...] = ()
    source: str | None = field(default=None, compare=False)  # the TOML file, for messages

    def to_dict(self) -> dict:
        return config.to_dict(self)


def load_config(path: str | os.PathLike) -> FilterConfig:
    """Read a filter config from TOML; :class:`InputError` names the file on any problem."""
    return config_from_dict(config.read_toml(path), source=os.fspath(path))


def config_from_dict(data: dict, source: str | None = None) -> FilterConfig:
    """A checked config from plain values: unknown keys, presets, filter types or parameters raise InputError."""
    cfg = config.from_dict(FilterConfig, data, section="filters", source=source)
    if not all(isinstance(f, dict) for f in cfg.filters):
        raise InputError("`filters` must be a list of tables ([[filters]] entries)", path=source)
    cfg = dataclasses.replace(cfg, source=source)
    build_filters(cfg)  # validate now, so a typo is reported before any work
    return cfg


def preset_config(names: str | list[str] | tuple[str, ...], image_size: int = DATACOMP_SIZE) -> FilterConfig:
    return config_from_dict({"preset": names, "image_size": image_size})


def _default_name(rule: str) -> str:
    return inspect.signature(RULES[rule]).parameters["name"].default


def _spec_name(spec: dict, source: str | None) -> str:
    rule = spec.get("type")
    if rule not in RULES:
        raise InputError(f"unknown filter type {rule!r}; known: {', '.join(RULES)}", path=source)
    return spec.get("name") or _default_name(rule)


def build_filters(cfg: FilterConfig) -> list[Filter]:
    """The filters ``cfg`` describes, in order; :class:`InputError` for unknown names or parameters."""
    specs: dict[str, dict] = {}
    for p in cfg.preset:
        if p not in PRESETS:
            raise InputError(f"unknown filter preset {p!r}; known: {', '.join(PRESETS)}", path=cfg.source)
        for spec in PRESETS[p](cfg.image_size):
            specs.setdefault(_spec_name(spec, cfg.source), spec)
    for spec in cfg.filters:
        specs[_spec_name(spec, cfg.source)] = spec  # replaces in place, or appends
    for name in cfg.drop:
        if name not in specs:
            raise InputError(f"drop: no filter named {name!r} (have: {', '.join(specs)})", path=cfg.source)
        del specs[name]
    out = []
    for name, spec in specs.items():
        params = {k: v for k, v in spec.items() if k != "type"}
        params["name"] = name
        try:
            out.append(RULES[spec["type"]](**params))
        except (TypeError, ValueError) as e:
            raise InputError(f"filter {name!r}: {e}", path=cfg.source) from None
    return out
