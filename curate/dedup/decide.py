"""Deduplication over the annotation table: exact, pixel-identical, perceptual, semantic, caption.

:func:`deduplicate` is the whole decision as a pure function of the annotation columns, so it can
be rerun with other thresholds in seconds without decoding a single image.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import schema
from curate.dedup.clusters import Links, resolve
from curate.dedup.copies import COLOUR_BYTES, DETAIL_SIDE, THUMB_SIDE, CopyConfig, copy_pairs
from curate.dedup.near import NearConfig, aspect_differs, distinct, log_aspect, near_pairs
from curate.dedup.semantic import SemanticConfig, semantic_pairs
from curate.dedup.thumbstore import spilled_thumbs

# The pHash search's (bands, tables) by pool size, where the config leaves them 0. A pair of random hashes
# is a candidate in a band of b bits with probability 2^-b, so a mask's random candidates grow as n^2 / 2^b
# while its sort grows as n. Measured per mask on random hashes (bench/near_bands.py): ~64 ns a row and ~49
# ns a candidate, so 3 bands of ~21 bits x 10 tables (30 masks) cost less below ~43M rows and 2 bands of 32
# bits x 110 tables (220 masks; the same recall at 6 bits, 0.93) above: at 1B rows ~83 CPU-hours against
# ~5 (README, "Dedup at scale").
SMALL_POOL_BANDS = (3, 10)
LARGE_POOL_BANDS = (2, 110)
LARGE_POOL = 50_000_000


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True  # identical bytes (sha256)
    pixels: bool = True  # identical decoded pixels in another encoding
    near: bool = True  # near copies: pHash within near_k bits and thumbnail neighbours, verified
    near_k: int = 6
    # Without stored thumbnails (annotations from before they existed) a pHash match is a near
    # duplicate unless the width/height ratios differ by more than this (a resized or re-encoded copy
    # keeps its shape). With thumbnails the verifier searches crops of up to copy_max_crop per side,
    # and the shape may differ as much as such a crop makes it. 0 disables.
    near_shape_tolerance: float = 0.05
    # The pHash search: near_tables random permutations of the 64 bits, each cut into near_bands bands; a
    # pair is a candidate where some band is equal. 0 (the default): chosen by the pool's size
    # (:meth:`for_rows`). Set both to choose yourself.
    near_tables: int = 0
    near_bands: int = 0
    # Verify near-copy candidates by aligned thumbnails (curate.dedup.copies; bench/dedup_real.py).
    verify: bool = True
    copy_neighbours: int = 6
    copy_max_crop: float = 0.12
    copy_min_similarity: float = 0.90
    copy_min_detail: float = 0.70
    # SemDeDup needs an eps calibrated to the embedding model: with a weak CLIP (a tiny filter model
    # trained on a laptop) every embedding sits within cosine 0.97 of its neighbours and eps = 0.03
    # chains 90% of a pool into one cluster. So it is opt-in: set it when the model is good.
    semantic: bool = False  # only where CLIP embeddings exist
    semantic_eps: float = 0.03
    captions: bool = False  # identical normalised captions on different images
    seed: int = 0
    # N > 0: split the pool into hash partitions of about N rows, spilled to a temporary directory
    # (curate.dedup.partitioned), so memory is one partition plus the duplicate links, not the pool;
    # the build's stage then reads the annotation files a batch at a time. 0: decide in memory, the
    # pool's columns held whole. The decisions are the same; partitioned was faster too at 1M and 10M
    # rows (README, "Dedup at scale"), so it is the default.
    partition_rows: int = 250_000

    def __post_init__(self):
        if not 0 <= self.near_bands <= 64:
            raise ValueError(f"near_bands must be 1 to 64 (0: chosen by the pool's size), not {self.near_bands}")
        if self.near_tables < 0:
            raise ValueError(f"near_tables must be 1 or more (0: chosen by the pool's size), not {self.near_tables}")

    def for_rows(self, rows: int) -> DedupConfig:
        """This config with ``near_bands`` and ``near_tables`` that are 0 chosen for a pool of ``rows`` rows:
        ``SMALL_POOL_BANDS`` below ``LARGE_POOL`` rows, else ``LARGE_POOL_BANDS``."""
        bands, tables = LARGE_POOL_BANDS if rows >= LARGE_POOL else SMALL_POOL_BANDS
        return replace(self, near_bands=self.near_bands or bands, near_tables=self.near_tables or tables)

    def near_config(self) -> NearConfig:
        if not (self.near_bands and self.near_tables):
            raise ValueError("near_bands / near_tables not chosen yet: DedupConfig.for_rows(rows) first")
        return NearConfig(k=self.near_k, bands=self.near_bands, tables=self.near_tables, seed=self.seed)

    def copy_config(self) -> CopyConfig:
        return CopyConfig(
            neighbours=self.copy_neighbours,
            max_crop=self.copy_max_crop,
            min_similarity=self.copy_min_similarity,
            min_detail=self.copy_min_detail,
            seed=self.seed,
        )


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
    thumbs=None,
) -> pa.Table:
    """Decide duplicates among the rows of ``table`` (uid, sha256, pixel_hash, phash, caption), in memory.

    ``embeddings`` (rows aligned with ``table``) enables semantic dedup; ``quality`` and ``prefer``
    (e.g. "passes the filters") rank keepers. ``thumbs``: the rows' thumbnails already spilled
    (:func:`curate.dedup.thumbstore.spilled_thumbs`), instead of a ``thumb`` column in ``table``.
    Returns uid, dup_of (keeper uid or null), dup_kind.
    """
    n = table.num_rows
    cfg = cfg.for_rows(n)
    uids = np.asarray(table.column(schema.UID).to_pylist(), dtype=object)
    links = Links(n)
    names = table.column_names
    if cfg.exact and schema.SHA256 in names:
        links.add_groups("exact", _group_ids(table.column(schema.SHA256)))
    if cfg.pixels and schema.PIXEL_HASH in names:
        links.add_groups("pixels", _group_ids(table.column(schema.PIXEL_HASH)))
    if cfg.near and schema.PHASH in names:
        _near_links(table, cfg, links, thumbs)
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


def _near_links(table: pa.Table, cfg: DedupConfig, links: Links, thumbs=None) -> None:
    """pHash candidates, plus thumbnail neighbours and verification where annotate stored thumbnails."""
    n, names = table.num_rows, table.column_names
    if n < 2:  # nothing to compare (a build where nothing decoded)
        return
    col = table.column(schema.PHASH)
    valid = np.flatnonzero(pc.is_valid(col).to_numpy(zero_copy_only=False))
    values, inverse = distinct(col.to_numpy(zero_copy_only=False)[valid].astype(np.uint64))
    vi, vj, _ = near_pairs(values, cfg.near_config())
    rep = np.full(len(values), -1, np.int64)
    rep[inverse[::-1]] = valid[::-1]  # a representative row per distinct value
    i, j = rep[vi], rep[vj]
    shape = log_aspect(table) if schema.WIDTH in names and schema.HEIGHT in names else None
    if not (cfg.verify and (schema.THUMB in names or thumbs is not None)):
        # Equal hashes are near duplicates at distance 0; link them as groups, then their values.
        links.add_groups("near", _scatter(valid, inverse, n))
        if cfg.near_shape_tolerance and shape is not None:
            ok = ~aspect_differs(shape[i], shape[j], cfg.near_shape_tolerance)
            i, j = i[ok], j[ok]
        links.add("near", i, j)
        return
    # Rows sharing a pHash value are candidates of their value's representative, not links yet.
    other = rep[inverse] != valid
    i, j = np.concatenate([i, valid[other]]), np.concatenate([j, rep[inverse][other]])
    verified_links(table, cfg, links, [(i, j)], shape, thumbs)


def verified_links(
    table: pa.Table,
    cfg: DedupConfig,
    links: Links,
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    shape: np.ndarray | None,
    thumbs=None,
) -> None:
    """Link near copies among the rows of ``table`` (width, height; thumb unless ``thumbs`` gives them
    spilled): thumbnail neighbours plus the pHash candidate ``pairs`` ((i, j) chunks of rows, taken one
    at a time, e.g. from :class:`curate.dedup.neighbours.SpilledPairs`), each verified by aligned
    thumbnails (:mod:`curate.dedup.copies`). The thumbnails are read from a scratch file a block at a
    time (:mod:`curate.dedup.thumbstore`), never held whole."""
    if thumbs is None:
        with spilled_thumbs([table.column(schema.THUMB)]) as spilled:
            return verified_links(table, cfg, links, pairs, shape, spilled)
    n, names = table.num_rows, table.column_names
    rows, raw, scratch = thumbs
    t = raw.view(slice(0, COLOUR_BYTES), (THUMB_SIDE, THUMB_SIDE, 3))
    grey = raw.view(slice(COLOUR_BYTES, None), (DETAIL_SIDE, DETAIL_SIDE))
    at = np.full(n, -1, np.int64)
    at[rows] = np.arange(len(rows))
    side = None
    if schema.WIDTH in names and schema.HEIGHT in names:
        w, h = (table.column(c).cast(pa.float64()).fill_null(np.nan).to_numpy() for c in (schema.WIDTH, schema.HEIGHT))
        side = np.minimum(w, h)[rows]
    extra = _thumb_rows(at, pairs)
    a, b = copy_pairs(t, grey, cfg.copy_config(), extra, None if shape is None else shape[rows], side, scratch)
    links.add("near", rows[a], rows[b])


def _thumb_rows(at: np.ndarray, pairs: Iterable[tuple[np.ndarray, np.ndarray]]):
    """The candidate pairs whose rows both have a thumbnail, as thumbnail rows (``at``: each row's, -1 where
    it has none), a chunk at a time."""
    for i, j in pairs:
        ok = (at[i] >= 0) & (at[j] >= 0)
        yield at[i[ok]], at[j[ok]]


def _scatter(valid: np.ndarray, inverse: np.ndarray, n: int) -> np.ndarray:
    g = np.full(n, -1, np.int64)
    g[valid] = inverse
    return g
