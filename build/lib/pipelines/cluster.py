"""Study runs on Ray: ``tiers study ... --ray-address ADDR [--gpus-per-run G | --cpus-per-run N]``.

Each run (one cell of tier x budget x variant, one seed) is one Ray task holding ``G`` GPUs (default
one) or ``N`` CPUs, so a study fills every slot of the cluster: 60 runs on 8 GPUs take 8 at a time.
The driver writes each run's row to ``results.parquet`` as the run finishes, so results and resume
are as in a sequential study: a killed study keeps every finished row, and a run cut short resumes
from its own checkpoints when it is next started.

The run directories (``DIR/runs/HASH``) are written by whichever node runs the task, at the path the
driver names: on a multi-node cluster ``DIR`` must be on storage every node sees (a shared
filesystem). The rows themselves come back to the driver through Ray, so ``results.parquet`` is
complete either way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from curate.core.errors import InputError
from train.plan import PlannedRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RaySlots:
    """Where a study's runs go: the Ray to join (None: start one on this machine) and what one run holds."""

    address: str | None = None
    gpus: float = 1.0  # per run; 0 with cpus set: a CPU run
    cpus: float = 1.0  # per run
    max_retries: int = 2  # a run whose worker or node died is started again (it resumes from its checkpoint)

    def __post_init__(self):
        if self.gpus < 0 or self.cpus <= 0:
            raise InputError(f"a run must hold at least one CPU or GPU (gpus {self.gpus}, cpus {self.cpus})")

    def describe(self) -> str:
        held = f"{self.gpus:g} GPU" if self.gpus else f"{self.cpus:g} CPU"
        return f"each run a Ray task holding {held}"


@contextlib.contextmanager
def session(slots: RaySlots) -> Iterator[int]:
    """Join (or start) Ray and check that one run fits; yields how many runs fit at once. Raises
    :class:`InputError` naming the shortfall before any run starts."""
    from curate.core.runtime import ray_session

    with ray_session(slots.address):
        import ray

        have = ray.cluster_resources()
        gpus, cpus = float(have.get("GPU", 0)), float(have.get("CPU", 0))
        where = f"the Ray cluster at {slots.address}" if slots.address else "the local Ray"
        if slots.gpus > gpus:
            raise InputError(
                f"{where} has {gpus:g} GPUs, a run asks for {slots.gpus:g}; pass --cpus-per-run N to run on CPUs; "
                "nothing was trained"
            )
        if slots.cpus > cpus:
            raise InputError(f"{where} has {cpus:g} CPUs, a run asks for {slots.cpus:g}; nothing was trained")
        fit = min(int(gpus // slots.gpus) if slots.gpus else 1 << 30, int(cpus // slots.cpus))
        log.info(f"{where}: {gpus:g} GPUs, {cpus:g} CPUs; {slots.describe()}: {fit} at once")
        yield fit


def _run_task(runner: Callable[[PlannedRun, Path], dict], run: PlannedRun, run_dir: str, threads: int) -> dict:
    """One run inside a Ray worker. A CPU run's torch uses the CPUs the task holds (workers are reused, so
    it is set each time); a GPU run's is left alone."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return runner(run, Path(run_dir))


def run_all(
    runs: list[PlannedRun],
    runner: Callable[[PlannedRun, Path], dict],
    run_dir: Callable[[PlannedRun], Path],
    on_result: Callable[[PlannedRun, dict], None],
    slots: RaySlots,
) -> None:
    """Run ``runs`` as Ray tasks, calling ``on_result(run, metrics)`` in the driver as each finishes.
    A failed run does not stop the others; once they are done, the first failure is raised."""
    import ray

    task = ray.remote(_run_task).options(num_gpus=slots.gpus, num_cpus=slots.cpus, max_retries=slots.max_retries)
    threads = 0 if slots.gpus else max(1, int(slots.cpus))
    pending = {task.remote(runner, r, str(run_dir(r)), threads): r for r in runs}
    first_error: BaseException | None = None
    done_count = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            run = pending.pop(ref)
            try:
                metrics = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(e.cause, BaseException) else e
                log.error(f"  failed: {run.variant} {run.tier} x {run.samples_seen:,}, seed {run.seed}: {cause}")
                first_error = first_error or cause
                continue
            done_count += 1
            what = f"{run.variant} {run.tier} x {run.samples_seen:,} samples, seed {run.seed}"
            log.info(f"[{done_count}/{len(runs)}] {what}")
            on_result(run, metrics)
    if first_error is not None:
        raise first_error
