"""bench/procmon.py, the benches' process-tree watcher: a driver's figures are its own.

wait4's rusage of a child covers the descendants it reaped too (its ru_maxrss is the largest of them,
its CPU their sum), so a driver that starts and reaps a big child must not be reported at the child's size,
nor its CPU counted twice.
"""

from __future__ import annotations

import sys

from bench.procmon import run_watched

# A small driver that runs a child touching 300 MB and burning ~0.5 CPU-s, and reaps it.
DRIVER = (
    "import subprocess, sys\n"
    "child = 'import time\\nb = bytearray(300 * 2**20)\\nb[::4096] = bytes(len(b) // 4096)\\n"
    "t = time.process_time()\\nwhile time.process_time() - t < 0.5: pass\\ntime.sleep(0.5)'\n"
    "subprocess.run([sys.executable, '-c', child], check=True)\n"
)


def test_the_driver_is_not_charged_with_the_children_it_reaped():
    rc, _, stats, pid = run_watched([sys.executable, "-c", DRIVER], interval=0.05)
    assert rc == 0
    driver_mb = stats.driver_peak(pid) / 2**20
    child_mb = max(m for p, (_, m) in stats.peak.items() if p != pid) / 2**20
    assert driver_mb < 150 and child_mb > 290, (driver_mb, child_mb)
    assert stats.reaped[0] / 2**20 > 290  # wait4's view: the largest of the driver and what it reaped
    child_cpu = max(c for p, c in stats.cpu.items() if p != pid)
    assert child_cpu > 0.45  # the child's half second, seen by sampling it
    assert stats.cpu[pid] < 0.4  # the driver's own CPU: the child's half second is not counted again
    assert stats.cpu_seconds == sum(stats.cpu.values()) >= child_cpu


# A driver whose one worker (named as Ray names them) holds 200 MB in its first phase and frees it in
# the second: the worker's VmHWM keeps 200 MB, its RSS per phase does not.
PHASES = (
    "import subprocess, sys, time\n"
    "child = 'import sys, time\\nb = bytearray(200 * 2**20)\\nb[::4096] = bytes(len(b) // 4096)\\n"
    'print("a", flush=True)\\ntime.sleep(0.4)\\ndel b\\nprint("b", flush=True)\\ntime.sleep(0.4)\'\n'
    "subprocess.run(['ray::worker', '-c', child], executable=sys.executable, check=True)\n"
)


def test_a_workers_rss_is_told_apart_by_phase():
    from bench.procmon import TreeStats

    stats = TreeStats(phase="start")

    def on_line(_t: float, line: str) -> None:
        stats.phase = {"a": "first", "b": "second"}.get(line, stats.phase)

    rc, _, stats, pid = run_watched([sys.executable, "-c", PHASES], interval=0.05, on_line=on_line, stats=stats)
    assert rc == 0
    _, worker_peak = stats.largest_worker(pid)
    by_phase = {k: v / 2**20 for k, v in stats.worker_rss_by_phase().items()}
    assert worker_peak / 2**20 > 190 and by_phase["first"] > 190, by_phase
    assert by_phase["second"] < 100, by_phase
    anon = {k: v / 2**20 for k, v in stats.worker_anon_by_phase().items()}
    assert anon["first"] > 190 and anon["second"] < 100, anon  # a bytearray is anonymous memory
    growth = {k: v / 2**20 for k, v in stats.worker_growth_by_phase().items()}
    assert growth.get("second", 0) < 20, growth  # the second phase added nothing to what the first left
    assert "start" not in growth  # the worker started in it: its start-up is no growth of a task
    history = stats.largest_worker_history()
    assert history["second"][-1] == "first" and history["first"] in ([], ["start"]), history


def test_a_worker_sampled_after_it_exited_is_still_a_worker():
    """Exited but not yet reaped, a process's command line reads empty and its name falls back to the
    executable's: the worker must keep its name (CI on a loaded machine saw its peak filed as no worker's)."""
    from bench.procmon import TreeStats

    stats = TreeStats(phase="first")
    mb = 2**20
    stats.record(7, ("ray::worker -c ...", 210 * mb, 0.1, 205 * mb, 200 * mb, 5 * mb, 0), "first")
    stats.record(7, ("python3", 210 * mb, 0.2, 0, 0, 0, 0), "second")  # a zombie's sample
    assert stats.largest_worker(1) == ("ray::worker -c ...", 210 * mb)
    assert stats.worker_rss_by_phase() == {"first": 205 * mb, "second": 0}
