"""examples/ never rot: each build config runs on a synthetic pool, and every command of the cluster recipe
parses with the real command line (its build step joining a Ray that another process started)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.core import config, uid128
from curate.core.manifest import Manifest
from pipelines.build import build, config_from_toml
from pipelines.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    from synthweb import WebConfig, WebServer
    from synthweb import build as build_web

    root = tmp_path_factory.mktemp("exweb")
    build_web(root, WebConfig(n=60, seed=5, mix={"clean": 0.8, "foreign": 0.1, "http_404": 0.1}, workers=1))
    with WebServer(root) as server:
        yield root, server.urls_path


def commands(md: Path) -> list[list[str]]:
    """The argv of every `tiers ...` line (and `-m pipelines.cli ...` under torchrun) in the recipe's code."""
    text = "\n".join(re.findall(r"```bash\n(.*?)```", md.read_text(), flags=re.S)).replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["tiers"]:
            out.append(words[1:])
        elif "pipelines.cli" in words:
            out.append(words[words.index("pipelines.cli") + 1 :])
    return out


def test_cluster_recipe_commands_parse_and_name_files_that_exist():
    argvs = commands(EXAMPLES / "cluster.md")
    assert {a[0] for a in argvs} >= {"build", "download", "annotate", "train", "eval"}
    for argv in argvs:
        args = build_parser().parse_args(argv)
        assert args.func
        for value in argv:
            if value.startswith("examples/"):
                assert (ROOT / value).is_file(), value


def test_datacomp_pool_example_keeps_datacomp_uids(web, ray_local, tmp_path):
    from curate.annotate.clip import save_random_model
    from curate.shard.subset import export_tier, make_subset

    root, urls = web
    # DataComp's metadata: 32-hex-digit uids, the caption in "text"
    t = pq.read_table(urls)
    hex_uids = [f"{int(u, 16):032x}" for u in t["uid"].to_pylist()]
    meta = tmp_path / "metadata.parquet"
    pq.write_table(pa.table({"uid": hex_uids, "url": t["url"], "text": t["caption"]}), meta)
    data = config.read_toml(EXAMPLES / "datacomp-pool.toml")
    # ViT-L-14:openai is not in this machine's cache: a local CLIP of the same kind of spec stands in
    data["annotate"]["clip_model"] = save_random_model(tmp_path / "clip")
    cfg = config_from_toml(data, source="examples/datacomp-pool.toml")
    assert (cfg.download.threads, cfg.download.samples_per_shard, cfg.download.caption_col) == (64, 10000, "text")
    out = tmp_path / "pool"
    m = build([str(meta)], out, cfg, allow_private="loopback", progress=False)
    assert m.input_rows == 60 and sum(m.tiers[n].samples for n in ("kept",)) <= m.tiers["unfiltered"].samples
    samples = pq.read_table(out / "samples.parquet")
    assert set(samples["uid"].to_pylist()) == set(hex_uids)
    assert set(samples.filter(pa.compute.equal(samples["status"], "kept"))["reason"].to_pylist()) <= {None}
    export_tier(out, "unfiltered", "datacomp-npy", tmp_path / "u.npy")
    got = np.load(tmp_path / "u.npy")
    want = {(int(u[:16], 16), int(u[16:], 16)) for u in samples.filter(samples["band"].is_valid())["uid"].to_pylist()}
    assert set(got.tolist()) == want and len(got) == m.tiers["unfiltered"].samples > 0
    uid128.write_npy(tmp_path / "three.npy", got[:3])
    assert make_subset(out, tmp_path / "three.npy", "three", progress=False).samples == 3
    assert "three" in Manifest.load(out).tiers


def test_small_images_example_through_a_ray_another_process_started(web, ray_local, tmp_path):
    root, urls = web
    address = ray_local.get_runtime_context().gcs_address
    out = tmp_path / "small"
    argv = ["build", str(urls), "--out", str(out), "--config", str(EXAMPLES / "small-images.toml"),
            "--ray-address", address, "--quiet", "--allow-private-hosts", "loopback"]  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert (r.returncode, r.stderr) == (0, "")
    m = Manifest.load(out)
    assert m.config["build"]["download"]["image_size"] == 128 and m.tiers["kept"].samples > 10
    widths = pq.read_table(out / "samples.parquet", columns=["width", "height"]).to_pandas().dropna()
    assert widths.max().max() <= 128
