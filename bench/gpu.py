"""GPU check: the GPU path end to end in one script of at most ~5 minutes, for whoever gets a GPU machine.

It measures, on one synthetic web's clean samples (shards written by ``synthweb.shards``), and prints:

1. ``tiers train`` on CUDA with bf16 autocast (``--precision auto`` on CUDA) and in fp32: samples/s of
   an open_clip ViT-B-32 (random init, 224 px, batch 256), and the bf16 / fp32 ratio;
2. ``python -m open_clip_train.main --precision amp_bf16`` on the same shards, model and batch: samples/s,
   and the ratio ``tiers train`` / ``open_clip_train`` (the CPU figure is in bench/train.py);
3. ``tiers annotate`` with a CLIP (a ViT-B-32 local dir, random weights: speed only) on Ray actors that
   hold a GPU each: samples/s end to end, and the GPUs Ray saw;
4. with 2+ GPUs, ``torchrun`` DDP over NCCL: samples/s on all GPUs and the scaling over one.

What it does not measure: accuracy (random weights; nothing can be downloaded), multi-node runs, data
loading from object storage. Samples/s are medians over logging windows after the first two (start-up).
Without CUDA it prints what it would measure and exits 0: tests run that path. Writes
bench/results/gpu.json.

    .venv/bin/python bench/gpu.py [--n 4000] [--steps 40] [--batch 256] [--model ViT-B-32]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
FIGURES = (
    "tiers train bf16 samples/s",
    "tiers train fp32 samples/s",
    "open_clip_train amp_bf16 samples/s",
    "annotate with CLIP on GPU actors samples/s",
    "DDP over NCCL samples/s (2+ GPUs)",
)


def _bench_module(name: str):
    """Helpers of another bench script (bench/train.py's open_clip_train launcher, bench/annotate.py's raw shards)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "NO_ALBUMENTATIONS_UPDATE": "1"}


def _windows(run: Path) -> float:
    w = [json.loads(x)["samples_per_s"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(w[2:-1] or w[-1:])


def ours(tiers: Path, out: Path, a, precision: str, nproc: int = 1) -> float:
    head = [sys.executable, "-m", "pipelines.cli"]
    if nproc > 1:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "pipelines.cli"]  # fmt: skip
    cmd = head + ["train", "--tiers", str(tiers), "--tier", "full", "--model", a.model, "--out", str(out)]
    cmd += ["--samples-seen", str(a.steps * a.batch * nproc), "--batch-size", str(a.batch), "--device", a.device]
    cmd += ["--precision", precision, "--workers", str(a.workers), "--checkpoint-every", "0"]
    cmd += ["--set", "log_every=5", "--no-progress", "--quiet"]
    subprocess.run(cmd, cwd=REPO, check=True, env=_env(), capture_output=True, text=True)
    return _windows(out)


def theirs(tiers: Path, out: Path, a) -> float:
    from curate.core.manifest import brace, read_tier
    from train.models import model_config

    model_dir = out / "model"  # the same architecture config ours uses, as an open_clip local dir
    model_dir.mkdir(parents=True)
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_config(a.model)[1]}))
    launcher = _bench_module("train").OPEN_CLIP_MAIN
    precision = "amp_bf16" if a.device == "cuda" else "fp32"
    cmd = [sys.executable, "-c", launcher, "--train-data", brace(read_tier(tiers, "full").shards)]
    cmd += ["--dataset-type", "webdataset", "--dataset-resampled", "--train-num-samples", str(a.steps * a.batch)]
    cmd += ["--model", f"local-dir:{model_dir}", "--batch-size", str(a.batch), "--workers", str(a.workers)]
    cmd += ["--precision", precision]
    cmd += ["--epochs", "1", "--lr", "1e-3", "--wd", "0.1", "--warmup", str(a.steps // 10), "--seed", "0"]
    cmd += ["--log-every-n-steps", "5", "--save-frequency", "0", "--report-to", "", "--logs", str(out)]
    cmd += ["--name", "gpu", "--zeroshot-frequency", "0", "--val-frequency", "0"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env())
    if res.returncode:
        raise RuntimeError(f"open_clip_train failed:\n{res.stderr[-2000:]}")
    sps = [a.batch / float(t) for t in re.findall(r"Batch \(t\): ([0-9.]+)", res.stdout + res.stderr)]
    return statistics.median(sps[2:-1] or sps[-1:])


def annotate_on_gpu(root: Path, a) -> dict:
    import ray

    from curate.annotate import AnnotateConfig, annotate
    from curate.annotate.clip import save_random_model
    from curate.core.runtime import ray_session
    from train.models import model_config

    helpers = _bench_module("annotate")
    cfg = model_config(a.model)[1]
    spec = save_random_model(root / "clip", cfg)
    build = root / "annotate"
    helpers.write_raw(helpers.make_samples(a.annotate_n, 256, seed=1), build, per_shard=max(1, a.annotate_n // 16))
    with ray_session():
        gpus = ray.cluster_resources().get("GPU", 0)
        t0 = time.perf_counter()
        s = annotate(build, AnnotateConfig(clip_model=spec, device=a.device, clip_batch_size=256), progress=False)
        wall = time.perf_counter() - t0
    return {"samples_per_s": s.rows / wall, "rows": s.rows, "ray_gpus": gpus, "seconds": wall}


def run(a) -> dict:
    import torch

    from synthweb import WebConfig, build
    from synthweb.shards import shards_from_synthweb

    root = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    gpus = torch.cuda.device_count() if a.device == "cuda" else 0
    res: dict = {"gpu": torch.cuda.get_device_name(0) if gpus else "none (--smoke on CPU)", "gpus": gpus,
                 "model": a.model, "batch": a.batch, "steps": a.steps}  # fmt: skip
    try:
        t0 = time.perf_counter()
        build(root / "web", WebConfig(n=a.n, seed=0, mix={"clean": 1.0}, workers=os.cpu_count()))
        shards_from_synthweb(root / "web", root / "tiers", {"full": 1.0}, shard_size=500)
        print(f"synthetic web and shards: {a.n} samples in {time.perf_counter() - t0:.0f} s")
        steps = [
            ("tiers_train_bf16", lambda: ours(root / "tiers", root / "bf16", a, "bf16")),
            ("tiers_train_fp32", lambda: ours(root / "tiers", root / "fp32", a, "fp32")),
            ("open_clip_train_amp_bf16", lambda: theirs(root / "tiers", root / "oc", a)),
            ("annotate_clip_gpu", lambda: annotate_on_gpu(root, a)),
        ]
        if res["gpus"] >= 2:
            n = min(8, res["gpus"])
            steps.append(("ddp_nccl", lambda: ours(root / "tiers", root / "ddp", a, "bf16", nproc=n)))
        for name, fn in steps:
            t0 = time.perf_counter()
            try:
                res[name] = fn()
            except Exception as e:  # one failing part must not hide the others' figures
                res[name] = {"error": f"{type(e).__name__}: {str(e)[-1500:]}"}
            print(f"{name:<26} {json.dumps(res[name])}  ({time.perf_counter() - t0:.0f} s)")
        if isinstance(res.get("tiers_train_bf16"), float) and isinstance(res.get("tiers_train_fp32"), float):
            res["bf16_over_fp32"] = res["tiers_train_bf16"] / res["tiers_train_fp32"]
        if isinstance(res.get("tiers_train_bf16"), float) and isinstance(res.get("open_clip_train_amp_bf16"), float):
            res["tiers_over_open_clip_train"] = res["tiers_train_bf16"] / res["open_clip_train_amp_bf16"]
        if isinstance(res.get("ddp_nccl"), float) and isinstance(res.get("tiers_train_bf16"), float):
            res["ddp_scaling"] = res["ddp_nccl"] / res["tiers_train_bf16"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4000, help="clean synthetic samples")
    p.add_argument("--steps", type=int, default=40, help="steps per training run")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=8, help="loader workers per rank")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--annotate-n", type=int, default=4000)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu.json")
    p.add_argument("--smoke", action="store_true", help="check this script on the CPU, tiny (figures meaningless)")
    a = p.parse_args(argv)
    import torch

    a.device = "cuda"
    if a.smoke:
        a.device, a.model, a.n, a.steps, a.batch, a.workers, a.annotate_n = "cpu", "ct-vit-micro-32", 300, 8, 16, 1, 64
        a.out = a.out.with_name("gpu-smoke.json")
    elif not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here, so nothing is measured. On a GPU machine it measures:")
        for f in FIGURES:
            print(f"  - {f}")
        return 0
    res = run(a)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")
    return 1 if any(isinstance(v, dict) and "error" in v for v in res.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
