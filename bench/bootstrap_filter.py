"""The bootstrapped filter: how well do held-out filter CLIPs trained on the pool itself tell aligned
pairs from misaligned ones, round by round?

Three pools, each served on 127.0.0.1 and put through ``tiers build`` (download, annotate, dedup,
filters; no CLIP anywhere), then ``pipelines.bootstrap.run_bootstrap`` (``--rounds`` rounds, ``--folds``
folds, each fold scored by a ``--model`` CLIP trained from scratch on the other folds for ``--epochs``
passes over them, or ``--samples`` samples seen; the defaults are ``tiers bootstrap``'s):

- ``synthetic``: a synthetic web of ``--synthetic-n`` URLs, half clean, half ``misaligned`` (a caption
  naming another concept): base rate 0.5, truth from ``truth.parquet``;
- ``cifar``: ``--cifar-n`` CIFAR-10 test photos, each captioned "a photo of a {class}" (in several
  phrasings) naming its own class or, for half of them, another class;
- ``coco``: the 239 COCO photos, each with each of its 5 human captions or, for half of the pairs,
  the same-numbered caption of another photo; folds go by photo (``fold_by``), so no model trains on
  a photo whose other captions it scores, and dedup is off (a photo appears five times).

Reported per pool and round, on held-out scores only (a sample's score never comes from a model
that trained on it): ROC AUC of the score for aligned against misaligned pairs, the misaligned share
of ``top20`` (the best 20% by the score) against ``kept``, and top-20% alignment precision; round 0 is
the heuristic ranking the build made without a model. Work is kept under
bench/results/work/bootstrap/ so a rerun trains nothing already trained. Writes
bench/results/bootstrap_filter.json.

    .venv/bin/python bench/bootstrap_filter.py [--pools synthetic,cifar,coco] [--rounds 2] [--cifar-n 10000]
        [--folds 5] [--model ct-rn-micro-32] [--epochs 6 | --samples N] [--seed 0] [--set lr=3e-3 ...]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
CIFAR_TEMPLATES = ("a photo of a {}.", "a {} in the picture.", "there is a {} here.", "a close-up photo of the {}.")

BUILD = """
[download]
image_size = 64
resize_only_if_bigger = true
timeout = 5
samples_per_shard = 2000
threads = 16
[filters]
preset = "synthetic-basic"
image_size = 64
[quality]
score = "heuristic"
[bands]
edges = [0.2, 0.3, 0.5, 1.0]
[shards]
shard_size = 500
"""


def synthetic_web(out: Path, n: int) -> Path:
    from synthweb import WebConfig, build

    if not (out / "web.json").exists():
        build(out, WebConfig(n=n, seed=7, mix={"clean": 0.5, "misaligned": 0.5}, eval_per_concept=8))
    return out


def cifar_web(out: Path, n: int, seed: int = 0) -> Path:
    from synthweb.pairs import write_pairs

    if (out / "urls.parquet").exists():
        have = pq.read_metadata(out / "urls.parquet").num_rows
        if have != n:
            raise SystemExit(f"{out} holds a {have:,}-photo pool, not {n:,}: use another --work or that --cifar-n")
        return out
    t = pq.read_table(DATA / "cifar10" / "test.parquet", columns=["image", "label_name"]).to_pydict()
    rng = np.random.default_rng([seed, 11])
    classes = sorted(set(t["label_name"]))
    pick = rng.permutation(len(t["image"]))[:n]
    aligned = rng.random(n) < 0.5
    caps = []
    for k, a in zip(pick, aligned, strict=True):
        name = t["label_name"][k] if a else rng.choice([c for c in classes if c != t["label_name"][k]])
        caps.append(CIFAR_TEMPLATES[int(rng.integers(len(CIFAR_TEMPLATES)))].format(name))
    return write_pairs(out, [t["image"][k] for k in pick], caps, truth={"aligned": aligned.tolist()})


def coco_web(out: Path, seed: int = 0) -> Path:
    from PIL import Image

    from synthweb.pairs import write_pairs

    if (out / "urls.parquet").exists():
        return out
    t = pq.read_table(DATA / "coco_mini" / "coco_mini_pairs.parquet", columns=["image", "image_id", "captions"])
    t = t.to_pydict()
    rng = np.random.default_rng([seed, 13])
    images, caps, photo, aligned = [], [], [], []
    for k, (data, pid) in enumerate(zip(t["image"], t["image_id"], strict=True)):
        im = Image.open(io.BytesIO(data)).convert("RGB")
        im.thumbnail((96, 96), Image.LANCZOS)  # the filter CLIPs see 32 px; keep the served bytes small
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        for j in range(5):
            a = bool(rng.random() < 0.5)
            other = k if a else int(rng.choice([x for x in range(len(t["image"])) if x != k]))
            images.append(buf.getvalue())
            caps.append(t["captions"][other][j % len(t["captions"][other])])
            photo.append(str(pid))
            aligned.append(a)
    return write_pairs(out, images, caps, columns={"photo": photo}, truth={"aligned": aligned})


def build_pool(web: Path, out: Path, dedup: bool) -> None:
    import dataclasses
    import tomllib

    from pipelines.build import build, config_from_toml
    from synthweb import WebServer

    cfg = config_from_toml(tomllib.loads(BUILD))
    if not dedup:
        off = dataclasses.replace(cfg.dedup, exact=False, pixels=False, near=False)
        cfg = dataclasses.replace(cfg, dedup=off)
    if (out / "tiers" / "manifest.json").exists():
        return
    from curate.core.runtime import ray_session

    with ray_session(), WebServer(web, slow_seconds=5) as server:
        build(server.urls_path, out, cfg, allow_private="loopback", progress=False)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    both = np.concatenate([pos, neg])
    ranks = np.empty(len(both))
    order = np.argsort(both, kind="mergesort")
    ranks[order] = np.arange(1, len(both) + 1)
    for v in np.unique(both):
        m = both == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def figures(score: np.ndarray, aligned: np.ndarray, uids: np.ndarray) -> dict:
    order = np.lexsort((uids, -score))
    top = order[: int(round(0.2 * len(score)))]
    return {
        "auc": round(auc(score[aligned], score[~aligned]), 4),
        "misaligned_kept": round(float((~aligned).mean()), 4),
        "misaligned_top20": round(float((~aligned[top]).mean()), 4),
        "precision_top20": round(float(aligned[top].mean()), 4),
        "kept": int(len(score)),
    }


def evaluate(build_dir: Path, web: Path, rounds: int) -> dict:
    truth = pq.read_table(web / "truth.parquet").to_pydict()
    aligned = truth["aligned"] if "aligned" in truth else [k == "clean" for k in truth["kind"]]  # synthetic web
    aligned_of = dict(zip(truth["uid"], aligned, strict=True))
    samples = pq.read_table(build_dir / "samples.parquet", columns=["uid", "status", "quality"]).to_pydict()
    kept = [k for k, s in enumerate(samples["status"]) if s == "kept"]
    uids = np.asarray([samples["uid"][k] for k in kept], dtype=object)
    out = {
        "round 0 (heuristic)": figures(
            np.asarray([samples["quality"][k] for k in kept], float), np.asarray([aligned_of[u] for u in uids]), uids
        )
    }
    for r in range(1, rounds + 1):
        s = pq.read_table(build_dir / "bootstrap" / f"r{r}" / "scores.parquet").to_pydict()
        u = np.asarray(s["uid"], dtype=object)
        out[f"round {r}"] = figures(np.asarray(s["bootstrap_score"], float), np.asarray([aligned_of[x] for x in u]), u)
    return out


def main(argv: list[str] | None = None) -> int:
    from pipelines.bootstrap import BootstrapConfig, run_bootstrap

    d = BootstrapConfig()  # the bench measures `tiers bootstrap`'s defaults unless told otherwise
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pools", default="synthetic,cifar,coco")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--samples", type=int, default=d.samples_seen, help="samples seen by each filter CLIP (0: --epochs)"
    )
    ap.add_argument("--epochs", type=float, default=d.epochs, help="passes of each filter CLIP over its training pool")
    ap.add_argument("--model", default=d.model)
    ap.add_argument("--folds", type=int, default=d.folds, help="held-out folds: each filter CLIP trains on (k-1)/k")
    ap.add_argument("--seed", type=int, default=d.seed, help="folds and filter CLIPs' seed (the pools stay the same)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="filter CLIPs' TrainConfig")
    ap.add_argument("--synthetic-n", type=int, default=4000)
    ap.add_argument(
        "--cifar-n", type=int, default=8000, help="photos in the pool (of 10,000; the rest: the study's eval set)"
    )
    ap.add_argument("--work", type=Path, default=RESULTS / "work" / "bootstrap")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from train.config import parse_set

    results = {"args": {k: str(v) for k, v in vars(args).items()}}
    for pool in args.pools.split(","):
        t0 = time.perf_counter()
        web = args.work / f"{pool}_web"
        if pool == "synthetic":
            synthetic_web(web, args.synthetic_n)
        elif pool == "cifar":
            cifar_web(web, args.cifar_n)
        elif pool == "coco":
            coco_web(web)
        else:
            raise SystemExit(f"unknown pool {pool!r}")
        build_pool(web, args.work / pool, dedup=pool != "coco")
        cfg = BootstrapConfig(
            rounds=args.rounds,
            folds=args.folds,
            seed=args.seed,
            model=args.model,
            samples_seen=args.samples,
            epochs=args.epochs,
            fold_by="photo" if pool == "coco" else "uid",
            train=parse_set(args.set),
            device="cpu",
        )
        run_bootstrap(args.work / pool, cfg)
        results[pool] = evaluate(args.work / pool, web, args.rounds)
        results[pool]["seconds"] = round(time.perf_counter() - t0)
        results[pool]["args"] = results["args"]
        print(f"{pool}:")
        for name, f in results[pool].items():
            if isinstance(f, dict) and "auc" in f:
                print(
                    f"  {name:<20} AUC {f['auc']:.3f}  misaligned: kept {f['misaligned_kept']:.3f}, "
                    f"top20 {f['misaligned_top20']:.3f}  (top-20% precision {f['precision_top20']:.3f}, "
                    f"{f['kept']} kept)"
                )
        out = RESULTS / "bootstrap_filter.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(out.read_text()) if out.exists() else {}
        out.write_text(json.dumps({**old, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
