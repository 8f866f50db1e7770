"""The Data Filtering Network path end to end: train a filter CLIP on trusted data, score the pool with it.

1. Trusted data: the clean part of a separate synthetic web (another seed, so the filter model never
   sees a pool image), written as tier shards by ``train.shards_from_synthweb``.
2. ``train.train`` fits a small CLIP (``--model``, ``--samples`` seen) on it, on this machine's CPU.
3. The pool: a synthetic web with the default raw-crawl mix (no private addresses), served on
   127.0.0.1, downloaded with plain img2dataset and annotated with ``--clip-model run:<the run>``;
   then once more with a randomly initialised model of the same architecture, as the floor.
4. Against ``truth.parquet``: how well ``clip_score`` separates clean pairs from misaligned, generic and
   foreign captions (ROC AUC), and what the ``clip-score`` preset (top 30%) keeps, by kind.

    .venv/bin/python bench/dfn.py [--n 2000] [--trusted-n 3000] [--samples 40000] [--model ct-vit-micro-32]

Prints the figures and writes bench/results/dfn.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from curate.core.runtime import quiet_environment  # noqa: E402

quiet_environment()

NOISY = ("misaligned", "generic", "foreign")


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counting half."""
    if not len(pos) or not len(neg):
        return float("nan")
    scores = np.concatenate([pos, neg])
    ranks = np.empty(len(scores))
    order = np.argsort(scores, kind="mergesort")
    ranks[order] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores):  # average ranks over ties
        m = scores == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def score_pool(build: Path, clip_model: str, kinds: dict[str, str]) -> dict:
    from curate.annotate import AnnotateConfig, annotate, read_annotations
    from curate.filters import apply_filters, build_filters, preset_config

    annotate(build, AnnotateConfig(clip_model=clip_model, device="cpu"), progress=False)
    t = read_annotations(build)
    uids = t.column("uid").to_pylist()
    k = np.array([kinds[u] for u in uids], dtype=object)
    s = t.column("clip_score").to_numpy(zero_copy_only=False)
    ok = ~np.isnan(s)
    out = {"auc_clean_vs": {n: auc(s[ok & (k == "clean")], s[ok & (k == n)]) for n in NOISY}}
    out["mean_score"] = {n: float(np.nanmean(s[k == n])) for n in ("clean", *NOISY) if (k == n).any()}
    keep = apply_filters(t, build_filters(preset_config("clip-score"))).keep
    out["pool_share"] = {n: float((k[ok] == n).mean()) for n in ("clean", *NOISY)}
    out["top30_share"] = {n: float((k[keep] == n).mean()) for n in ("clean", *NOISY)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="URLs in the pool")
    ap.add_argument("--trusted-n", type=int, default=3000, help="clean samples in the trusted web")
    ap.add_argument("--samples", type=int, default=40000, help="samples seen when training the filter model")
    ap.add_argument("--model", default="ct-vit-micro-32")
    ap.add_argument("--keep", type=Path, help="keep the work directory here instead of a temporary one")
    args = ap.parse_args(argv)

    import train
    from curate.annotate.clip import save_random_model
    from curate.annotate.raw import download_plain
    from curate.core.runtime import ray_session
    from synthweb import WebConfig, WebServer, build
    from synthweb.build import DEFAULT_MIX

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_dfn_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    t0 = time.perf_counter()
    trusted_web = work / "trusted_web"
    if not (trusted_web / "web.json").exists():
        build(trusted_web, WebConfig(n=args.trusted_n, seed=101, mix={"clean": 1.0}, eval_per_concept=1))
    manifest = train.shards_from_synthweb(trusted_web, work / "trusted", tiers={"trusted": 1.0})
    cfg = train.make_config({"model": args.model, "samples_seen": args.samples})
    t1 = time.perf_counter()
    summary = train.train(cfg, manifest, "trusted", work / "run", progress=False)
    results["train"] = {"seconds": time.perf_counter() - t1, **{k: summary.get(k) for k in ("steps", "samples_seen")}}
    print(f"filter model {args.model}: {args.samples} samples seen in {results['train']['seconds']:.0f} s")

    pool_web = work / "pool_web"
    if not (pool_web / "web.json").exists():
        mix = {k: v for k, v in DEFAULT_MIX.items() if k != "private_address"}
        build(pool_web, WebConfig(n=args.n, seed=0, mix=mix, eval_per_concept=1, retrieval_pairs=5))
    if not (work / "pool" / "raw").exists():
        with WebServer(pool_web, slow_seconds=5) as web:
            download_plain(web.urls_path, work / "pool", samples_per_shard=500, threads=32)
    truth = pq.read_table(pool_web / "truth.parquet", columns=["uid", "kind"]).to_pydict()
    kinds = dict(zip(truth["uid"], truth["kind"], strict=True))

    model_cfg = json.loads((ROOT / "train" / "model_configs" / f"{args.model}.json").read_text())
    random_spec = save_random_model(work / "random_model", model_cfg)
    with ray_session():
        results["random"] = score_pool(work / "pool", random_spec, kinds)
        results["dfn"] = score_pool(work / "pool", f"run:{work / 'run'}", kinds)
    results["seconds"] = time.perf_counter() - t0

    print(f"\npool of {args.n} URLs; clip_score as a separator of clean pairs from noisy ones (ROC AUC):")
    print(f"  {'scorer':<22} " + " ".join(f"{n:>11}" for n in NOISY))
    for name in ("random", "dfn"):
        r = results[name]
        label = "random weights" if name == "random" else f"DFN ({args.model})"
        print(f"  {label:<22} " + " ".join(f"{r['auc_clean_vs'][n]:>11.3f}" for n in NOISY))
    print("\nshare of each kind: in the pool vs in the clip-score preset's top 30%")
    for name in ("random", "dfn"):
        r = results[name]
        cells = "  ".join(f"{n} {r['pool_share'][n]:.2f}->{r['top30_share'][n]:.2f}" for n in ("clean", *NOISY))
        print(f"  {name:<8} {cells}")
    out = ROOT / "bench" / "results" / "dfn.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out} ({results['seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
