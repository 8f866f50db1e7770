"""Scratch files written on one node of a Ray cluster, read by tasks on any node.

The dedup task spills the pool's thumbnails and search vectors to its node's local scratch directory
(:mod:`curate.dedup.thumbstore`) and hands its jobs, which read them, to Ray tasks. A file records the
node that wrote it (its *origin*); a task reading it through :func:`local` gets the file itself on that
node, and elsewhere a replica in its own node's scratch directory, pulled the first time a task there
needs it: ``RANGE`` bytes at a time by Ray tasks pinned to the origin node (no CPU held, ``INFLIGHT``
ranges in flight, so memory stays bounded on both sides), written under a lock and renamed into place,
so the node's other tasks wait for it and then find it whole. Nothing is copied on one node, or where
Ray is not running. :func:`drop` removes a directory's replicas from every node once its owner is done.

What it costs: each node that runs a job reads the whole file once over the network (at 1M images,
1.8 GB of thumbnails and 0.8 GB of search vectors) and holds it on its local disk while the stage runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curate.core import scratch, storage
from curate.core.runtime import ray_running

RANGE = 16 << 20  # bytes a pull task reads and returns through the object store
INFLIGHT = 4  # pull tasks in flight per replica
PULLED = ".pulled"  # made in the origin directory when a replica of one of its files is first pulled


def this_node() -> str | None:
    """This process's Ray node id; None when Ray is not running here."""
    if not ray_running():
        return None
    import ray

    return ray.get_runtime_context().get_node_id()


def _here(origin: str | None) -> bool:
    """Whether a file written on node ``origin`` is read where it lies: on that node, or with no Ray (or
    no origin) at all."""
    node = this_node() if origin is not None else None
    return node is None or node == origin


def replica_dir(directory: str, origin: str) -> Path:
    """Where this node keeps replicas of the files of ``directory`` on node ``origin``."""
    key = hashlib.sha256(f"{origin}\n{directory}".encode()).hexdigest()[:16]
    return Path(storage.scratch_dir()) / f"{scratch.REPLICA}{key}"


def local(path: Path, origin: str | None, size: int) -> Path:
    """A path to read ``path`` (``size`` bytes, written on node ``origin``) at on this node: itself on its
    origin (or without Ray), else a replica, pulled here first if no task on this node has pulled it yet."""
    if _here(origin):
        return path
    d = replica_dir(str(path.parent), origin)
    replica = d / path.name
    with contextlib.suppress(FileNotFoundError):
        os.utime(d)  # in use: a scratch sweep removes replicas only a day after their last use
    if replica.exists():  # renamed into place whole
        return replica
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the node's other tasks wait here, then find it
        if not replica.exists():
            _pull(path, origin, size, replica)
    return replica


def _pull(path: Path, origin: str, size: int, replica: Path) -> None:
    part = replica.with_name(f"{replica.name}.part")
    with open(part, "wb") as f:
        for data in _ranges(path, origin, size, mark=True):
            f.write(data)
    if part.stat().st_size != size:
        raise OSError(f"{path} on node {origin}: pulled {part.stat().st_size} bytes of {size}")
    os.replace(part, replica)


def _ranges(path: Path, origin: str, size: int, mark: bool):
    """``path``'s bytes, ``RANGE`` at a time, read by Ray tasks on node ``origin``, ``INFLIGHT`` at once."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    place = NodeAffinitySchedulingStrategy(node_id=origin, soft=False)
    read = ray.remote(num_cpus=0, max_retries=2, scheduling_strategy=place)(read_range)
    pending: deque = deque()
    for at in range(0, size, RANGE):
        pending.append(read.remote(str(path), at, min(RANGE, size - at), mark))
        if len(pending) >= INFLIGHT:
            yield ray.get(pending.popleft())
    while pending:
        yield ray.get(pending.popleft())


@dataclass(frozen=True)
class NodeFile:
    """A scratch file jobs read (a partition's spill, the distinct pHash values): made on the node that
    wrote it; a job may run on any. Read once, whole, through :meth:`buffer` (no replica kept), or by
    several jobs through :meth:`local` (a replica per node, which its owner removes with :func:`drop`)."""

    path: str
    size: int = field(init=False)
    origin: str | None = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "size", os.path.getsize(self.path))
        object.__setattr__(self, "origin", this_node())

    def local(self) -> Path:
        """A path to read the file at on this node (see :func:`local`)."""
        return local(Path(self.path), self.origin, self.size)

    def buffer(self):
        """The file's bytes as a ``pyarrow.Buffer``: memory-mapped on its own node, else read from it."""
        import pyarrow as pa

        if _here(self.origin):
            return pa.memory_map(self.path).read_buffer()  # the buffer keeps the mapping
        out, at = np.empty(self.size, np.uint8), 0
        for data in _ranges(Path(self.path), self.origin, self.size, mark=False):
            out[at : at + len(data)] = data
            at += len(data)
        if at != self.size:
            raise OSError(f"{self.path} on node {self.origin}: read {at} bytes of {self.size}")
        return pa.py_buffer(out)


def read_range(path: str, at: int, size: int, mark: bool = True) -> np.ndarray:
    """``size`` bytes of ``path`` from ``at`` (on the origin node; the first range of a replica's pull
    marks its directory, for :func:`drop`)."""
    if at == 0 and mark:
        (Path(path).parent / PULLED).touch()
    with open(path, "rb", buffering=0) as f:
        data = os.pread(f.fileno(), size, at)
    if len(data) != size:
        raise OSError(f"{path}: {len(data)} bytes at {at}, {size} expected")
    return np.frombuffer(data, np.uint8)


def drop(directory: str | os.PathLike) -> None:
    """Remove the replicas of ``directory``'s files (written on this node) from every other live node; a
    no-op unless one was pulled. A node that cannot be reached keeps its copy in its scratch directory."""
    origin = this_node()
    if origin is None or not (Path(directory) / PULLED).exists():
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = []
    for node in ray.nodes():
        if node["Alive"] and node["NodeID"] != origin:
            place = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            remove = ray.remote(num_cpus=0, max_retries=0, scheduling_strategy=place)(remove_replicas)
            refs.append(remove.remote(str(directory), origin))
    for ref in refs:
        with contextlib.suppress(Exception):  # a node lost meanwhile: nothing to remove it with
            ray.get(ref, timeout=120)


def remove_replicas(directory: str, origin: str) -> None:
    shutil.rmtree(replica_dir(directory, origin), ignore_errors=True)
