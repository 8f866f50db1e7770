"""Stopping a Ray of our own: the autoscaler's monitor is killed before ``ray.shutdown`` stops the GCS
(after which the monitor's SIGTERM handler hung until Ray's one-second grace ran out)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from curate.core.runtime import _stop_monitor

# A monitor as it behaves once the GCS is gone: SIGTERM does not end it.
HANGS_ON_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, lambda *a: time.sleep(60)); time.sleep(60)"


def fake_ray(processes: dict) -> SimpleNamespace:
    node = SimpleNamespace(all_processes=processes)
    return SimpleNamespace(_private=SimpleNamespace(worker=SimpleNamespace(_global_node=node)))


def test_the_monitor_is_killed_at_once_and_nothing_else_is_touched():
    monitor = subprocess.Popen([sys.executable, "-c", HANGS_ON_SIGTERM])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        processes = {"monitor": [SimpleNamespace(process=monitor)], "raylet": [SimpleNamespace(process=other)]}
        _stop_monitor(fake_ray(processes))
        assert monitor.poll() is not None  # reaped on return: no grace waited out
        assert other.poll() is None  # the raylet and the rest are ray.shutdown's to stop, in its order
    finally:
        for p in (monitor, other):
            p.kill()
            p.wait()


def test_without_rays_private_node_nothing_is_done():
    _stop_monitor(SimpleNamespace())  # a Ray version without the private handle
    _stop_monitor(fake_ray({}))  # a node started without a monitor
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    _stop_monitor(fake_ray({"monitor": [SimpleNamespace(process=done)]}))  # already exited


def test_the_installed_ray_has_the_handle_we_use():
    """If a Ray upgrade renames these, shutdown silently goes back to ~1 s slower: fail here instead."""
    import ray._private.node
    import ray._private.ray_constants
    import ray._private.worker

    assert hasattr(ray._private.worker, "_global_node")
    assert ray._private.ray_constants.PROCESS_TYPE_MONITOR == "monitor"
    assert "self.all_processes" in Path(ray._private.node.__file__).read_text()


def test_a_node_is_seen_registered_as_soon_as_the_gcs_has_it(ray_local):
    """The poll a Ray of our own starts with (``runtime.lean_start``) works against the installed Ray: the
    session's node is found at once, a made-up one is not. (A Ray without the private GCS client answers
    False, and its own one-second retries take over.)"""
    import time

    import ray

    from curate.core.runtime import node_registered

    gcs = ray._private.worker._global_node.gcs_address
    t0 = time.monotonic()
    assert node_registered(gcs, ray.get_runtime_context().get_node_id(), timeout=10)
    assert time.monotonic() - t0 < 2
    assert not node_registered(gcs, "ab" * 28, timeout=0.2)


LEAN = """
import ray
from curate.core.runtime import quiet_environment, ray_session
quiet_environment()
with ray_session(num_cpus=1):
    print(" ".join(sorted(ray._private.worker._global_node.all_processes)))
    print(ray.get(ray.remote(lambda: 7).remote()))
    config = ray._private.state.state.get_system_config()
    print(config["raylet_client_connect_timeout_milliseconds"], config["raylet_client_num_connect_attempts"])
"""


def test_a_ray_of_our_own_starts_without_the_processes_we_do_not_use_and_runs_tasks():
    """No dashboard process (it held ray.init ~0.7 s and probed the cloud metadata address each start), no
    autoscaler monitor, no log monitor (the CLI's driver takes no worker output); the raylet retries its
    sockets every 20 ms (a lost race cost a second)."""
    from curate.core.runtime import SOCKET_RETRIES

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    processes, result, retries = out.stdout.split("\n")[:3]
    assert {"raylet", "gcs_server"} <= set(processes.split())
    assert not {"dashboard", "monitor", "log_monitor"} & set(processes.split()), processes
    assert result == "7"
    assert retries.split() == [str(v) for v in SOCKET_RETRIES.values()]


def test_a_verbose_ray_keeps_its_log_monitor_and_nothing_is_left_patched():
    """With ``--verbose`` the workers' output reaches the terminal through the log monitor, so it starts;
    after the block Ray's own start methods are back."""
    import ray._private.node as node

    from curate.core.runtime import lean_start

    before = {n: getattr(node.Node, n) for n in ("start_api_server", "start_monitor", "start_log_monitor")}
    with lean_start(log_monitor=True):
        assert node.Node.start_log_monitor is before["start_log_monitor"]
        assert node.Node.start_monitor is not before["start_monitor"]
    with lean_start(log_monitor=False):
        assert node.Node.start_log_monitor is not before["start_log_monitor"]
    assert {n: getattr(node.Node, n) for n in before} == before
