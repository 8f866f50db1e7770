"""Benchmark: `tiers train` vs `python -m open_clip_train.main` on the same shards, model, batch and precision.

Both train the same tiny open_clip model (ct-vit-tiny-32, fp32, CPU) on the same WebDataset shards
(clean samples of a synthetic web, written by ``synthweb.shards``) with the same batch size, loader
workers, optimiser settings and torch threads, each as its own process, alternately, ``--repeats``
times. Throughput is steady-state samples/s: the median over logging windows of 10 steps, leaving
out the first two windows (start-up); each tool's best repeat counts, as others share this machine
(the load average around each run is printed; the best single windows are recorded too).
open_clip_train reads our model config as an open_clip ``local-dir:``; it runs as ``-m
open_clip_train.main`` would, with one known incompatibility patched (see OPEN_CLIP_MAIN).

Then: the loader alone (decode + augment + tokenize in the same workers, no model) against the
training rate (target >= 5x), and a learning run: the same model trained on the clean synthetic
tier for ``--learn-samples``, evaluated zero-shot on the held-out synthetic set (25 classes, chance
4%) and on CIFAR-10's test set (real photos, chance 10%) when ``../shared/data`` has it.
Writes bench/results/train.json.

    .venv/bin/python bench/train.py [--n 12000] [--steps 60] [--learn-samples 65536] [--skip-learn]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as `python bench/train.py`, this file's folder leads sys.path and its name would hide the `train` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
# `python -m open_clip_train.main`, with the one-line fix for webdataset >= 0.2.96 (pyproject pins below it),
# whose end-of-shard marker open_clip_train's sample grouping cannot read (webdataset#384, open_clip#935).
OPEN_CLIP_MAIN = (
    "import functools, inspect, sys, open_clip_train.data as d\n"
    "if 'eof_value' in inspect.signature(d.tar_file_expander).parameters:\n"
    "    d.tar_file_expander = functools.partial(d.tar_file_expander, eof_value=None)\n"
    "from open_clip_train.main import main; main(sys.argv[1:])"
)
CIFAR = REPO.parent / "shared" / "data" / "cifar10" / "test.parquet"


def build_tiers(root: Path, n: int, web: Path | None) -> tuple[Path, Path]:
    from synthweb import WebConfig, build
    from synthweb.shards import shards_from_synthweb

    if web is None:
        web = root / "web"
        t0 = time.perf_counter()
        build(web, WebConfig(n=n, seed=0, mix={"clean": 1.0}))
        print(f"synthetic web: {n} clean samples in {time.perf_counter() - t0:.0f} s")
    tiers = root / "build"
    shards_from_synthweb(web, tiers, {"small": 0.1, "full": 1.0}, shard_size=1000)
    return web, tiers


def ours(tiers: Path, out: Path, a) -> list[float]:
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--tiers", str(tiers), "--tier", "full"]
    cmd += ["--samples-seen", str(a.steps * a.batch), "--model", a.model, "--out", str(out), "--batch-size"]
    cmd += [str(a.batch), "--workers", str(a.workers), "--precision", "fp32", "--device", "cpu", "--lr", "1e-3"]
    cmd += ["--checkpoint-every", "0", "--set", "log_every=10", "--set", "warmup_frac=0.1", "--no-progress"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    windows = [json.loads(x)["samples_per_s"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    return windows[2:-1] or windows[-1:]  # the last window may be short


def theirs(tiers: Path, out: Path, a) -> list[float]:
    from curate.core.manifest import read_tier
    from train.models import model_config

    model_dir = out / "model"
    model_dir.mkdir(parents=True)
    _, cfg = model_config(a.model)
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    tier = read_tier(tiers, "full")
    from curate.core.manifest import brace

    cmd = [sys.executable, "-c", OPEN_CLIP_MAIN, "--train-data", brace(tier.shards)]
    cmd += ["--dataset-type", "webdataset", "--dataset-resampled", "--train-num-samples", str(a.steps * a.batch)]
    cmd += ["--model", f"local-dir:{model_dir}", "--batch-size", str(a.batch), "--workers", str(a.workers)]
    cmd += ["--precision", "fp32", "--epochs", "1", "--lr", "1e-3", "--wd", "0.1", "--warmup", str(a.steps // 10)]
    cmd += ["--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--grad-clip-norm", "1.0", "--seed", "0"]
    cmd += ["--log-every-n-steps", "10", "--save-frequency", "0", "--report-to", "", "--logs", str(out / "logs")]
    cmd += ["--name", "bench", "--zeroshot-frequency", "0", "--val-frequency", "0"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"open_clip_train failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    times = [float(m) for m in re.findall(r"Batch \(t\): ([0-9.]+)", res.stdout + res.stderr)]
    sps = [a.batch / t for t in times]
    return sps[2:-1] or sps[-1:]  # window 0 is the first step alone, window 1 holds the start-up


def loader_rate(tiers: Path, a, batches: int = 60) -> float:
    import open_clip

    from curate.core.manifest import read_tier
    from train import augment
    from train.config import make_config
    from train.data import StreamSpec, TierStream, make_loader
    from train.models import model_config

    name, cfg = model_config(a.model)
    size = cfg["vision_cfg"]["image_size"]
    c = make_config({"model": a.model})
    spec = StreamSpec(a.batch, 0, c.mix_shards, 0, a.workers, 1, augment.draft_side(size, c.image_aug))
    stream = TierStream(
        read_tier(tiers, "full").shards,
        spec,
        augment.ImageAugmenter(size, c.image_aug),
        open_clip.get_tokenizer(name),
        augment.CaptionAugmenter(c.text_aug),
        0.0,
    )
    it = iter(make_loader(stream))
    for _ in range(max(4, 2 * a.workers)):  # start-up and prefetch
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * a.batch / (time.perf_counter() - t0)
    del it
    return rate


def cpu_seconds() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def learn(web: Path, tiers: Path, out: Path, a) -> dict:
    from train import api
    from train.config import EvalConfig, make_config

    ev = web / "eval"
    cfg = make_config(
        {
            "model": a.model,
            "samples_seen": a.learn_samples,
            "batch_size": a.learn_batch,
            "lr": a.learn_lr,
            "workers": a.workers,
            "threads": a.learn_threads,
            "checkpoint_every": 100,
            "eval": {"zeroshot": [str(ev / "zeroshot.parquet")], "retrieval": [str(ev / "retrieval.parquet")]},
        },
        preset=a.preset,
    )
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    s = api.train(cfg, tiers, "full", out, progress=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    doc = json.loads((out / "eval.json").read_text())
    res = {
        "samples_seen": s.samples_seen,
        "steps": s.steps,
        "batch": a.learn_batch,
        "preset": a.preset,
        "repetition": s.repetition,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "zeroshot_top1": doc["zeroshot"]["zeroshot"]["top1"],
        "zeroshot_top5": doc["zeroshot"]["zeroshot"]["top5"],
        "zeroshot_chance": doc["zeroshot"]["zeroshot"]["chance"],
        "retrieval_r1_mean": doc["retrieval"]["retrieval"]["mean_r1"],
    }
    if CIFAR.is_file():
        t0 = time.perf_counter()
        cif = api.evaluate(
            out, EvalConfig(zeroshot=(f"cifar10={CIFAR}",), linear_probe=(f"cifar10={CIFAR}",), limit=a.cifar_limit)
        )
        res["cifar10_zeroshot_top1"] = cif.get("zeroshot", "cifar10")["top1"]
        res["cifar10_linear_probe_top1"] = cif.get("linear_probe", "cifar10")["top1"]
        res["cifar10_n"] = cif.get("zeroshot", "cifar10")["n"]
        res["cifar10_eval_seconds"] = time.perf_counter() - t0
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=12000, help="clean samples in the synthetic web")
    p.add_argument("--web", type=Path, help="reuse a built synthetic web")
    p.add_argument("--model", default="ct-vit-tiny-32")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=60, help="steps per throughput run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--learn-samples", type=int, default=65536)
    p.add_argument("--learn-batch", type=int, default=64)
    p.add_argument("--learn-lr", type=float, default=1e-3)
    p.add_argument("--preset", default="baseline")
    p.add_argument("--learn-threads", type=int, default=0, help="torch threads for the learning run (0: default)")
    p.add_argument("--cifar-limit", type=int, default=0, help="CIFAR-10 rows to evaluate (0: all 10,000)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-learn", action="store_true")
    p.add_argument("--keep", type=Path, help="keep the work directory here")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train.json")
    a = p.parse_args()
    from curate.core.runtime import quiet_environment

    quiet_environment()

    root = a.keep or Path(tempfile.mkdtemp(prefix="bench-train-"))
    root.mkdir(parents=True, exist_ok=True)
    # Parts skipped this time keep their figures from the last run.
    results: dict = json.loads(a.out.read_text()) if a.out.is_file() else {}
    results.update({"model": a.model, "batch": a.batch, "workers": a.workers, "precision": "fp32", "device": "cpu"})
    results["cpus"] = os.cpu_count()
    try:
        web, tiers = build_tiers(root, a.n, a.web)
        if not a.skip_speed:
            runs = {"tiers_train": [], "open_clip_train": []}
            windows_all = {"tiers_train": [], "open_clip_train": []}
            loader_runs: list[float] = []
            for r in range(a.repeats):
                for name, fn in (("tiers_train", ours), ("open_clip_train", theirs)):
                    out = root / f"{name}-{r}"
                    shutil.rmtree(out, ignore_errors=True)
                    load0 = os.getloadavg()[0]
                    windows = fn(tiers, out, a)
                    sps = statistics.median(windows)
                    runs[name].append(sps)
                    windows_all[name] += windows
                    print(
                        f"  {name:<16} repeat {r}: {sps:7.1f} samples/s (median of {len(windows)} windows; "
                        f"best {max(windows):.1f}; load average {load0:.1f} -> {os.getloadavg()[0]:.1f})"
                    )
                loader_runs.append(loader_rate(tiers, a))
                print(f"  loader alone     repeat {r}: {loader_runs[-1]:7.1f} samples/s")
            best = {k: max(v) for k, v in runs.items()}
            results["speed"] = {
                "runs_samples_per_s": runs,
                "tiers_train_samples_per_s": best["tiers_train"],
                "open_clip_train_samples_per_s": best["open_clip_train"],
                "ratio": best["tiers_train"] / best["open_clip_train"],
                "best_window_samples_per_s": {k: max(v) for k, v in windows_all.items()},
                "best_window_ratio": max(windows_all["tiers_train"]) / max(windows_all["open_clip_train"]),
            }
            rate = max(loader_runs)  # best of, like training; measured between the training runs
            results["loader"] = {
                "samples_per_s": rate,
                "runs_samples_per_s": loader_runs,
                "ratio_to_training": rate / best["tiers_train"],
            }
            print(
                f"tiers train {best['tiers_train']:.1f} samples/s vs open_clip_train "
                f"{best['open_clip_train']:.1f}: ratio {results['speed']['ratio']:.2f} (target >= 1.0)"
            )
            print(f"loader alone {rate:.0f} samples/s = {rate / best['tiers_train']:.1f}x training (target >= 5)")
            write(a.out, results)
        if not a.skip_learn:
            res = learn(web, tiers, root / "learn", a)
            results["learn"] = res
            print(
                f"learning run: {res['samples_seen']:,} samples ({res['steps']} steps of {res['batch']}) in "
                f"{res['wall_seconds']:.0f} s wall, {res['cpu_seconds']:.0f} s CPU: zero-shot top-1 "
                f"{res['zeroshot_top1']:.3f} (chance {res['zeroshot_chance']:.3f}), top-5 {res['zeroshot_top5']:.3f}, "
                f"retrieval R@1 {res['retrieval_r1_mean']:.3f}"
            )
            if "cifar10_zeroshot_top1" in res:
                print(
                    f"CIFAR-10 test ({res['cifar10_n']} real photos): zero-shot top-1 "
                    f"{res['cifar10_zeroshot_top1']:.3f} (chance 0.100), linear probe "
                    f"{res['cifar10_linear_probe_top1']:.3f}"
                )
    finally:
        if a.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    write(a.out, results)
    print(f"wrote {a.out}")


def write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
