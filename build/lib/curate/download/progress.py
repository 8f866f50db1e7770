"""A progress bar for a download: URLs per second, share of successes, ETA.

Workers leave ``raw/_tmp/<attempt>/progress`` ("rows successes") as they go; finished shards report
their counts when their task returns. The driver polls both, so the bar moves within a shard
instead of jumping once per shard, on one machine or a cluster sharing the output directory.
"""

from __future__ import annotations

from tqdm import tqdm

from curate.core import storage
from curate.download.worker import PROGRESS, TMP


class DownloadProgress:
    def __init__(self, raw: str, total: int, done: int = 0, ok: int = 0, enabled: bool = True, desc="download"):
        # Attempts stage under raw/_tmp/ only on local disk; elsewhere the bar moves per finished shard.
        self.tmp = storage.local_path(raw) / TMP if storage.is_local(raw) else None
        self.done_rows, self.done_ok = done, ok  # finished shards
        self._shown = done
        self.bar = tqdm(
            total=total, initial=done, desc=desc, unit="url", disable=not enabled, dynamic_ncols=True, smoothing=0.1
        )
        self._postfix(done, ok)

    def shard_done(self, rows: int, successes: int) -> None:
        self.done_rows += rows
        self.done_ok += successes

    def _in_flight(self) -> tuple[int, int]:
        n = ok = 0
        for p in self.tmp.glob(f"*/{PROGRESS}") if self.tmp is not None else ():
            try:
                a, b = p.read_text().split()
            except (OSError, ValueError):
                continue  # renamed or removed under us: the shard just finished
            n, ok = n + int(a), ok + int(b)
        return n, ok

    def _postfix(self, n: int, ok: int) -> None:
        self.bar.set_postfix_str(f"ok {100 * ok / n:.1f}%" if n else "ok -", refresh=False)

    def poll(self) -> None:
        if self.bar.disable:
            return
        n, ok = self._in_flight()
        n, ok = self.done_rows + n, self.done_ok + ok
        n = min(n, self.bar.total)
        if n > self._shown:  # a finished shard's progress file can vanish before its counts arrive
            self._postfix(n, ok)
            self.bar.update(n - self._shown)
            self._shown = n

    def close(self) -> None:
        self.poll()
        self.bar.close()
