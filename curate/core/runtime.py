"""Starting and stopping Ray, once per CLI run or test session.

Ray costs ~3 s and ~0.7 GB per start, so a process starts it once (``ray_session``) and every stage
inside reuses it. Locally it gets this machine's cores and no dashboard; ``address`` joins a cluster.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator


def quiet_environment() -> None:
    """The environment defaults every entry point sets once: no telemetry, no update checks, our bars only."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # Ray Data's progress bars would fight with ours.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if not ray_verbose():
        # Ray's core (C++) writes even routine notices to stderr at ERROR ("core_worker.cc ... E"); they
        # stay in Ray's own log files unless --verbose. Read when Ray starts, so it is set here.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    arrow_allocator()


# jemalloc's options for the driver's Arrow pool: freed pages go back to the system at once.
DECAY = "dirty_decay_ms:0,muzzy_decay_ms:0"


def arrow_allocator(driver: bool = False) -> None:
    """Arrow allocates with jemalloc where the wheel has it, here and (through the environment) in the
    Ray workers started from here, unless ``ARROW_DEFAULT_MEMORY_POOL`` says otherwise.

    The wheel's default, mimalloc, keeps the pages of freed buffers: a build's driver reads and drops
    tables stage after stage, and at 200,000 rows it stayed ~80 MB larger after reading the decision
    columns than with jemalloc, which hands freed pages back (decide alone: 334 against 254 MB; README).

    In a ``driver`` (the CLI's process) it hands them back at once (:data:`DECAY`): Arrow's jemalloc
    keeps freed pages about a second, so a loop that makes and drops a table every ~0.2 s
    (``samples.parquet`` written a batch at a time) holds several batches' pages at once. Decide alone
    at 200,000 rows with Ray up peaked at 623 MB with Arrow's setting, 569 with 100 ms and 495 with 0,
    for ~1.4 s more over that loop; a whole build's driver went from 461-485 / 630-661 MB at 20,000 /
    200,000 URLs to 408-409 / 503-504 MB (README, scale table). The option acts only when it and the
    pool are in the environment before pyarrow loads (set after, with the pool chosen by
    ``pa.set_memory_pool``, it changed nothing measurable), so the CLI calls this before it parses
    anything; where pyarrow has loaded already, only the pool is chosen. The option is then taken out of
    the environment again, and the other entry points (the workers' ``quiet_environment()``, on any
    node) do not set it: Ray workers, whose memory is one unit whatever the pool, keep Arrow's defaults
    and do not pay the time. A user's ``JE_ARROW_MALLOC_CONF`` wins everywhere.
    """
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:  # the user's choice (pyarrow read it at import)
        return
    ours = driver and "JE_ARROW_MALLOC_CONF" not in os.environ
    if ours:
        os.environ["JE_ARROW_MALLOC_CONF"] = DECAY
    if "pyarrow" not in sys.modules:
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "jemalloc"
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
        pa.allocate_buffer(1, memory_pool=pool)  # jemalloc starts, reading its options
    except NotImplementedError:  # a build without jemalloc keeps its default
        os.environ.pop("ARROW_DEFAULT_MEMORY_POOL", None)
        return
    finally:
        if ours:
            os.environ.pop("JE_ARROW_MALLOC_CONF", None)
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "jemalloc"
    pa.set_memory_pool(pool)


_LIBC: list = []

# Freed heap a worker may keep from one unit to the next. Below it, trimming hands back pages the next
# unit faults in again at once (a 1,000-sample band shard at 256 px reads 26 MB of images into the heap:
# ~7 ms a unit here to trim and fault them back); above it, one unit's or stage's freed heap is handed
# back rather than carried into the next.
TRIM_SLACK = 64 << 20


def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    return _libc()[0]


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# Blocks at least this large are mapped for themselves and unmapped when freed: the most glibc's own
# sliding threshold (128 KB at first) ever rises to.
MMAP_FROM = 32 << 20
_heap_kept: list[bool] = []


def keep_freed_heap() -> None:
    """From now on this process reuses the heap it frees instead of handing it back and faulting it in
    again: blocks under ``MMAP_FROM`` come from the heap, and up to ``TRIM_SLACK`` free at its top stays.

    For work that makes and drops the same few-MB arrays block after block (the near-copy verification,
    the neighbour search's cells). glibc maps each block over its sliding threshold afresh and trims the
    heap's top past twice that, so every page comes back zeroed through a fault: verifying 262,000
    candidate pairs in a fresh process took 4.5M page faults, 10 s of the kernel's time and 111 µs a
    pair; with these two settings, 9,400 faults and 68 µs (one thread; README, "Object storage and Ray clusters").
    :func:`release_memory` still hands back more than ``TRIM_SLACK`` after each unit. A no-op where the
    C library has no ``mallopt`` (musl, macOS)."""
    mallopt = _libc()[2]
    if _heap_kept or mallopt is None:
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_FROM)
    mallopt(M_TRIM_THRESHOLD, TRIM_SLACK)
    _heap_kept.append(True)


def _free_heap() -> int | None:
    """Bytes free inside the malloc heap, all arenas (glibc's ``mallinfo2().fordblks``: pages already
    handed back count too, until reused), or None where the C library cannot say (glibc before 2.33)."""
    info = _libc()[1]
    return None if info is None else info().fordblks


def _libc() -> tuple:
    if not _LIBC:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [
                (f, ctypes.c_size_t)
                for f in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
            ]

        try:
            libc = ctypes.CDLL(None)
        except OSError:
            libc = None
        info = getattr(libc, "mallinfo2", None)
        if info is not None:
            info.restype = MallInfo2
        _LIBC.extend([getattr(libc, "malloc_trim", None), info, getattr(libc, "mallopt", None)])
    return tuple(_LIBC)


_frozen_modules = 0  # len(sys.modules) when release_memory last froze the heap


def release_memory(freeze: bool = True) -> None:
    """Hand back to the system what a finished unit freed but the allocators kept.

    A Ray worker runs one unit after another, of any stage, and glibc keeps the pages a unit freed
    wherever a live allocation sits above them in the heap; Arrow's jemalloc keeps its freed pages a
    while. So a worker reused after another stage's task carries that task's freed heap into the next
    stage (``bench/scale.py`` saw the shard stage's workers grow with the pool while the shard tasks
    alone did not). Called after every unit a Ray task or actor runs: a cycle collection, Arrow's pool purged,
    and ``malloc_trim(0)``, which since glibc 2.8 also returns free pages inside the heap, once the heap
    holds more than ``TRIM_SLACK`` free: the pages come back zeroed when the next unit needs them.

    The full collection walks every object the collector tracks, the imported modules' too (~80,000 in
    a worker that imported a stage: 20-40 ms here, more than a 1,000-sample band shard's own work at
    256 px). So whenever modules were imported since the last call, what survives the collection is
    frozen (``gc.freeze``: the permanent generation, never walked again) and the next collections walk
    only what later units made. Frozen objects still die by reference count; one in a reference cycle
    that later becomes garbage would stay (the unit in flight as a worker first imports a stage's
    modules is frozen with them), once per import, never per unit. After a failed unit (``freeze``
    false: its traceback's frames may hold its data in a cycle) nothing is frozen.
    """
    import gc

    global _frozen_modules
    gc.collect()
    if freeze and len(sys.modules) != _frozen_modules:
        gc.freeze()
        _frozen_modules = len(sys.modules)
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()
    trim, free = _malloc_trim(), _free_heap()
    if trim is not None and (free is None or free > TRIM_SLACK):
        trim(0)


# Whether this process's __main__ is guarded by ``if __name__ == "__main__"`` (the ``tiers`` CLI sets it):
# worker processes started with spawn import __main__ again, so an unguarded script would run again in
# each. Where it is not known to be, a stage that could start such workers (staging a large URL list's
# files) runs in this process instead.
MAIN_GUARDED = False

RAY_VERBOSE = "CLIP_TIERS_RAY_VERBOSE"


def ray_verbose() -> bool:
    """Whether Ray may print its own INFO lines (``tiers --verbose`` sets this)."""
    return os.environ.get(RAY_VERBOSE) == "1"


@contextlib.contextmanager
def _stderr_without(*patterns: str) -> Iterator[None]:
    """Drop lines holding ``patterns`` from what this process writes to file descriptor 2 meanwhile.

    Ray's C++ core writes to the descriptor itself, past ``sys.stderr``; so the descriptor is pointed at
    a temporary file for the duration and the other lines are passed on afterwards.
    """
    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not any(p in line for p in patterns):
                    sys.stderr.write(line)


def _hush_ray() -> None:
    """Hold Ray's loggers at ERROR, as ``ray.init(logging_level=...)`` does for most of Ray. Ray Data
    configures its own logger when first imported, so it is held too if something imported it; it is
    not imported for that alone (no stage uses it, and the import costs every run ~1.5 CPU-s)."""
    import logging

    names = ["ray"] + (["ray.data"] if "ray.data" in sys.modules else [])
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)


def ray_running() -> bool:
    """Whether this process has Ray started (without importing it when it has not)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Use the running Ray if this process already started one; otherwise start (and later stop) one."""
    quiet_environment()
    import ray

    if ray.is_initialized():
        yield
        return
    level = "INFO" if ray_verbose() else "ERROR"
    # Setting RAY_BACKEND_LOG_LEVEL makes Ray announce it, at INFO, whatever the level.
    with contextlib.nullcontext() if ray_verbose() else _stderr_without("Set ray log level from environment"):
        if address:
            ray.init(address=address, log_to_driver=ray_verbose(), logging_level=level)
        else:
            # "local": a Ray of our own, even when another run on this machine started one (`ray start`,
            # a test cluster): without it ray.init joins whatever /tmp/ray/ray_current_cluster names.
            with lean_start(log_monitor=ray_verbose()):
                ray.init(
                    address="local",
                    num_cpus=num_cpus or os.cpu_count(),
                    include_dashboard=False,
                    log_to_driver=ray_verbose(),
                    configure_logging=True,
                    logging_level=level,
                    _system_config=SOCKET_RETRIES,
                )
    if not ray_verbose():
        _hush_ray()
    try:
        yield
    finally:
        if not address:
            _stop_monitor(ray)
        ray.shutdown()


# A Ray of our own: its raylet connects to its object store's socket as the store's thread opens it, and
# where it lost that race it retried after Ray's default 1,000 ms (2 of 12 starts timed took 1 s longer).
# Every 20 ms instead, as many times more: the same 10 s before it gives up.
SOCKET_RETRIES = {"raylet_client_connect_timeout_milliseconds": 20, "raylet_client_num_connect_attempts": 500}


@contextlib.contextmanager
def lean_start(log_monitor: bool = True) -> Iterator[None]:
    """Within the block, a Ray this process starts for itself starts without the processes nothing of
    ours uses and learns that its raylet is up as soon as it is.

    With ``include_dashboard=False`` Ray still starts its dashboard process as an API server (state and job
    APIs, usage stats), waits ~0.7 s for it to publish its address, and that process probes the cloud
    metadata address (169.254.169.254) on every start. It starts the autoscaler's monitor too, with
    nothing to scale on a node of our own, and a log monitor, which only forwards the workers' output to
    drivers that ask for it (``log_monitor=False``: ours does not). Each is a Python process importing
    Ray (~0.4 CPU-s) while the raylet and the workers start on the same cores; none is started. Then
    ``ray.init`` asks the GCS for the new node through Ray's C++ ``GetNode``, which retries once a
    second; the raylet registers ~0.8 s after it starts, so the answer came at 1 or 2 s. Polling the GCS
    every 20 ms first, the answer comes when the raylet does. All are Ray's private handles: where a Ray
    version lacks them, it starts as before (README, "Annotate")."""
    try:
        import ray._private.node as node
        import ray._private.services as services
    except ImportError:
        yield
        return
    skipped = ["start_api_server", "start_monitor"] + ([] if log_monitor else ["start_log_monitor"])
    if not (all(hasattr(node.Node, name) for name in skipped) and hasattr(services, "get_node")):
        yield
        return
    saved, get_node = {name: getattr(node.Node, name) for name in skipped}, services.get_node

    def registered_first(gcs_address: str, node_id: str):
        node_registered(gcs_address, node_id, timeout=30)
        return get_node(gcs_address, node_id)

    for name in skipped:
        setattr(node.Node, name, lambda self, **kw: None)
    services.get_node = registered_first
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(node.Node, name, method)
        services.get_node = get_node


def node_registered(gcs_address: str, node_id: str, timeout: float) -> bool:
    """Whether node ``node_id`` (hex) is in the GCS's node table at ``gcs_address`` within ``timeout``
    seconds, asking every 20 ms; False at once where Ray's private GCS client cannot ask."""
    try:
        from ray._raylet import GcsClient

        client, deadline = GcsClient(address=gcs_address), time.monotonic() + timeout
        while not any(k.hex() == node_id for k in client.get_all_node_info(timeout=1)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True
    except Exception:  # noqa: BLE001 - an API this Ray lacks, a GCS not up yet: Ray's own retries follow
        return False


def _stop_monitor(ray) -> None:
    """Kill the autoscaler's monitor of a Ray this process started, before ``ray.shutdown``.

    ``ray.shutdown`` stops the GCS first and then the monitor with SIGTERM, whose handler tries to
    report its own death through the GCS that is gone, so Ray waits out its one-second grace and kills
    it: 1.0 of the 1.1-1.35 s every CLI run spent shutting down (README, "Annotate"). On a node of our
    own there is nothing to autoscale and nothing the monitor keeps, so it is killed outright (SIGTERM
    while the GCS is up would broadcast "The autoscaler failed" to the driver). The handle is Ray's
    private node object: where a Ray version has no such thing, nothing is done and shutdown is as before.
    :func:`lean_start` no longer starts the monitor; this is for a Ray whose start it could not trim.
    """
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    for info in (getattr(node, "all_processes", None) or {}).get("monitor", []):
        process = getattr(info, "process", None)
        if process is not None and process.poll() is None:
            process.kill()
            with contextlib.suppress(Exception):
                process.wait(timeout=5)
