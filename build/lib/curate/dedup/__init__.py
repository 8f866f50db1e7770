"""Deduplication over the annotation table: exact, pixel-identical, perceptual, semantic, caption.

Roles: :mod:`~curate.dedup.decide` (the decision, a pure function of the annotation columns),
:mod:`~curate.dedup.near` (pHash neighbours without all pairs), :mod:`~curate.dedup.semantic`
(SemDeDup), :mod:`~curate.dedup.clusters` (links to keepers), :mod:`~curate.dedup.decontaminate`
(copies of evaluation images), :mod:`~curate.dedup.partitioned` (the same decisions in hash
partitions, for pools larger than memory; the default), :mod:`~curate.dedup.source` (the annotation
rows a batch at a time), :mod:`~curate.dedup.stage` (``DIR/dedup.parquet`` for a build).
"""

import numpy as np
import pyarrow as pa

from curate.dedup import decide
from curate.dedup.decide import DedupConfig, normalise_caption
from curate.dedup.partitioned import deduplicate_partitioned

__all__ = ["DedupConfig", "deduplicate", "normalise_caption"]


def deduplicate(
    table: pa.Table,
    cfg: DedupConfig = DedupConfig(),
    embeddings: np.ndarray | None = None,
    quality: np.ndarray | None = None,
    prefer: np.ndarray | None = None,
    thumbs=None,
) -> pa.Table:
    """uid, dup_of, dup_kind for the rows of ``table``: in memory (:func:`curate.dedup.decide.deduplicate`),
    or, with ``cfg.partition_rows``, in hash partitions (:func:`deduplicate_partitioned`); the same decisions.
    ``thumbs``: the rows' thumbnails spilled (:func:`curate.dedup.thumbstore.spilled_thumbs`), where
    ``table`` has no ``thumb`` column."""
    if cfg.partition_rows:
        return deduplicate_partitioned(
            table, cfg, embeddings=embeddings, quality=quality, prefer=prefer, thumbs=thumbs
        )
    return decide.deduplicate(table, cfg, embeddings=embeddings, quality=quality, prefer=prefer, thumbs=thumbs)
