"""The annotate stage: per-sample measurements computed once, so filters are cheap thresholds.

``annotate(DIR, AnnotateConfig(...))`` reads ``DIR/raw/`` and writes ``DIR/annotations/`` (see
:mod:`curate.annotate.run`); ``read_annotations(DIR)`` and ``load_embeddings(DIR)`` read them back.
Roles: :mod:`~curate.annotate.raw` (the raw layout), :mod:`~curate.annotate.image`,
:mod:`~curate.annotate.caption`, :mod:`~curate.annotate.language`, :mod:`~curate.annotate.clip`
(the signals), :mod:`~curate.annotate.stage` (one batch), :mod:`~curate.annotate.run` (units and Ray).
The commands, ``tiers annotate`` and ``tiers filter``, are in :mod:`pipelines.commands.annotate`.
"""

from curate.annotate.run import (
    AnnotateSummary,
    annotate,
    annotation_columns,
    annotation_files,
    annotation_fix,
    annotation_tables,
    load_embeddings,
    read_annotations,
    summarise,
)
from curate.annotate.stage import OUTPUT_SCHEMA, AnnotateConfig, Annotator

__all__ = [
    "OUTPUT_SCHEMA",
    "AnnotateConfig",
    "AnnotateSummary",
    "Annotator",
    "annotate",
    "annotation_columns",
    "annotation_files",
    "annotation_fix",
    "annotation_tables",
    "load_embeddings",
    "read_annotations",
    "summarise",
]
