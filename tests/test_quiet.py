"""`--quiet` as a user sees it: a whole `tiers build` (img2dataset, Ray, fastText) and a tracked `tiers train`
print nothing at all, on either stream, down to the file descriptors Ray's C++ core writes to; an error is
one line on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
[download]
image_size = 64
timeout = 1
url_deadline = 3
samples_per_shard = 30
[filters]
preset = "synthetic-basic"
[shards]
shard_size = 16
"""


def tiers(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    from synthweb import WebConfig, WebServer, build

    root = tmp_path_factory.mktemp("quietweb")
    build(root, WebConfig(n=60, seed=11, eval_per_concept=1, retrieval_pairs=2, workers=1))
    (root / "build.toml").write_text(CONFIG)
    with WebServer(root, slow_seconds=2) as server:
        yield root, server.urls_path


def test_quiet_build_and_tracked_train_print_nothing(web, tmp_path):
    root, urls = web
    out = tmp_path / "build"
    r = tiers("build", str(urls), "--out", str(out), "--config", str(root / "build.toml"), "--quiet",
              "--allow-private-hosts", "loopback")  # fmt: skip
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert (out / "tiers" / "manifest.json").is_file()
    r = tiers("train", "--tiers", str(out), "--tier", "kept", "--samples-seen", "32", "--batch-size", "16",
              "--model", "ct-vit-micro-32", "--workers", "0", "--log-to", "tensorboard,wandb",
              "--out", str(tmp_path / "run"), "--quiet")  # fmt: skip
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    r = tiers("export", str(out), "--tier", "kept", "--format", "datacomp-npy", "--out", str(tmp_path / "k.npy"), "-q")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_quiet_errors_are_one_line(tmp_path):
    r = tiers("build", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "b"), "--quiet")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.startswith("tiers: error:") and "missing.parquet" in r.stderr


@pytest.mark.parametrize("chosen", [None, "system"])
def test_entry_points_allocate_arrow_with_jemalloc_unless_told(chosen):
    """Every entry point's environment defaults switch Arrow to jemalloc (freed pages go back to the system)
    here and, through the environment, in the Ray workers it starts; a user's ARROW_DEFAULT_MEMORY_POOL wins."""
    code = (
        "import os, pyarrow as pa\n"
        "from curate.core.runtime import quiet_environment\n"
        "quiet_environment()\n"
        "print(pa.default_memory_pool().backend_name, os.environ.get('ARROW_DEFAULT_MEMORY_POOL'),"
        " os.environ.get('JE_ARROW_MALLOC_CONF'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "JE_ARROW_MALLOC_CONF")}
    env["PYTHONPATH"] = str(ROOT)
    if chosen:
        env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    import pyarrow as pa

    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow has no jemalloc")
    # jemalloc's options stay Arrow's here and in the workers (only the CLI's driver sets DECAY, then unsets it).
    assert out.stdout.split() == ([chosen, chosen, "None"] if chosen else ["jemalloc", "jemalloc", "None"])


def test_a_users_jemalloc_options_win():
    code = (
        "import os\nfrom curate.core.runtime import quiet_environment\n"
        "quiet_environment()\nprint(os.environ['JE_ARROW_MALLOC_CONF'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    env.update(PYTHONPATH=str(ROOT), JE_ARROW_MALLOC_CONF="narenas:1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "narenas:1"


def test_the_cli_chooses_arrows_allocator_before_anything_loads_pyarrow(tmp_path):
    """jemalloc's options act only when set before pyarrow loads, and parsing --allow-private-hosts loads it:
    the CLI chooses the allocator before it parses anything."""
    code = (
        "import sys\n"
        "import curate.core.runtime as rt\n"
        "import pipelines.cli as cli\n"
        "seen, orig = [], rt.arrow_allocator\n"
        "def spy(*args, **kwargs):\n"
        "    seen.append('pyarrow' in sys.modules)\n"
        "    orig(*args, **kwargs)\n"
        "rt.arrow_allocator = cli.arrow_allocator = spy\n"
        f"cli.main(['build', {str(tmp_path / 'missing.parquet')!r}, '--out', {str(tmp_path / 'b')!r},"
        " '--allow-private-hosts', 'loopback', '-q'])\n"
        "print(seen[0])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "JE_ARROW_MALLOC_CONF")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False"]
