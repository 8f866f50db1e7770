"""What a Ray worker holds: between units (the freed heap handed back, a little kept for the next unit, the
imported modules' objects frozen out of every collection) and within one (a band shard's samples' bytes,
not the raw tars they lie in). Each runs in a process of its own, so its memory is its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.memory import needs_proc, peak_growth_mb


def runtime_mallopt():
    from curate.core import runtime

    return runtime._libc()[2]


ROOT = Path(__file__).resolve().parents[1]


# A unit that frees 200 MB of small heap blocks below one it keeps: glibc cannot hand them back alone.
FRAGMENTING_UNIT = """
import sys
from curate.core import raypool, runner
PIN = []
def fn(root, unit):
    blocks = [bytearray(4096) for _ in range(50_000)]  # below glibc's mmap threshold: in the heap
    PIN.append(bytearray(4096))
    del blocks
    return {}
def anon_mb():
    return int(next(ln for ln in open("/proc/self/status") if ln.startswith("RssAnon:")).split()[1]) // 1024
before = anon_mb()
if sys.argv[2] == "worker":
    raypool.run_unit(runner.execute, sys.argv[1], runner.Unit("u", "f"), fn, None)
else:
    runner.execute(sys.argv[1], runner.Unit("u", "f"), fn, None)
print(anon_mb() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
def test_a_ray_worker_hands_back_what_its_unit_freed(tmp_path):
    """The next unit a Ray worker runs may be another stage's: it must not carry this one's freed heap."""

    def kept_mb(how: str) -> int:
        cmd = [sys.executable, "-c", FRAGMENTING_UNIT, str(tmp_path / how), how]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
        return int(out.stdout.split()[-1])

    assert kept_mb("plain") > 150  # the allocator keeps them: the check below can fail
    assert kept_mb("worker") < 30


# Two units that each fill and free 20 MB of small heap blocks below one the worker keeps: page faults of the second.
REFILLING_UNITS = """
import resource, sys
from curate.core import raypool, runner
PIN, FAULTS = [], []
def fn(root, unit):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [bytearray(4096) for _ in range(5_000)]
    PIN.append(bytearray(4096))
    del blocks
    FAULTS.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {}
for name in ("a", "b"):
    raypool.run_unit(runner.execute, sys.argv[1], runner.Unit(name, "f"), fn, None)
print(FAULTS[1])
"""


def test_a_worker_keeps_a_little_freed_heap_for_its_next_unit(tmp_path):
    """Handing back every freed page made each unit fault its heap in again (a 256 px band shard: ~7 ms)."""
    cmd = [sys.executable, "-c", REFILLING_UNITS, str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert int(out.stdout.split()[-1]) < 1_000  # 5,000 pages when the first unit's were handed back


# Blocks of arrays made and dropped again and again, as the near-copy verification does 1,024 pairs at a time.
REMADE_BLOCKS = """
import resource, sys
import numpy as np
from curate.core import runtime
if sys.argv[1] == "kept":
    runtime.keep_freed_heap()
def block():
    arrays = [np.ones(3 << 20, np.float32) for _ in range(3)]  # 12 MB each, 36 MB together
    del arrays
block()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(runtime_mallopt() is None, reason="glibc's mallopt")
def test_a_process_that_keeps_its_freed_heap_does_not_fault_it_in_again():
    """glibc hands the freed blocks back (mapped afresh, or trimmed from the heap's top) and each block's
    pages fault in again, zeroed: 4.5M faults, ~40% of the verification's time in a fresh worker."""

    def faults(mode: str) -> int:
        cmd = [sys.executable, "-c", REMADE_BLOCKS, mode]
        return int(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout)

    plain, kept = faults("plain"), faults("kept")
    assert kept < 200 and plain > 20 * max(kept, 100), (plain, kept)  # ~20,000 faults against none here


# A worker's full collections after each unit: the imported modules' objects walked once, a later cycle still freed.
FREEZING_UNITS = """
import gc, weakref
import pyarrow, numpy
from curate.core.raypool import released_call
from curate.core.runtime import release_memory
class Node:
    pass
release_memory()
first = gc.get_freeze_count()
a, b = Node(), Node()
a.other, b.other = b, a
gone = weakref.ref(a)
del a, b
release_memory()
import email.mime.text  # a module not imported before: frozen with the next call
release_memory()
refrozen = gc.get_freeze_count() > first
def fails():  # imports a module, then fails holding a cycle: nothing of it is frozen
    import xml.dom.minidom
    node = Node()
    node.self = node
    held.append(weakref.ref(node))
    raise ValueError(node)
held = []
try:
    released_call(fails)
except ValueError:
    pass
gc.collect()
print(first, len(gc.get_objects()), gone() is None, refrozen, held[0]() is None)
"""


def test_a_workers_collection_after_each_unit_skips_the_imported_modules():
    """A full collection walked ~80,000 module objects after every unit (20-40 ms a unit in a Ray worker)."""
    out = subprocess.run([sys.executable, "-c", FREEZING_UNITS], cwd=ROOT, capture_output=True, text=True, check=True)
    frozen, walked, cycle_freed, refrozen, failed_unit_freed = out.stdout.split()
    assert int(frozen) > 20_000 and int(walked) < int(frozen) // 10
    assert cycle_freed == "True" and refrozen == "True" and failed_unit_freed == "True"


BAND_SHARD_MEMORY_SETUP = """
import os, sys
import pyarrow as pa
import pyarrow.parquet as pq
from curate.core import schema
from curate.shard.bandshard import write_band_shard

raw, tars, per, stride, size = sys.argv[1], 8, 64, 256 << 10, 4096
rows = []
for t in range(tars):
    with open(os.path.join(raw, f"{t:05d}.tar"), "wb") as f:  # written just now: in the page cache
        f.write(os.urandom(per * stride))
    rows += [(f"{t:05d}", k * stride) for k in range(per)]
n = len(rows)
table = pa.table({schema.UID: [f"u{i}" for i in range(n)], schema.URL: [f"http://x/{i}" for i in range(n)],
    schema.CAPTION: ["c"] * n, schema.QUALITY: [0.5] * n, schema.BAND: ["top"] * n,
    schema.SHARD: [s for s, _ in rows], schema.KEY: [f"{i:09d}" for i in range(n)], "ext": ["jpg"] * n,
    "offset": pa.array([o for _, o in rows], pa.int64()), "size": pa.array([size] * n, pa.int64())})
"""


@needs_proc
def test_a_band_shard_holds_its_samples_bytes_not_the_raw_tars_they_lie_in(tmp_path):
    """A band shard's 512 samples of 4 kB, one every 256 kB of 8 raw tars (128 MB, in the page cache):
    its writer's peak must grow by about their bytes (2 MB), not by the raw tars'. Mapping the tars did
    the latter: a touched byte maps its page-cache folio, so the peak grew with the tars drawn from."""
    grew = peak_growth_mb(
        BAND_SHARD_MEMORY_SETUP, 'write_band_shard(os.path.join(raw, "out.tar"), raw, table)', tmp_path
    )
    assert grew < 32, f"the writer's peak grew by {grew} MB for 2 MB of samples"
