"""One quality score per sample, the number bands are cut by.

``score = "clip"`` uses the CLIP similarity (``clip_score``) from the annotate stage: the DataComp
CLIP-score baseline, or the Data Filtering Network idea when the scorer is a CLIP trained on
trusted data. ``score = "bootstrap"`` uses ``bootstrap_score``, the held-out score of a filter CLIP
trained on the pool itself (``pipelines/bootstrap.py``; no pretrained weights, no trusted data).
``score = "heuristic"`` needs no model: ``sqrt(caption part x image part)``, so a good caption cannot
rescue junk pixels nor the reverse.

Caption part (mean of four, each in [0, 1], halved for each of URL / HTML / boilerplate):
``lang_score`` when the caption is in ``lang`` (else 0), words (saturating at 5), alphabetic share,
1 - repeated-token share.

Image part: the product of one term per kind of junk, each 1 for a typical photo and 0 for the
junk it names, so one failure is enough (``bench/quality_score.py`` measures every term on real
photos and generated junk; thresholds in :class:`QualityConfig`):

- resolution: ``0.25 + 0.75 * log2(effective_side / 8) / log2(ref_side / 8)`` (clipped): the picture's
  real resolution, not its pixel count, so a 10 px thumbnail blown up to 256 px scores as 10 px;
- noise: 1 until the finest-scale share of variance (``sharpness / (20 contrast^2)``, ~1.0 for pure
  noise, 0.01-0.1 for photos) passes ``noise_ok``, 0 at ``noise_bad``;
- flat: 1 from ``contrast`` (grey standard deviation) ``flat_ok`` up, 0 at ``flat_bad``;
- blank: 1 while at most ``blank_ok`` of the pixels share the dominant colour, 0 when all do;
- palette: 1 while the 8 fullest colour bins hold at most ``palette_ok`` of the pixels, 0 at
  ``palette_bad`` (text screenshots, logos, flat graphics);
- blockiness: 1 up to ``block_ok`` (JPEG grid steps over other steps), 0 at ``block_bad``
  (JPEG quality below ~10);
- aspect: ``min(1, 2 / aspect)``.

Sharpness and entropy are not rewarded: pure noise has the most of both. A column missing from
older annotations makes its term 1.

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

SCORES = ("auto", "clip", "heuristic", "bootstrap")
BOOTSTRAP_SCORE = "bootstrap_score"  # written by pipelines/bootstrap.py into DIR/bootstrap/scores.parquet
# Every annotation column a score reads: a build reads these (and the filters' columns), not the whole table.
COLUMNS = (
    schema.LANG, schema.LANG_SCORE, schema.CAPTION_WORDS, schema.ALPHA_SHARE, schema.REPEAT_SHARE, schema.HAS_URL,
    schema.HAS_HTML, schema.BOILERPLATE, schema.WIDTH, schema.HEIGHT, schema.EFFECTIVE_SIDE, schema.CONTRAST,
    schema.SHARPNESS, schema.BLANK_SHARE, schema.PALETTE_SHARE, schema.BLOCKINESS, schema.ASPECT, schema.CLIP_SCORE,
)  # fmt: skip


@dataclass(frozen=True)
class QualityConfig:
    score: str = "auto"  # auto | clip | heuristic | bootstrap
    lang: str = "en"
    ref_side: int = 224
    noise_ok: float = 0.15
    noise_bad: float = 0.5
    flat_ok: float = 20.0
    flat_bad: float = 4.0
    blank_ok: float = 0.5
    palette_ok: float = 0.7
    palette_bad: float = 0.9
    block_ok: float = 1.6
    block_bad: float = 2.6


def _col(table: pa.Table, name: str, default: float) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, default, np.float64)
    arr = table.column(name)
    if pa.types.is_boolean(arr.type):
        arr = pc.cast(arr, pa.float64())
    return np.nan_to_num(arr.to_numpy(zero_copy_only=False).astype(np.float64), nan=default)


def _ramp(x: np.ndarray, ok: float, bad: float) -> np.ndarray:
    """1 at ``ok`` and beyond on the good side, 0 at ``bad`` and beyond, linear between."""
    return np.clip((x - bad) / (ok - bad), 0.0, 1.0)


def caption_part(table: pa.Table, cfg: QualityConfig = QualityConfig()) -> np.ndarray:
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
    return text


def image_terms(table: pa.Table, cfg: QualityConfig = QualityConfig()) -> dict[str, np.ndarray]:
    """Each term of the image part, named, so a benchmark can measure them one by one."""
    side = np.minimum(_col(table, schema.WIDTH, 0.0), _col(table, schema.HEIGHT, 0.0))
    effective = _col(table, schema.EFFECTIVE_SIDE, np.nan)
    effective = np.where(np.isnan(effective), side, effective)
    level = np.log2(np.maximum(effective, 1.0) / 8.0) / np.log2(cfg.ref_side / 8.0)
    contrast = _col(table, schema.CONTRAST, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        noise = np.where(contrast >= 1.0, _col(table, schema.SHARPNESS, 0.0) / (20.0 * contrast**2), 0.0)
    return {
        "resolution": 0.25 + 0.75 * np.clip(level, 0.0, 1.0),
        "noise": np.where(np.isnan(contrast), 1.0, _ramp(noise, cfg.noise_ok, cfg.noise_bad)),
        "flat": np.where(np.isnan(contrast), 1.0, _ramp(contrast, cfg.flat_ok, cfg.flat_bad)),
        "blank": _ramp(_col(table, schema.BLANK_SHARE, 0.0), cfg.blank_ok, 1.0),
        "palette": _ramp(_col(table, schema.PALETTE_SHARE, 0.0), cfg.palette_ok, cfg.palette_bad),
        "blockiness": _ramp(_col(table, schema.BLOCKINESS, 1.0), cfg.block_ok, cfg.block_bad),
        "aspect": np.minimum(1.0, 2.0 / np.maximum(_col(table, schema.ASPECT, 1.0), 1.0)),
    }


def heuristic(table: pa.Table, cfg: QualityConfig = QualityConfig()) -> np.ndarray:
    image = np.prod(np.stack(list(image_terms(table, cfg).values())), axis=0)
    return np.sqrt(np.maximum(caption_part(table, cfg) * image, 0.0)).astype(np.float32)


def quality(table: pa.Table, cfg: QualityConfig = QualityConfig()) -> tuple[np.ndarray, str]:
    """(scores, which) for every row of an annotation table; ``which`` is "clip", "bootstrap" or "heuristic"."""
    if cfg.score not in SCORES:
        raise ValueError(f"unknown quality score {cfg.score!r}; choose {', '.join(SCORES)}")
    if cfg.score == "bootstrap":
        if BOOTSTRAP_SCORE not in table.column_names:
            raise ValueError("quality score 'bootstrap' needs bootstrap scores: run `tiers bootstrap DIR` first")
        return np.nan_to_num(_col(table, BOOTSTRAP_SCORE, -1.0), nan=-1.0).astype(np.float32), "bootstrap"
    has_clip = schema.CLIP_SCORE in table.column_names and table.column(schema.CLIP_SCORE).null_count < table.num_rows
    if cfg.score == "clip" or (cfg.score == "auto" and has_clip):
        if not has_clip:
            raise ValueError("quality score 'clip' needs a clip_score column: annotate with --clip-model first")
        clip = table.column(schema.CLIP_SCORE).to_numpy(zero_copy_only=False).astype(np.float32)
        return np.nan_to_num(clip, nan=-1.0), "clip"
    return heuristic(table, cfg), "heuristic"
