"""What a download did: ``raw/manifest.json``, and what :func:`curate.download.download` returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

FORMAT = "clip-tiers/raw@1"


@dataclass(frozen=True)
class DownloadSummary:
    """Counts that add up: ``successes + failures == input_rows`` (``failures_by_reason`` sums to
    ``failures``), checked against the raw parquets before it is written. When ``status`` is
    ``"incomplete"`` the counts are None and ``failed_shards`` names each shard that ran out of retries
    with its last error."""

    status: str  # "complete" | "incomplete"
    input_rows: int
    shards: int
    successes: int | None = None
    failures: int | None = None
    failures_by_reason: dict[str, int] | None = None
    source: str | None = None
    rounds: tuple[dict, ...] = ()  # retry rounds: round, reasons, rows, shards, origins, recovered
    config: dict = field(default_factory=dict)
    allowed: str = ""  # which addresses connections could reach, as the policy describes itself
    missing_shards: tuple[str, ...] = ()
    failed_shards: dict[str, str] = field(default_factory=dict)
    retried: int = 0  # rows `retry_failed` tried again (0 for a plain download)
    code_version: str = ""
    format: str = FORMAT

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rounds"], d["missing_shards"] = list(self.rounds), list(self.missing_shards)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> DownloadSummary:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["rounds"] = tuple(values.get("rounds") or ())
        values["missing_shards"] = tuple(values.get("missing_shards") or ())
        return cls(**values)
