"""Deduplication over the annotation table: exact, pixel-identical, perceptual, semantic, caption.

:func:`deduplicate` is the whole decision as a pure function of the annotation columns, so it can
be rerun with other thresholds in seconds without decoding a single image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import schema
from curate.dedup.clusters import Links, resolve
from curate.dedup.near import NearConfig, aspect_differs, distinct, log_aspect, near_pairs
from curate.dedup.semantic import SemanticConfig, semantic_pairs


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True  # identical bytes (sha256)
    pixels: bool = True  # identical decoded pixels in another encoding
    near: bool = True  # pHash within near_k bits
    # Chosen on the synthetic web (bench/dedup_quality.py prints the distances for each k).
    near_k: int = 6
    # A resized or re-encoded copy keeps its shape, and a crop of a few percent nearly so: pHash
    # pairs whose width/height ratios differ by more than this are not near duplicates. 0 disables.
    near_shape_tolerance: float = 0.05
    near_tables: int = 10
    # SemDeDup needs an eps calibrated to the embedding model: with a weak CLIP (a tiny filter model
    # trained on a laptop) every embedding sits within cosine 0.97 of its neighbours and eps = 0.03
    # chains 90% of a pool into one cluster. So it is opt-in: set it when the model is good.
    semantic: bool = False  # only where CLIP embeddings exist
    semantic_eps: float = 0.03
    captions: bool = False  # identical normalised captions on different images
    seed: int = 0

    def near_config(self) -> NearConfig:
        return NearConfig(k=self.near_k, tables=self.near_tables, seed=self.seed)


def _group_ids(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Dense ids of equal non-null values; -1 for nulls."""
    enc = pc.dictionary_encode(col).combine_chunks() if isinstance(col, pa.ChunkedArray) else pc.dictionary_encode(col)
    ids = enc.indices.to_numpy(zero_copy_only=False)
    return np.where(pc.is_null(col).to_numpy(zero_copy_only=False), -1, np.nan_to_num(ids, nan=-1)).astype(np.int64)


_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise_caption(text: str | None) -> str | None:
    if not text:
        return None
    norm = _NON_WORD.sub(" ", text.lower()).strip()
    return norm or None


def deduplicate(
    table: pa.Table,
    cfg: DedupConfig = DedupConfig(),
    embeddings: np.ndarray | None = None,
    quality: np.ndarray | None = None,
    prefer: np.ndarray | None = None,
) -> pa.Table:
    """Decide duplicates among the rows of ``table`` (uid, sha256, pixel_hash, phash, caption).

    ``embeddings`` (rows aligned with ``table``) enables semantic dedup; ``quality`` and ``prefer``
    (e.g. "passes the filters") rank keepers. Returns uid, dup_of (keeper uid or null), dup_kind.
    """
    n = table.num_rows
    uids = np.asarray(table.column(schema.UID).to_pylist(), dtype=object)
    links = Links(n)
    names = table.column_names
    if cfg.exact and schema.SHA256 in names:
        links.add_groups("exact", _group_ids(table.column(schema.SHA256)))
    if cfg.pixels and schema.PIXEL_HASH in names:
        links.add_groups("pixels", _group_ids(table.column(schema.PIXEL_HASH)))
    if cfg.near and schema.PHASH in names:
        col = table.column(schema.PHASH)
        valid = np.flatnonzero(pc.is_valid(col).to_numpy(zero_copy_only=False))
        hashes = col.to_numpy(zero_copy_only=False)[valid].astype(np.uint64)
        values, inverse = distinct(hashes)
        # Equal hashes are near duplicates at distance 0; link them as groups, then their values.
        links.add_groups("near", _scatter(valid, inverse, n))
        vi, vj, _ = near_pairs(values, cfg.near_config())
        rep = np.full(len(values), -1, np.int64)
        rep[inverse[::-1]] = valid[::-1]  # a representative row per distinct value
        i, j = rep[vi], rep[vj]
        if cfg.near_shape_tolerance and schema.WIDTH in names and schema.HEIGHT in names:
            shape = log_aspect(table)
            ok = ~aspect_differs(shape[i], shape[j], cfg.near_shape_tolerance)
            i, j = i[ok], j[ok]
        links.add("near", i, j)
    if cfg.semantic and embeddings is not None:
        ok = np.flatnonzero(np.isfinite(embeddings).all(axis=1) & (np.abs(embeddings).sum(axis=1) > 0))
        i, j = semantic_pairs(embeddings[ok], SemanticConfig(eps=cfg.semantic_eps, seed=cfg.seed))
        links.add("semantic", ok[i], ok[j])
    if cfg.captions and schema.CAPTION in names:
        norm = pa.array([normalise_caption(c) for c in table.column(schema.CAPTION).to_pylist()], pa.string())
        links.add_groups("caption", _group_ids(norm))

    out = resolve(links, uids, quality, prefer)
    return pa.table(
        {
            schema.UID: table.column(schema.UID),
            schema.DUP_OF: pa.array(out["dup_of"], pa.string()),
            schema.DUP_KIND: pa.array(out["dup_kind"], pa.string()),
        }
    )


def _scatter(valid: np.ndarray, inverse: np.ndarray, n: int) -> np.ndarray:
    g = np.full(n, -1, np.int64)
    g[valid] = inverse
    return g
