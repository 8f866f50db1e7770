"""The one stage runner: units of work that skip when finished, commit, retry, and run anywhere.

A :class:`Unit` is a name, a fingerprint of its inputs and config, and its outputs (paths relative to
the stage directory). It is finished when its marker (``<stage>/_done/<name>.json``) holds the same
fingerprint and every output exists. :func:`run` hands each unfinished unit to ``fn`` — which writes
the outputs, under :mod:`curate.core.storage` commit rules, and returns what the marker should say —
and writes the marker last, in the process that ran ``fn``. ``fn`` may write the marker itself (the
download stage does, under a lock); the runner then leaves it alone. ``fn`` may return its outputs'
stamps under ``"files"`` (``{output: stamp(output)}``, taken as it wrote them: a writer that digests
its bytes on the way out spares reading them back); the runner stamps the others itself.

Executors (:class:`Executor`): ``local`` (one after another, in this process), ``threads`` (a pool
here: for work that releases the GIL), ``tasks`` (one Ray task per unit, a bounded number in flight,
so a pool of any size holds only a window of futures) and ``actors`` (a fixed pool of Ray actors;
``fn`` is then a class, built once per actor — a model loads once — and called per unit; actors may
hold GPUs). All four are driven by one loop (:func:`drain`) over the executor's slots. A unit whose
attempt raises is tried again up to ``retries`` times (a dead worker or actor included), except for
:class:`~curate.core.errors.InputError`, which is the user's to fix and fails the unit at once;
:class:`Report` names every unit that failed with its last error, one line. Storage options travel
with each unit, so a worker on another node reads and writes the same URLs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from curate.core import integrity, storage, units
from curate.core.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    name: str
    fingerprint: str
    outputs: tuple[str, ...] = ()  # relative to the stage directory
    args: Any = None  # what ``fn`` needs besides the stage directory; must pickle for Ray


@dataclass(frozen=True)
class Executor:
    kind: str = "local"  # local | threads | tasks | actors
    workers: int = 0  # threads; tasks in flight (0: twice the cluster's CPUs); actors (0: one per CPU)
    num_cpus: float = 1.0  # per Ray task or actor
    num_gpus: float = 0.0
    init: tuple = ()  # actors: arguments of ``fn``'s constructor
    # tasks: units a Ray worker process runs before it exits (0: no limit). 1 gives a unit whose heap
    # grows with the pool (the dedup task) a process of its own, so no later stage's unit runs in it.
    max_calls: int = 0

    def __post_init__(self):
        if self.kind not in ("local", "threads", "tasks", "actors"):
            raise ValueError(f"executor kind must be local, threads, tasks or actors, not {self.kind!r}")


@dataclass
class Report:
    ran: dict[str, dict] = field(default_factory=dict)  # unit -> what fn returned, for units run now
    skipped: list[str] = field(default_factory=list)  # finished before
    failed: dict[str, str] = field(default_factory=dict)  # unit -> last error, one line

    def raise_failures(self, stage: str, noun: str = "unit") -> None:
        """One :class:`InputError` naming every failed unit (the way a stage ends when some did)."""
        if self.failed:
            raise InputError(f"{stage}: " + "; ".join(f"{noun} {k}: {v}" for k, v in sorted(self.failed.items())))


def stamp(url: str) -> dict:
    """What a marker records of an output: its size, and locally its XXH3-128 digest (memory speed, and the
    file is hot in the page cache just after it was written). An object in a store is written whole or
    not at all and checked on upload by the store itself, so its size is what a rerun compares."""
    if storage.is_local(url):
        return integrity.stamp(storage.local_path(url))
    return {"size": storage.size(url)}


def _damage(url: str, recorded: dict | None) -> str | None:
    """What is wrong with an output compared with its stamp, or None (no stamp: existence only)."""
    if storage.is_local(url):
        return integrity.check_file(storage.local_path(url), recorded)
    return size_problem(url, recorded)


def size_problem(url: str, recorded: dict | None) -> str | None:
    """``url``'s size against its stamp: "missing", "N bytes, M written", or None (no stamp: existence only)."""
    try:
        size = storage.size(url)
    except FileNotFoundError:
        return "missing"
    if recorded and "size" in recorded and size != recorded["size"]:
        return f"{size} bytes, {recorded['size']} written"
    return None


def finished(root: str, unit: Unit, markers: set[str] | None = None) -> bool:
    """Whether ``unit``'s marker holds its fingerprint and every output is still what was written (size and,
    on local disk, digest: a truncated or bit-flipped output makes the unit run again)."""
    if markers is not None and unit.name not in markers:
        return False
    marker = units.read_marker(root, unit.name)
    if not marker or marker.get("fingerprint") != unit.fingerprint:
        return False
    files = marker.get("files", {})
    for o in unit.outputs:
        problem = _damage(storage.join(root, o), files.get(o))
        if problem is not None:
            if problem != "missing":
                log.warning(f"{storage.join(root, o)}: {problem}; {unit.name} runs again")
            return False
    return True


def pending(root: str, todo: list[Unit]) -> tuple[list[Unit], list[str]]:
    """(units to run, names of finished ones); stale markers of units to run are removed first."""
    markers = units.done_units(root)
    run, done = [], []
    for u in todo:
        if finished(root, u, markers):
            done.append(u.name)
        else:
            if u.name in markers:
                units.clear_marker(root, u.name)
            run.append(u)
    return run, done


def execute(root: str, unit: Unit, fn: Callable, opts: dict | None = None) -> dict:
    """Run one unit where this is called (a worker) and mark it done; returns what ``fn`` returned."""
    if opts is not None and opts != storage.options():
        storage.configure(opts)
    info = dict(fn(root, unit) or {})
    given = info.pop("files", None) or {}  # stamps fn took as it wrote (the same values, no reading back)
    marker = units.read_marker(root, unit.name)
    if not (marker and marker.get("fingerprint") == unit.fingerprint):
        files = {o: given.get(o) or stamp(storage.join(root, o)) for o in unit.outputs}
        units.mark_done(root, unit.name, {**info, "files": files, "fingerprint": unit.fingerprint})
    return info


def run(
    root: str,
    todo: list[Unit],
    fn: Callable,
    executor: Executor = Executor(),
    *,
    retries: int = 0,
    desc: str | None = None,
    progress: bool = True,
    on_done: Callable[[Unit, dict], None] | None = None,
    poll: Callable[[], None] | None = None,
    prepare: Callable[[Unit], Unit] | None = None,
) -> Report:
    """Run every unfinished unit of ``todo`` with ``fn(root, unit) -> dict`` on ``executor``.

    ``on_done(unit, info)`` is called in this process as each unit finishes; ``poll()`` every half
    second while units run (a progress bar that reads workers' partial progress); ``prepare(unit)``, as
    each unit starts, gives the unit ``fn`` gets (what only a running unit needs, such as a band shard's
    packed rows, is then held for the units in flight, not for every unit at once).
    """
    root = storage.normalise(root)
    if storage.protocol(root) == "memory" and executor.kind in ("tasks", "actors"):
        # memory:// lives in this process only: a worker elsewhere would write into its own memory.
        fn = fn(*executor.init) if executor.kind == "actors" else fn
        executor = Executor("local")
    todo_now, skipped = pending(root, todo)
    report = Report(skipped=skipped)
    if not todo_now:
        return report
    from tqdm import tqdm

    bar = tqdm(total=len(todo_now), desc=desc, unit="unit", disable=not progress or desc is None)

    def done(unit: Unit, info: dict) -> None:
        report.ran[unit.name] = info
        bar.update(1)
        if on_done is not None:
            on_done(unit, info)

    try:
        with _slots(root, todo_now, fn, executor) as slots:
            drain(todo_now, slots, retries, done, report, None if executor.kind == "local" else poll, prepare)
    finally:
        bar.close()
    return report


def one_line(e: BaseException) -> str:
    """The last non-empty line of an error's message (Ray wraps a worker's traceback around it)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and cause is not e:
        e = cause
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:500]


def settle(unit: Unit, error: BaseException, attempts: dict[str, int], retries: int, report: Report) -> bool:
    """Record a failed attempt; True when the unit should be tried again."""
    attempts[unit.name] = attempts.get(unit.name, 0) + 1
    if not isinstance(error, InputError) and attempts[unit.name] <= retries:
        return True
    suffix = f" (after {attempts[unit.name]} attempts)" if attempts[unit.name] > 1 else ""
    report.failed[unit.name] = one_line(error) + suffix
    return False


def drain(todo: list[Unit], slots, retries: int, done, report: Report, poll=None, prepare=None) -> None:
    """The one loop every executor runs: start units in order while ``slots`` has room, take each finished
    one's result, and put a unit whose attempt failed back at the front of the queue (:func:`settle`).

    ``slots`` (:class:`_Here`, :class:`_Threads`, :mod:`curate.core.raypool`'s) says whether another unit
    may start (``free(in_flight)``), starts one (``start(unit)``: a handle), waits a moment for some to
    finish (``finished(handles)``) and gives a finished one's result or raises its error (``result``).
    Only a bounded window of units is ever in flight, so a pool of a million units never holds a million
    futures. ``prepare`` (if given) makes each unit as it starts: ``done`` and a retry get the unit as queued."""
    attempts: dict[str, int] = {}
    queue: deque[Unit] = deque(todo)
    inflight: dict = {}
    while queue or inflight:
        while queue and slots.free(len(inflight)):
            unit = queue.popleft()
            inflight[slots.start(unit if prepare is None else prepare(unit))] = unit
        if not inflight:  # units wait and none can start: the executor lost its slots (an actor not replaced)
            raise RuntimeError(f"the runner has {len(queue)} units to run and no slot to run them on")
        for handle in slots.finished(list(inflight)):
            unit = inflight.pop(handle)
            try:
                info = slots.result(handle)
            except Exception as e:  # noqa: BLE001 - any failure of a unit is the unit's; it runs again or is named
                if settle(unit, e, attempts, retries, report):
                    queue.appendleft(unit)
                continue
            done(unit, info)
        if poll is not None:
            poll()


class _Outcome:
    """A unit run at once, here: its result or its error (a handle of :class:`_Here`)."""

    def __init__(self, run: Callable[[], dict]):
        self.info, self.error = None, None
        try:
            self.info = run()
        except Exception as e:  # noqa: BLE001 - raised again by result(), where drain settles it
            self.error = e


class _Here:
    """Units one after another in this process, each run as it starts."""

    def __init__(self, root: str, fn: Callable):
        self.root, self.fn = root, fn

    def free(self, inflight: int) -> bool:
        return inflight == 0

    def start(self, unit: Unit) -> _Outcome:
        return _Outcome(lambda: execute(self.root, unit, self.fn))

    def finished(self, handles: list) -> list:
        return handles

    def result(self, outcome: _Outcome) -> dict:
        if outcome.error is not None:
            raise outcome.error
        return outcome.info


class _Threads:
    """Units on a thread pool here, twice as many queued as it has threads."""

    def __init__(self, pool: ThreadPoolExecutor, width: int, root: str, fn: Callable):
        self.pool, self.width, self.root, self.fn = pool, width, root, fn

    def free(self, inflight: int) -> bool:
        return inflight < 2 * self.width

    def start(self, unit: Unit):
        return self.pool.submit(execute, self.root, unit, self.fn)

    def finished(self, handles: list) -> set:
        return wait(handles, timeout=0.5, return_when=FIRST_COMPLETED)[0]

    def result(self, future) -> dict:
        return future.result()


@contextlib.contextmanager
def _slots(root: str, todo: list[Unit], fn: Callable, executor: Executor):
    """The slots :func:`drain` runs ``executor``'s units on, for as long as it runs them."""
    if executor.kind == "local":
        yield _Here(root, fn)
    elif executor.kind == "threads":
        width = max(1, executor.workers or 4)
        with ThreadPoolExecutor(width) as pool:
            yield _Threads(pool, width, root, fn)
    else:
        from curate.core.raypool import ray_slots

        with ray_slots(root, len(todo), fn, executor, execute) as slots:
            yield slots


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
