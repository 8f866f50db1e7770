"""The filters: each a constructor taking its thresholds and returning a :class:`Filter`.

``RULES`` maps the ``type`` a TOML config names to its constructor; the constructor's keyword
arguments are the keys the config may set. A single threshold is called ``value`` and is inclusive:
a lower bound for ``min_*`` rules, an upper one for ``max_*`` rules (``min_words`` with ``value = 3``
keeps captions of 3 words or more: DataComp's "more than 2 words"). Every rule also takes ``name``,
the reason it records.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import schema
from curate.filters.core import Filter, column


def decoded(name: str = "decode_error") -> Filter:
    """Keep rows whose image decoded (``decode_error`` is null)."""
    return Filter(
        name, lambda t: t.column(schema.DECODE_ERROR).is_null().to_numpy(zero_copy_only=False), (schema.DECODE_ERROR,)
    )


def language(
    langs: list[str] | tuple[str, ...] = ("en",), min_score: float | None = None, name: str = "language"
) -> Filter:
    """The caption is in one of ``langs`` by fastText: its top label is one of them (DataComp's rule),
    or, when ``min_score`` is set, fastText gives them together at least that probability (from the
    stored top-k labels). On four-word alt-texts the argmax is noisy ("blue plus sign" reads as
    French, with English second), and the second clause keeps those.
    """
    langs = tuple(langs)

    def fn(t: pa.Table) -> np.ndarray:
        top = pc.is_in(t.column(schema.LANG), pa.array(langs, pa.string())).fill_null(False)
        keep = np.asarray(top.to_numpy(zero_copy_only=False), bool)
        if min_score is not None:
            total = np.zeros(t.num_rows)
            for lang in langs:
                p = pc.map_lookup(t.column(schema.LANG_SCORES), lang, "first").cast(pa.float64()).fill_null(0)
                total += p.to_numpy(zero_copy_only=False)
            keep |= total >= min_score
        return keep

    cols = (schema.LANG,) if min_score is None else (schema.LANG, schema.LANG_SCORES)
    return Filter(name, fn, cols, {"langs": list(langs), "min_score": min_score})


def _at_least(name: str, col: str, threshold: float) -> Filter:
    return Filter(name, lambda t: column(t, col) >= threshold, (col,), {"value": threshold})


def _at_most(name: str, col: str, threshold: float) -> Filter:
    return Filter(name, lambda t: column(t, col) <= threshold, (col,), {"value": threshold})


def min_words(value: int = 3, name: str = "min_words") -> Filter:
    return _at_least(name, schema.CAPTION_WORDS, value)


def min_chars(value: int = 6, name: str = "min_chars") -> Filter:
    return _at_least(name, schema.CAPTION_CHARS, value)


def min_alpha_share(value: float = 0.5, name: str = "alpha_share") -> Filter:
    return _at_least(name, schema.ALPHA_SHARE, value)


def max_repeat_share(value: float = 0.5, name: str = "repeat_share") -> Filter:
    return _at_most(name, schema.REPEAT_SHARE, value)


def max_blank_share(value: float = 0.97, name: str = "blank") -> Filter:
    return _at_most(name, schema.BLANK_SHARE, value)


def min_sharpness(value: float = 10.0, name: str = "sharpness") -> Filter:
    return _at_least(name, schema.SHARPNESS, value)


def min_entropy(value: float = 1.0, name: str = "entropy") -> Filter:
    return _at_least(name, schema.ENTROPY, value)


def _flag_off(name: str, col: str) -> Filter:
    return Filter(name, lambda t: ~column(t, col, fill=True), (col,))


def no_url(name: str = "url") -> Filter:
    return _flag_off(name, schema.HAS_URL)


def no_html(name: str = "html") -> Filter:
    return _flag_off(name, schema.HAS_HTML)


def no_boilerplate(name: str = "boilerplate") -> Filter:
    return _flag_off(name, schema.BOILERPLATE)


def _size(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Width and height before the downloader resized, where it recorded them; else as stored."""
    w, h = column(t, schema.WIDTH), column(t, schema.HEIGHT)
    if schema.ORIGINAL_WIDTH in t.column_names and schema.ORIGINAL_HEIGHT in t.column_names:
        ow, oh = column(t, schema.ORIGINAL_WIDTH), column(t, schema.ORIGINAL_HEIGHT)
        known = ~np.isnan(ow) & ~np.isnan(oh)
        w, h = np.where(known, ow, w), np.where(known, oh, h)
    return w, h


def min_side(value: float = 200, name: str = "min_side") -> Filter:
    """The shorter side is at least ``value`` px (of the original image, where img2dataset recorded it)."""
    return Filter(name, lambda t: np.fmin(*_size(t)) >= value, (schema.WIDTH, schema.HEIGHT), {"value": value})


def max_aspect(value: float = 3.0, name: str = "max_aspect") -> Filter:
    """Long side / short side is at most ``value``."""

    def fn(t: pa.Table) -> np.ndarray:
        w, h = _size(t)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.fmax(w, h) / np.fmin(w, h) <= value

    return Filter(name, fn, (schema.WIDTH, schema.HEIGHT), {"value": value})


def clip_score(threshold: float | None = None, top_fraction: float | None = None, name: str = "clip_score") -> Filter:
    """CLIP image-text similarity: at least ``threshold``, or among the best ``top_fraction`` of scored rows.

    The fraction is exact (``round(fraction * scored)`` rows, ties broken by row order), computed
    over the rows of the table it is given that have a score.
    """
    if (threshold is None) == (top_fraction is None):
        raise ValueError("clip_score: give exactly one of threshold and top_fraction")
    if top_fraction is not None and not 0 < top_fraction <= 1:
        raise ValueError(f"clip_score: top_fraction must be in (0, 1], got {top_fraction}")

    def fn(t: pa.Table) -> np.ndarray:
        s = column(t, schema.CLIP_SCORE)
        scored = ~np.isnan(s)
        if t.num_rows and not scored.any():
            from curate.core.errors import InputError

            raise InputError("the annotations have no CLIP scores: annotate with --clip-model first")
        if threshold is not None:
            return scored & (s >= threshold)
        idx = np.flatnonzero(scored)
        best = idx[np.argsort(-s[idx], kind="stable")][: int(round(top_fraction * len(idx)))]
        keep = np.zeros(t.num_rows, bool)
        keep[best] = True
        return keep

    return Filter(name, fn, (schema.CLIP_SCORE,), {"threshold": threshold, "top_fraction": top_fraction})


RULES = {
    "decoded": decoded,
    "language": language,
    "min_words": min_words,
    "min_chars": min_chars,
    "min_alpha_share": min_alpha_share,
    "max_repeat_share": max_repeat_share,
    "no_url": no_url,
    "no_html": no_html,
    "no_boilerplate": no_boilerplate,
    "min_side": min_side,
    "max_aspect": max_aspect,
    "max_blank_share": max_blank_share,
    "min_sharpness": min_sharpness,
    "min_entropy": min_entropy,
    "clip_score": clip_score,
}
