"""Reading a tier's shards for the trainer: ``pread`` on local disk, ranged GETs with prefetch elsewhere.

A loader slot reads its shards in an order fixed by the seed (:class:`train.data.ShardPlan`), so it
knows which it will want next. Local shards are indexed from their headers and read sample by sample
with ``os.pread`` (the page cache does the rest). A shard in object storage is fetched whole, as
concurrent ranged GETs of 8 MB (:func:`fetch`) — a band shard is tens of MB,
and a group uses every sample of it — on a background thread as
soon as the slot's plan names it, a few shards ahead, and kept in a small LRU; its members are then
sliced from memory. Memory per slot is bounded by ``ahead + cache`` shards, whatever the tier's size.
Nothing here changes *what* is read, only when: the stream stays a pure function of the seed, so a
run resumed after ``kill -9`` reads exactly what an uninterrupted one would.
"""

from __future__ import annotations

import os
import tarfile
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from curate.core import storage
from curate.core.tarstream import index_members, index_tar, scan

Index = dict[str, dict[str, tuple[int, int]]]


def fetch(url: str, part: int = 8 << 20) -> bytes:
    """A remote shard's bytes as concurrent ranged GETs of ``part`` bytes (one GET when smaller)."""
    fs, path = storage.filesystem(url)
    n = fs.size(path)
    if n <= part:
        data = fs.cat_file(path)
    else:
        starts = range(0, n, part)
        data = b"".join(fs.cat_ranges([path] * len(starts), list(starts), [min(s + part, n) for s in starts]))
    if len(data) != n:
        raise OSError(f"{url}: read {len(data)} bytes of {n}")
    return data


class ShardReader:
    """Index and member bytes of a list of shards (paths or URLs); one per loader slot, not shared."""

    def __init__(self, shards: list[str], ahead: int = 4, cache: int = 8, threads: int = 4):
        self.shards = shards
        self.remote = [not storage.is_local(s) for s in shards]
        self.ahead, self.cache = ahead, cache
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._blobs: OrderedDict[int, Future] = OrderedDict()
        self._pool = ThreadPoolExecutor(threads) if any(self.remote) else None

    def prefetch(self, shards: list[int]) -> None:
        """Start fetching these remote shards (the plan's next ones) if they are not on their way."""
        for s in shards[: self.ahead]:
            if self.remote[s] and s not in self._blobs:
                self._blobs[s] = self._pool.submit(fetch, self.shards[s])
                self._trim()

    def _trim(self) -> None:
        while len(self._blobs) > self.cache + self.ahead:
            self._blobs.popitem(last=False)

    def _blob(self, s: int) -> bytes:
        fut = self._blobs.get(s)
        if fut is None:
            fut = self._blobs[s] = self._pool.submit(fetch, self.shards[s])
            self._trim()
        self._blobs.move_to_end(s)
        return fut.result()

    def index(self, s: int) -> Index:
        """``{stem: {ext: (offset, size)}}``; raises OSError or TarError when the shard is unreadable."""
        if not self.remote[s]:
            return index_tar(self.shards[s])
        return index_members(scan(self._blob(s), self.shards[s]))

    def read(self, s: int, offset: int, size: int) -> bytes:
        if self.remote[s]:
            data = self._blob(s)[offset : offset + size]
        else:
            fd = self._fds.get(s)
            if fd is None:
                fd = self._fds[s] = os.open(self.shards[s], os.O_RDONLY)
                if len(self._fds) > 16:
                    os.close(self._fds.popitem(last=False)[1])
            data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"short read in {self.shards[s]}")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._blobs.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


UNREADABLE = (OSError, tarfile.TarError, FileNotFoundError)
