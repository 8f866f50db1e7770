"""Starting and stopping Ray, once per CLI run or test session.

Ray costs ~3 s and ~0.7 GB per start, so a process starts it once (``ray_session``) and every stage
inside reuses it. Locally it gets this machine's cores and no dashboard; ``address`` joins a cluster.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def quiet_environment() -> None:
    """The environment defaults every entry point sets once: no telemetry, no update checks, our bars only."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # Ray Data's progress bars would fight with ours.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Use the running Ray if this process already started one; otherwise start (and later stop) one."""
    quiet_environment()
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=True,
            logging_level="ERROR",
        )
    try:
        yield
    finally:
        ray.shutdown()
