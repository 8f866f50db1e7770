"""Download: URL lists to raw WebDataset shards with img2dataset on Ray, every URL accounted for.

``download(urls, out, cfg)`` writes ``out/raw/``: per shard ``NNNNN.tar`` (successes only, as
img2dataset writes them), ``NNNNN.parquet`` (one row per input row of the shard, success or failure,
with ``download_status``, ``download_reason``, ``download_error``, ``shard``, ``key``, img2dataset's
own columns and the input's extra columns, ``uid`` first) and ``NNNNN_stats.json``; plus
``manifest.json`` (counts that add up) and the bookkeeping a resumed run needs (``_input/``,
``_done/``). ``retry_failed(out)`` tries transient failures again. Modules, one role each:

- :mod:`~curate.download.config` — settings (frozen dataclass, TOML);
- :mod:`~curate.download.safety` — which addresses a connection may reach;
- :mod:`~curate.download.fetch` — one URL: img2dataset's fetch plus limits and body checks;
- :mod:`~curate.download.reasons` — raw messages to a short list of reasons;
- :mod:`~curate.download.worker` — one shard in a Ray task, committed atomically;
- :mod:`~curate.download.plan` — input shards, retry rounds; :mod:`~curate.download.run` — the driver;
- the command, ``tiers download``, is :mod:`pipelines.commands.download`.
"""

from curate.download.config import DownloadConfig, config_from_dict, load_config
from curate.download.reasons import REASONS, TRANSIENT
from curate.download.run import download, read_manifest, read_results, retry_failed
from curate.download.safety import AddressPolicy, parse_allow
from curate.download.summary import DownloadSummary

__all__ = [
    "REASONS",
    "TRANSIENT",
    "AddressPolicy",
    "DownloadConfig",
    "DownloadSummary",
    "config_from_dict",
    "download",
    "load_config",
    "parse_allow",
    "read_manifest",
    "read_results",
    "retry_failed",
]
