"""Deduplication over the annotation table: exact, pixel-identical, perceptual, semantic, caption.

Roles: :mod:`~curate.dedup.decide` (the decision, a pure function of the annotation columns),
:mod:`~curate.dedup.near` (pHash neighbours without all pairs), :mod:`~curate.dedup.semantic`
(SemDeDup), :mod:`~curate.dedup.clusters` (links to keepers), :mod:`~curate.dedup.decontaminate`
(copies of evaluation images), :mod:`~curate.dedup.stage` (``DIR/dedup.parquet`` for a build).
"""

from curate.dedup.decide import DedupConfig, deduplicate, normalise_caption

__all__ = ["DedupConfig", "deduplicate", "normalise_caption"]
