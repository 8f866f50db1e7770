"""The runner's Ray executors: one task per unit, or a fixed pool of actors (see :mod:`curate.core.runner`).

Each is a set of slots that :func:`curate.core.runner.drain`, the runner's one loop, starts units on
and collects them from: a bounded window in flight, units started in order, a failed attempt's unit put
back at the front of the queue. An actor that dies is replaced before its unit runs again.
"""

from __future__ import annotations

from contextlib import contextmanager

from curate.core import storage

# ``execute`` comes from curate.core.runner, which calls in here: passed, not imported.


class UnitActor:
    """Holds one instance of a stage class (built once: a model loads once per actor) and runs units with it."""

    def __init__(self, cls, init: tuple, opts: dict, execute):
        from curate.core.runtime import quiet_environment

        quiet_environment()
        if opts:
            storage.configure(opts)
        self.instance = cls(*init)
        self.execute = execute

    def run(self, root: str, unit, opts: dict):
        return run_unit(self.execute, root, unit, self.instance, opts)


def run_unit(execute, root: str, unit, fn, opts: dict):
    """One unit in a Ray worker, whose freed memory then goes back to the system: the worker's next unit
    may belong to another stage, which should not carry this one's heap (:func:`release_memory`)."""
    return released_call(execute, root, unit, fn, opts)


def fan_out(fn, jobs, num_cpus: float = 1.0):
    """``fn(*job)`` for each of ``jobs`` as Ray tasks anywhere in the cluster (Ray's default placement:
    this node first, the others as it fills), as many in flight as the cluster has CPUs and one more;
    results in order. Jobs may carry this node's scratch files as :class:`curate.dedup.thumbstore.Spilled`
    (a task on another node reads a replica: :mod:`curate.core.nodefiles`). Called from a Ray task, which
    gives back its own CPU while it waits on them. A task's worker hands back what the task freed
    (:func:`released_call`)."""
    from collections import deque

    import ray

    task = ray.remote(num_cpus=num_cpus, max_retries=1)(released_call)
    width = max(1, int(_cpus() // max(num_cpus, 1e-9))) + 1
    inflight: deque = deque()
    fn_ref = ray.put(fn)
    for job in jobs:
        inflight.append(task.remote(fn_ref, *job))
        if len(inflight) >= width:
            yield ray.get(inflight.popleft())
    while inflight:
        yield ray.get(inflight.popleft())


def released_call(fn, *args):
    """``fn(*args)``, then what it freed handed back to the system (:func:`run_unit`'s reason)."""
    from curate.core.runtime import release_memory

    done = False
    try:
        out, done = fn(*args), True
        return out
    finally:
        release_memory(freeze=done)  # a failed unit's traceback is no heap to keep for good


def _cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@contextmanager
def ray_slots(root: str, units: int, fn, executor, execute):
    """Slots for :func:`curate.core.runner.drain` on Ray (started here unless it is up): one task per
    unit, or a pool of actors (at most one per unit), killed when the units are done."""
    import ray

    from curate.core.runtime import ray_session

    with ray_session():
        if executor.kind == "tasks":
            slots: _RaySlots = _Tasks(ray, root, fn, executor, execute)
        else:
            slots = _Actors(ray, root, fn, executor, execute, units)
        try:
            yield slots
        finally:
            slots.close()


class _RaySlots:
    """What Ray's two executors share: waiting for a unit's object ref, and its result."""

    ray = None

    def finished(self, refs: list) -> list:
        return self.ray.wait(refs, num_returns=1, timeout=0.5)[0]

    def result(self, ref) -> dict:
        return self.ray.get(ref)  # a task's error or a dead worker raises: drain runs the unit again

    def close(self) -> None:
        pass


class _Tasks(_RaySlots):
    """One Ray task per unit, at most ``executor.workers`` in flight (0: twice the cluster's CPUs)."""

    def __init__(self, ray, root: str, fn, executor, execute):
        self.ray, self.root, self.execute, self.opts = ray, root, execute, storage.options()
        self.task = ray.remote(
            num_cpus=executor.num_cpus, num_gpus=executor.num_gpus, max_retries=0, max_calls=executor.max_calls
        )(run_unit)
        self.fn_ref = ray.put(fn)
        self.width = executor.workers or max(2, 2 * _cpus())

    def free(self, inflight: int) -> bool:
        return inflight < self.width

    def start(self, unit):
        return self.task.remote(self.execute, self.root, unit, self.fn_ref, self.opts)


class _Actors(_RaySlots):
    """A fixed pool of :class:`UnitActor`: a unit starts on an idle actor; one that dies is replaced
    before its unit runs again."""

    def __init__(self, ray, root: str, fn, executor, execute, units: int):
        self.ray, self.root, self.opts = ray, root, storage.options()
        actor_cls = ray.remote(num_cpus=executor.num_cpus, num_gpus=executor.num_gpus, max_restarts=0)(UnitActor)
        self.make = lambda: actor_cls.remote(fn, executor.init, self.opts, execute)  # noqa: E731
        size = max(1, min(units, executor.workers or max(1, int(_cpus() // max(executor.num_cpus, 1e-9)))))
        self.idle = [self.make() for _ in range(size)]
        self.busy: dict = {}  # ref -> the actor running it

    def free(self, inflight: int) -> bool:
        return bool(self.idle)

    def start(self, unit):
        actor = self.idle.pop()
        ref = actor.run.remote(self.root, unit, self.opts)
        self.busy[ref] = actor
        return ref

    def result(self, ref) -> dict:
        actor = self.busy.pop(ref)
        try:
            info = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self.idle.append(self.make())  # the dead actor's replacement
            raise
        except Exception:  # the unit failed, the actor lives on
            self.idle.append(actor)
            raise
        self.idle.append(actor)
        return info

    def close(self) -> None:
        for actor in self.idle + list(self.busy.values()):
            self.ray.kill(actor)
