"""The runner's Ray executors: one task per unit, or a fixed pool of actors (see :mod:`curate.core.runner`).

Both keep a bounded window of units in flight (a pool of a million units never holds a million
futures), start units in order, and put a unit whose attempt failed back at the front of the queue.
An actor that dies is replaced before its unit runs again.
"""

from __future__ import annotations

from collections import deque

from curate.core import storage

# ``execute`` and ``settle`` come from curate.core.runner, which calls in here: passed, not imported.


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
    from curate.core.runtime import release_memory

    try:
        return execute(root, unit, fn, opts)
    finally:
        release_memory()


def _cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def run_ray(root, todo, fn, executor, retries, done, report, poll, execute, settle) -> None:
    import ray

    from curate.core.runtime import ray_session

    with ray_session():
        run = _run_tasks if executor.kind == "tasks" else _run_actors
        run(ray, root, todo, fn, executor, retries, done, report, poll, execute, settle)


def _run_tasks(ray, root, todo, fn, executor, retries, done, report, poll, execute, settle) -> None:
    opts = storage.options()
    task = ray.remote(num_cpus=executor.num_cpus, num_gpus=executor.num_gpus, max_retries=0)(run_unit)
    fn_ref = ray.put(fn)
    slots = executor.workers or max(2, 2 * _cpus())
    queue, inflight, attempts = deque(todo), {}, {}
    while queue or inflight:
        while queue and len(inflight) < slots:
            unit = queue.popleft()
            inflight[task.remote(execute, root, unit, fn_ref, opts)] = unit
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
        for ref in ready:
            unit = inflight.pop(ref)
            try:
                info = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a task error or a dead worker: the unit runs again
                if settle(unit, e, attempts, retries, report):
                    queue.appendleft(unit)
                continue
            done(unit, info)
        if poll is not None:
            poll()


def _run_actors(ray, root, todo, fn, executor, retries, done, report, poll, execute, settle) -> None:
    opts = storage.options()
    actor_cls = ray.remote(num_cpus=executor.num_cpus, num_gpus=executor.num_gpus, max_restarts=0)(UnitActor)
    size = max(1, min(len(todo), executor.workers or max(1, int(_cpus() // max(executor.num_cpus, 1e-9)))))
    idle = [actor_cls.remote(fn, executor.init, opts, execute) for _ in range(size)]
    queue, inflight, attempts = deque(todo), {}, {}
    try:
        while queue or inflight:
            while queue and idle:
                unit, actor = queue.popleft(), idle.pop()
                inflight[actor.run.remote(root, unit, opts)] = (unit, actor)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
            for ref in ready:
                unit, actor = inflight.pop(ref)
                try:
                    info = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    idle.append(actor_cls.remote(fn, executor.init, opts, execute))  # the dead actor's replacement
                    if settle(unit, e, attempts, retries, report):
                        queue.appendleft(unit)
                    continue
                except Exception as e:  # noqa: BLE001 - the unit failed, the actor lives on
                    idle.append(actor)
                    if settle(unit, e, attempts, retries, report):
                        queue.appendleft(unit)
                    continue
                idle.append(actor)
                done(unit, info)
            if poll is not None:
                poll()
    finally:
        for actor in idle + [a for _, a in inflight.values()]:
            ray.kill(actor)
