"""Selection: one quality score per sample, disjoint quality bands, and the sample table with one fate per row.

Roles: :mod:`~curate.select.quality` (the score bands are cut by), :mod:`~curate.select.bands` (bands
and tiers as prefixes of them), :mod:`~curate.select.samples` (``samples.parquet``: every input row's
fate, counts that add up).
"""

from curate.select.bands import FILTERED, BandConfig, assign, band_names, tiers
from curate.select.quality import QualityConfig, quality
from curate.select.samples import assemble, check_counts, counts

__all__ = [
    "FILTERED",
    "BandConfig",
    "QualityConfig",
    "assemble",
    "assign",
    "band_names",
    "check_counts",
    "counts",
    "quality",
    "tiers",
]
