"""One quality score per sample, the number bands are cut by.

``score = "clip"`` uses the CLIP similarity (``clip_score``) from the annotate stage: the DataComp
CLIP-score baseline, or the Data Filtering Network idea when the scorer is a CLIP trained on
trusted data. ``score = "heuristic"`` needs no model: the mean of a caption part and an image part,
each in [0, 1]:

- caption: ``lang_score`` when the caption is in ``lang`` (else 0), words (saturating at 5),
  alphabetic share, and 1 - repeated-token share; halved for each of URL / HTML / boilerplate;
- image: shorter side / ``ref_side`` (capped at 1), 1 - blank share, entropy / 8 bits,
  sharpness squashed by ``1 - exp(-v / 100)``, and ``min(1, 2 / aspect)``.

``score = "auto"`` (default) takes ``clip`` where a CLIP score exists and ``heuristic`` elsewhere.
Heuristic scores and CLIP cosines live on different scales, so "auto" never mixes them within a
build: it uses CLIP for every row or for none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import schema


@dataclass(frozen=True)
class QualityConfig:
    score: str = "auto"  # auto | clip | heuristic
    lang: str = "en"
    ref_side: int = 224


def _col(table: pa.Table, name: str, default: float) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, default, np.float64)
    arr = table.column(name)
    if pa.types.is_boolean(arr.type):
        arr = pc.cast(arr, pa.float64())
    return np.nan_to_num(arr.to_numpy(zero_copy_only=False).astype(np.float64), nan=default)


def heuristic(table: pa.Table, cfg: QualityConfig = QualityConfig()) -> np.ndarray:
    n = table.num_rows
    if schema.LANG in table.column_names:
        lang = np.asarray(table.column(schema.LANG).to_pylist(), dtype=object)
        lang_ok = np.where(lang == cfg.lang, _col(table, schema.LANG_SCORE, 0.0), 0.0)
    else:
        lang_ok = np.ones(n)
    words = np.minimum(_col(table, schema.CAPTION_WORDS, 0.0) / 5.0, 1.0)
    text = (lang_ok + words + _col(table, schema.ALPHA_SHARE, 1.0) + (1 - _col(table, schema.REPEAT_SHARE, 0.0))) / 4
    for flag in (schema.HAS_URL, schema.HAS_HTML, schema.BOILERPLATE):
        text = text * np.where(_col(table, flag, 0.0) > 0, 0.5, 1.0)

    side = np.minimum(_col(table, schema.WIDTH, 0.0), _col(table, schema.HEIGHT, 0.0))
    aspect = np.maximum(_col(table, schema.ASPECT, 1.0), 1.0)
    image = (
        np.minimum(side / cfg.ref_side, 1.0)
        + (1 - _col(table, schema.BLANK_SHARE, 0.0))
        + np.clip(_col(table, schema.ENTROPY, 0.0) / 8.0, 0, 1)
        + (1 - np.exp(-np.maximum(_col(table, schema.SHARPNESS, 0.0), 0) / 100.0))
        + np.minimum(1.0, 2.0 / aspect)
    ) / 5
    return ((text + image) / 2).astype(np.float32)


def quality(table: pa.Table, cfg: QualityConfig = QualityConfig()) -> tuple[np.ndarray, str]:
    """(scores, which) for every row of an annotation table; ``which`` is "clip" or "heuristic"."""
    has_clip = schema.CLIP_SCORE in table.column_names and table.column(schema.CLIP_SCORE).null_count < table.num_rows
    if cfg.score == "clip" or (cfg.score == "auto" and has_clip):
        if not has_clip:
            raise ValueError("quality score 'clip' needs a clip_score column: annotate with --clip-model first")
        clip = table.column(schema.CLIP_SCORE).to_numpy(zero_copy_only=False).astype(np.float32)
        return np.nan_to_num(clip, nan=-1.0), "clip"
    if cfg.score not in ("auto", "heuristic"):
        raise ValueError(f"unknown quality score {cfg.score!r}; choose auto, clip or heuristic")
    return heuristic(table, cfg), "heuristic"
