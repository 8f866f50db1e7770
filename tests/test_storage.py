"""Storage URLs and the unit runner: the same helpers and the same commit rules on local disk, memory:// and S3
(moto's server through s3fs, as a real bucket), and units that skip, retry and fail by name on every executor."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.core import runner, storage, units
from curate.core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "memory", "s3"])
def where(request, tmp_path):
    """A fresh directory URL on each kind of store."""
    if request.param == "local":
        return str(tmp_path / "d")
    if request.param == "memory":
        return f"memory://t-{uuid.uuid4().hex[:8]}/d"
    bucket = request.getfixturevalue("bucket")
    return f"{bucket}/d"


def test_helpers_read_what_they_wrote_on_every_store(where):
    a = storage.join(where, "sub", "a.bin")
    storage.write_bytes(a, bytes(range(256)) * 4)
    storage.write_json(storage.join(where, "sub", "b.json"), {"x": 1})
    storage.write_parquet(pa.table({"k": [1, 2, 3]}), storage.join(where, "t.parquet"))
    assert storage.exists(a) and storage.isfile(a) and storage.isdir(storage.join(where, "sub"))
    assert storage.listdir(storage.join(where, "sub")) == ["a.bin", "b.json"]
    assert storage.listdir(storage.join(where, "nothing")) == []
    assert [storage.name(u) for u in storage.glob(where, "sub/*.json")] == ["b.json"]
    assert storage.read_bytes(a, 10, 20) == bytes(range(10, 20))
    assert storage.read_ranges(a, [(0, 3), (300, 2)]) == [bytes([0, 1, 2]), bytes([44, 45])]
    assert storage.read_json(storage.join(where, "sub", "b.json")) == {"x": 1}
    assert storage.read_parquet(storage.join(where, "t.parquet")).column("k").to_pylist() == [1, 2, 3]
    size, version = storage.stamp(a)
    assert size == 1024
    storage.write_bytes(a, b"other")
    assert storage.stamp(a) != [size, version]
    with storage.local_copy(a) as p:
        assert Path(p).read_bytes() == b"other"
    storage.remove(a)
    storage.remove(a)  # twice: nothing there is fine
    assert not storage.exists(a)


def test_an_output_that_fails_leaves_nothing_and_one_that_succeeds_appears_whole(where):
    final = storage.join(where, "out.bin")
    with pytest.raises(RuntimeError):
        with storage.output(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not storage.exists(final)
    with storage.output(final) as tmp:
        tmp.write_bytes(b"whole")
    assert storage.read_bytes(final) == b"whole"
    if storage.is_local(where):
        assert not [p for p in Path(where).iterdir() if p.name.endswith(".tmp")]


class Writer:
    """A unit function that writes its output, failing ``fail`` times first (picklable, for Ray)."""

    def __init__(self, fail: int = 0, error=RuntimeError):
        self.fail, self.error = fail, error
        self.calls: dict[str, int] = {}

    def __call__(self, root: str, unit: runner.Unit) -> dict:
        n = self.calls[unit.name] = self.calls.get(unit.name, 0) + 1
        if n <= self.fail:
            raise self.error(f"attempt {n} of {unit.name} failed")
        storage.write_text(storage.join(root, unit.outputs[0]), f"{unit.name}:{unit.args}")
        return {"wrote": unit.args}


def _units(k: int = 3, fp: str = "a") -> list[runner.Unit]:
    return [runner.Unit(f"u{i}", fp, outputs=(f"u{i}.txt",), args=i) for i in range(k)]


def test_runner_skips_finished_units_and_reruns_changed_or_damaged_ones(where):
    fn = Writer()
    rep = runner.run(where, _units(), fn, progress=False)
    assert sorted(rep.ran) == ["u0", "u1", "u2"] and not rep.failed
    marker = units.read_marker(where, "u1")
    assert marker["wrote"] == 1 and marker["fingerprint"] == "a" and marker["files"]["u1.txt"]["size"] == 4
    assert runner.run(where, _units(), fn, progress=False).skipped == ["u0", "u1", "u2"]
    storage.remove(storage.join(where, "u2.txt"))  # an output gone: the unit is not finished
    changed = [*_units(2, fp="b"), _units()[2]]  # a new fingerprint for u0 and u1
    rep = runner.run(where, changed, fn, progress=False)
    assert sorted(rep.ran) == ["u0", "u1", "u2"]
    assert units.read_marker(where, "u0")["fingerprint"] == "b"


def test_runner_retries_then_names_the_unit_and_never_retries_bad_input(tmp_path):
    rep = runner.run(str(tmp_path), _units(2), Writer(fail=1), retries=1, progress=False)
    assert sorted(rep.ran) == ["u0", "u1"]
    rep = runner.run(str(tmp_path / "b"), _units(1), Writer(fail=5), retries=2, progress=False)
    assert rep.failed == {"u0": "attempt 3 of u0 failed (after 3 attempts)"}
    assert not units.is_done(tmp_path / "b", "u0")
    fn = Writer(fail=5, error=InputError)
    rep = runner.run(str(tmp_path / "c"), _units(1), fn, runner.Executor("threads", 2), retries=3, progress=False)
    assert fn.calls == {"u0": 1} and "u0" in rep.failed
    with pytest.raises(InputError, match="stage: unit u0: attempt 1 of u0 failed"):
        rep.raise_failures("stage")


def test_runner_prepares_each_unit_as_it_starts_and_again_for_a_retry(tmp_path):
    """``prepare`` makes the unit ``fn`` gets as it starts, not all of them up front; ``on_done`` and a
    retry see the unit as queued (a band shard's packed rows are made again for its next attempt)."""
    events = []

    def prepare(unit: runner.Unit) -> runner.Unit:
        events.append(("prepare", unit.args))
        return dataclasses.replace(unit, args=f"prepared {unit.args}")

    rep = runner.run(
        str(tmp_path),
        _units(5),
        Writer(fail=1),
        runner.Executor("threads", 2),
        retries=1,
        progress=False,
        prepare=prepare,
        on_done=lambda u, info: events.append(("done", (u.args, info["wrote"]))),
    )
    assert sorted(rep.ran) == [f"u{i}" for i in range(5)] and not rep.failed
    assert sorted(a for e, a in events if e == "prepare") == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # one per attempt
    assert sorted(a for e, a in events if e == "done") == [(i, f"prepared {i}") for i in range(5)]
    assert (tmp_path / "u3.txt").read_text() == "u3:prepared 3"
    assert events.index(("prepare", 4)) > events.index(next(e for e in events if e[0] == "done"))


@pytest.mark.parametrize("kind", ["tasks", "actors"])
def test_a_ray_worker_that_dies_costs_its_unit_an_attempt_not_the_run(tmp_path, ray_local, kind):
    """A Ray worker whose process dies mid-unit (a segfault, the OOM killer): the unit runs again on
    another (an actor is replaced first), the other units are untouched, and nothing is reported failed."""

    class DiesOnce:  # defined here, so Ray ships it by value
        def __init__(self, *init):
            pass

        def __call__(self, root: str, unit: runner.Unit) -> dict:
            mark = Path(root) / f"died-{unit.name}"
            if unit.name == "u1" and not mark.exists():
                mark.write_text("once")
                os._exit(1)
            storage.write_text(storage.join(root, unit.outputs[0]), unit.name)
            return {"pid": os.getpid()}

    fn = DiesOnce if kind == "actors" else DiesOnce()
    # One slot: a dead actor not replaced would leave no slot at all, which the runner raises on.
    rep = runner.run(str(tmp_path), _units(3), fn, runner.Executor(kind, workers=1), retries=1, progress=False)
    assert sorted(rep.ran) == ["u0", "u1", "u2"] and not rep.failed
    assert (tmp_path / "died-u1").exists() and all(units.is_done(tmp_path, f"u{i}") for i in range(3))


def test_a_task_with_max_calls_1_has_a_worker_of_its_own_that_exits(tmp_path, ray_local):
    """The dedup task's heap grows with the pool: its worker must not live on to run a later stage's units."""

    class Pid:
        def __call__(self, root: str, unit: runner.Unit) -> dict:
            storage.write_text(storage.join(root, unit.outputs[0]), unit.name)
            return {"pid": os.getpid()}

    # One at a time, on three nodes of one CPU: four units in reused workers would share a process.
    rep = runner.run(str(tmp_path), _units(4), Pid(), runner.Executor("tasks", 1, max_calls=1), progress=False)
    pids = {info["pid"] for info in rep.ran.values()}
    assert len(pids) == 4 and os.getpid() not in pids

    def alive() -> set[int]:
        def ray_worker(pid: int) -> bool:
            try:
                return "ray::" in Path(f"/proc/{pid}/cmdline").read_text()
            except OSError:  # gone
                return False

        return {p for p in pids if ray_worker(p)}

    deadline = time.monotonic() + 30
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive()


@pytest.mark.parametrize("kind", ["tasks", "actors"])
def test_runner_on_the_ray_cluster_writes_from_every_node(kind, ray_local, bucket):
    import ray

    root = f"{bucket}/{kind}"
    todo = _units(6)
    # Actors get the class and build it once each; tasks get the instance.
    ex = runner.Executor(kind, init=(0,)) if kind == "actors" else runner.Executor(kind)
    fn = Writer if kind == "actors" else Writer()
    rep = runner.run(root, todo, fn, ex, progress=False)
    assert sorted(rep.ran) == [u.name for u in todo] and not rep.failed
    assert all(storage.read_text(f"{root}/{u.name}.txt") == f"{u.name}:{u.args}" for u in todo)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 3


def test_bad_stores_are_one_line_naming_the_url_before_any_work(s3_server, bucket, tmp_path, monkeypatch):
    """Unreachable endpoint, missing bucket, refused credentials: exit 2, one line, nothing written."""
    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a\n")

    def tiers(*args, env=None):
        e = {**os.environ, **(env or {})}
        cmd = [sys.executable, "-m", "pipelines.cli", *args]
        return subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=120)

    dead = tiers("build", str(urls), "--out", f"{bucket}/x", env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    missing = tiers("build", str(urls), "--out", "s3://no-such-bucket-here/x")
    unread = tiers("build", "s3://no-such-bucket-here/urls.csv", "--out", str(tmp_path / "out"))
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # this server now checks keys
    refused = tiers("check", f"{bucket}/urls.csv", env={"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "x"})
    monkeypatch.undo()
    for res, url, words in [
        (dead, f"{bucket}/x", "cannot reach the storage endpoint http://127.0.0.1:9"),
        (missing, "s3://no-such-bucket-here/x", "no such bucket"),
        (unread, "s3://no-such-bucket-here/urls.csv", "no such bucket"),
        (refused, f"{bucket}/urls.csv", "access refused"),
    ]:
        err = res.stderr.strip()
        assert res.returncode == 2 and err.count("\n") == 0, err
        assert url in err and words in err, err
    assert storage.listdir(bucket) == []  # nothing written, not even a probe
    assert not (tmp_path / "out").exists()  # an unreadable URL list leaves --out untouched


def test_columns_of_a_parquet_in_a_bucket_are_read_without_read_ahead(bucket, monkeypatch):
    """A build reads samples.parquet's metadata columns back a column at a time: fsspec's read-ahead cache
    fetched a 50 MB block beside each column chunk (the driver of a 200,000-URL build into S3 peaked at
    1.1 GB, against 0.44 locally)."""
    import s3fs

    from curate.core import batches

    url = f"{bucket}/wide.parquet"
    n = 2000
    table = pa.table({"small": pa.array(range(n)), "big": pa.array([os.urandom(8192) for _ in range(n)])})
    storage.write_parquet(table, url)
    fetched = []
    real = s3fs.core.S3File._fetch_range
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", lambda f, a, b: fetched.append(b - a) or real(f, a, b))
    assert batches.read_columns(url, ["small"]).column("small").to_pylist() == list(range(n))
    assert sum(fetched) < 1 << 20  # the 16 MB column beside it is not read


def test_an_upload_to_a_bucket_holds_a_few_parts_not_the_file(bucket, tmp_path, monkeypatch):
    """s3fs read a file under 100 MB whole, and a larger one 10 parts of 50 MB at a time: the driver of a
    200,000-URL build into S3 peaked at 1.1 GB uploading samples.parquet. Parts of 16 MB, 4 at a time."""
    import s3fs

    seen = []
    real = s3fs.core.S3FileSystem._upload_file_part_concurrent

    async def upload(fs, bucket_, key, mpu, f0, chunksize, callback=None, max_concurrency=None):
        seen.append((chunksize, max_concurrency))
        return await real(fs, bucket_, key, mpu, f0, chunksize, max_concurrency=max_concurrency)

    monkeypatch.setattr(s3fs.core.S3FileSystem, "_upload_file_part_concurrent", upload)
    data = os.urandom(40 << 20)
    (tmp_path / "big").write_bytes(data)
    storage.put(tmp_path / "big", f"{bucket}/big")
    assert seen == [(storage.UPLOAD_PART, storage.UPLOAD_PARTS_IN_FLIGHT)]
    assert storage.read_bytes(f"{bucket}/big") == data


def test_tiers_check_reads_url_lists_from_a_bucket(bucket, tmp_path):
    from pipelines.cli import main

    storage.write_text(f"{bucket}/lists/a.csv", "url,caption\nhttp://x/1.jpg,one\nhttp://x/2.jpg,two\n")
    storage.write_text(f"{bucket}/lists/b.tsv", "url\tcaption\nhttp://x/3.jpg\tthree\n")
    assert main(["check", f"{bucket}/lists"]) == 0
    assert main(["check", f"{bucket}/lists/*.csv"]) == 0
    assert main(["check", f"{bucket}/lists/none.csv"]) == 2
    # A parquet list in a bucket is read by ranged reads, a row group at a time: the rows a local copy gives.
    from curate.urllist import read_url_list

    t = pa.table({"url": [f"http://x/{i}.jpg" for i in range(300)], "caption": [f"c{i}" for i in range(300)]})
    pq.write_table(t, tmp_path / "c.parquet", row_group_size=64)
    storage.write_bytes(f"{bucket}/more/c.parquet", (tmp_path / "c.parquet").read_bytes())
    assert read_url_list(f"{bucket}/more/c.parquet").equals(read_url_list(tmp_path / "c.parquet"))
    # Its files staged by worker processes, which reach the bucket as this process does.
    from curate.urllist import ReadConfig, stage_url_list

    storage.write_bytes(f"{bucket}/more/d.parquet", (tmp_path / "c.parquet").read_bytes())
    apart = stage_url_list(f"{bucket}/more", ReadConfig(), str(tmp_path / "apart.parquet"), workers=2)
    here = stage_url_list(f"{bucket}/more", ReadConfig(), str(tmp_path / "here.parquet"), workers=1)
    assert apart.rows == here.rows == 600  # d repeats c: its uids numbered on
    assert (tmp_path / "apart.parquet").read_bytes() == (tmp_path / "here.parquet").read_bytes()


def test_one_run_per_build_directory_in_a_bucket(bucket):
    """The S3 lock is a lease: a live holder refuses a second run; a holder that died (kill -9 here, or
    past its expiry elsewhere) is taken over at once; a finished run leaves nothing."""
    import json
    import time

    from curate.core import lease

    d = f"{bucket}/build"
    with lease.hold(d, ttl=30):
        with pytest.raises(InputError, match=f"{d}: in use by another run \\(pid {os.getpid()}"):
            with lease.hold(d, ttl=30):
                pass
    assert not storage.exists(f"{d}/.lock")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    for holder in (
        {"pid": int(dead.stdout), "host": socket.gethostname(), "expires": time.time() + 60},  # killed here
        {"pid": 1, "host": "elsewhere", "expires": time.time() - 1},  # expired on another host
    ):
        storage.write_bytes(f"{d}/.lock", json.dumps(holder).encode())
        with lease.hold(d, ttl=30):
            assert json.loads(storage.read_bytes(f"{d}/.lock"))["pid"] == os.getpid()
    storage.write_bytes(
        f"{d}/.lock", json.dumps({"pid": 1, "host": "elsewhere", "expires": time.time() + 60}).encode()
    )
    with pytest.raises(InputError, match="pid 1 on elsewhere"):
        with lease.hold(d, ttl=30):
            pass


def test_a_build_into_memory_runs_every_unit_in_this_process(ray_local, tmp_path):
    """memory:// lives in one process: `tiers build --out memory://...` runs its units here, and works."""
    from pipelines.cli import main
    from synthweb import WebConfig, WebServer, build

    build(tmp_path / "web", WebConfig(n=60, seed=5, eval_per_concept=1, retrieval_pairs=2, workers=1))
    (tmp_path / "b.toml").write_text(
        '[download]\nimage_size = 64\ntimeout = 1\nsamples_per_shard = 30\n[filters]\npreset = "synthetic-basic"\n'
        "image_size = 64\n[shards]\nshard_size = 8\n"
    )
    out = f"memory://m-{uuid.uuid4().hex[:8]}/build"
    with WebServer(tmp_path / "web", slow_seconds=2) as web:
        args = ["build", str(web.urls_path), "--out", out, "--config", str(tmp_path / "b.toml")]
        assert main([*args, "--allow-private-hosts", "loopback", "--no-progress"]) == 0
    samples = storage.read_parquet(f"{out}/samples.parquet")
    assert samples.num_rows == 60 and storage.exists(f"{out}/tiers/manifest.json")
    manifest = storage.read_json(f"{out}/tiers/manifest.json")
    assert all(storage.exists(f"{out}/tiers/{s}") for s in manifest["tiers"]["unfiltered"]["shards"])
