"""The ``tiers`` commands, one module per family, each with ``register(subparsers)``; nothing heavy at import."""

from pipelines.commands import annotate, bootstrap, build, check, datacomp, demo, download, study, train, web

# The order `tiers --help` lists them in: the data flow, then training and studies, then the helpers.
COMMANDS = (build, download, annotate, bootstrap, datacomp, study, train, demo, web, check)

__all__ = ["COMMANDS"]
