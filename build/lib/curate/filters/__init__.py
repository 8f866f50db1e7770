"""Filters: pure columnar decisions over the annotation table, every drop with a reason.

``apply_filters(table, build_filters(cfg))`` returns per row ``keep``, ``reason`` (the first failing
filter) and ``reasons`` (all failing ones), plus counts by reason. Roles: :mod:`~curate.filters.core`
(the filter contract and the wrapper), :mod:`~curate.filters.rules` (the filters),
:mod:`~curate.filters.config` (presets and TOML).
"""

from __future__ import annotations

import os

from curate.filters.config import PRESETS, FilterConfig, build_filters, config_from_dict, load_config, preset_config
from curate.filters.core import Filter, FilterResult, apply_filters
from curate.filters.rules import RULES


def filter_annotations(build_dir: str | os.PathLike, cfg: FilterConfig) -> FilterResult:
    """Apply ``cfg`` to the annotation table of ``build_dir`` (no image is decoded)."""
    from curate.annotate import read_annotations

    return apply_filters(read_annotations(build_dir), build_filters(cfg))


__all__ = [
    "PRESETS",
    "RULES",
    "Filter",
    "FilterConfig",
    "FilterResult",
    "apply_filters",
    "build_filters",
    "config_from_dict",
    "filter_annotations",
    "load_config",
    "preset_config",
]
