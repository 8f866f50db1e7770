"""Scratch files of one node read on another (curate.core.nodefiles), on the session's 3-node Ray cluster."""

from __future__ import annotations

import numpy as np


def test_a_file_is_pulled_to_another_node_in_ranges_once_and_dropped(ray_local, tmp_path):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from curate.core import nodefiles

    data = np.random.default_rng(0).integers(0, 256, 100_003, dtype=np.uint8).tobytes()
    path = tmp_path / "rows.u8"
    path.write_bytes(data)
    origin = nodefiles.this_node()
    other = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != origin)

    @ray.remote(num_cpus=0, max_calls=1, scheduling_strategy=NodeAffinitySchedulingStrategy(other, soft=False))
    def read_there(at: int):
        nodefiles.RANGE = 4096  # 25 ranges, INFLIGHT of them at a time (its worker exits after it)
        local = nodefiles.local(path, origin, len(data))
        with open(local, "rb") as f:
            return str(local), nodefiles.this_node(), f.read()[at:]

    assert nodefiles.local(path, origin, len(data)) == path  # on its own node: the file itself
    assert nodefiles.local(path, None, len(data)) == path  # no origin: nothing to pull
    got = ray.get([read_there.remote(at) for at in (0, 7, 99_000)], timeout=120)  # at once: one pulls
    local = {g[0] for g in got}
    assert len(local) == 1 and local != {str(path)} and {g[1] for g in got} == {other}
    assert [g[2] for g in got] == [data, data[7:], data[99_000:]]
    replica = nodefiles.replica_dir(str(tmp_path), origin)
    assert sorted(p.name for p in replica.iterdir()) == ["rows.u8", "rows.u8.lock"]  # no .part left
    assert (tmp_path / nodefiles.PULLED).exists()
    nodefiles.drop(tmp_path)
    assert not replica.exists()


def test_drop_without_a_pull_starts_no_task(ray_local, tmp_path, monkeypatch):
    import ray

    from curate.core import nodefiles

    monkeypatch.setattr(ray, "remote", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a task started")))
    nodefiles.drop(tmp_path)  # nothing was pulled from here


def test_a_short_read_at_the_origin_is_an_error_not_a_short_replica(tmp_path):
    import pytest

    from curate.core import nodefiles

    (tmp_path / "f").write_bytes(b"x" * 10)
    assert nodefiles.read_range(str(tmp_path / "f"), 2, 8).tobytes() == b"x" * 8
    with pytest.raises(OSError, match="8 bytes at 2, 9 expected"):
        nodefiles.read_range(str(tmp_path / "f"), 2, 9)


def test_a_node_file_is_read_whole_on_another_node_without_a_replica(ray_local, tmp_path):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from curate.core import nodefiles

    data = np.random.default_rng(1).integers(0, 256, 50_001, dtype=np.uint8).tobytes()
    (tmp_path / "part.arrow").write_bytes(data)
    f = nodefiles.NodeFile(str(tmp_path / "part.arrow"))
    assert (f.size, f.origin) == (len(data), nodefiles.this_node()) and f.buffer().to_pybytes() == data
    other = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != f.origin)

    @ray.remote(num_cpus=0, max_calls=1, scheduling_strategy=NodeAffinitySchedulingStrategy(other, soft=False))
    def read_there(f):
        nodefiles.RANGE = 4096
        return f.buffer().to_pybytes(), nodefiles.this_node()

    got, node = ray.get(read_there.remote(f), timeout=120)
    assert got == data and node == other
    assert not nodefiles.replica_dir(str(tmp_path), f.origin).exists()
    assert not (tmp_path / nodefiles.PULLED).exists()  # nothing for drop() to remove
