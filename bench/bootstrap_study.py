"""Does the bootstrapped filter's ``top30`` train a better CLIP than ``kept`` at equal samples seen?

Runs after ``bench/bootstrap_filter.py`` on one of its pools (its build and bootstrap scores under
bench/results/work/bootstrap/): re-cuts the pool's bands by the last round's held-out scores
(``[quality] score = "bootstrap"``, as ``tiers bootstrap`` does), then a ``tiers study``
(``pipelines.study.run_study``) of ``--tiers`` x ``--budgets`` x ``--seeds`` with a tiny CLIP, and zero-shot
evaluation on photos the pool never held:

- ``cifar``: the CIFAR-10 test photos the pool did not draw (up to ``--eval-n``), 10 classes, the
  pool's caption phrasings as prompts;
- ``synthetic``: the synthetic web's own held-out ``eval/zeroshot.parquet`` (25 concepts).

Prints each tier's misaligned share, then the study's own cells (mean and 95% interval, seeds,
repetition) and verdicts (``pipelines.analysis``: paired over seeds, Holm over the comparisons), the
one summary of the runs; writes them with every seed's accuracy to bench/results/bootstrap_study_<pool>.json.

    .venv/bin/python bench/bootstrap_study.py --pool cifar [--budgets 20000] [--seeds 0,1,2] [--model M]
        [--until-decided [--max-runs 20]]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the repo: bench/train.py must not shadow the train package
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
RESULTS = ROOT / "bench" / "results"


def cifar_eval(web: Path, out: Path, n: int) -> tuple[str, str]:
    """The CIFAR-10 test photos the pool did not use, as a zero-shot set, and its classes.json."""
    from bootstrap_filter import CIFAR_TEMPLATES, DATA

    out.mkdir(parents=True, exist_ok=True)
    t = pq.read_table(DATA / "cifar10" / "test.parquet", columns=["image", "label", "label_name"])
    pool_bytes = open(web / "blobs.bin", "rb").read()
    routes = pq.read_table(web / "routes.parquet").to_pylist()
    used = {pool_bytes[r["offset"] : r["offset"] + r["length"]] for r in routes}
    rows = [k for k, b in enumerate(t.column("image").to_pylist()) if b not in used][:n]
    names = sorted(set(t.column("label_name").to_pylist()))
    label = [names.index(x) for x in t.column("label_name").to_pylist()]
    pq.write_table(
        pa.table(
            {
                "image": t.column("image").take(rows),
                "label": pa.array([label[k] for k in rows], pa.int64()),
                "label_name": t.column("label_name").take(rows),
            }
        ),
        out / "zeroshot.parquet",
    )
    (out / "classes.json").write_text(json.dumps({"classnames": names, "templates": list(CIFAR_TEMPLATES)}))
    return str(out / "zeroshot.parquet"), str(out / "classes.json")


def misaligned_share(build: Path, web: Path, tiers: list[str]) -> dict[str, float]:
    from curate.core.manifest import load_manifest

    truth = pq.read_table(web / "truth.parquet").to_pydict()
    aligned = truth["aligned"] if "aligned" in truth else [k == "clean" for k in truth["kind"]]
    aligned_of = dict(zip(truth["uid"], aligned, strict=True))
    samples = pq.read_table(build / "samples.parquet", columns=["uid", "band"]).to_pydict()
    bands = load_manifest(build).tiers
    out = {}
    for tier in tiers:
        members = set(bands[tier].bands)
        uids = [u for u, b in zip(samples["uid"], samples["band"], strict=True) if b in members]
        out[tier] = round(float(np.mean([not aligned_of[u] for u in uids])), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default="cifar", choices=["cifar", "synthetic"])
    ap.add_argument("--tiers", default="top30,kept")
    ap.add_argument("--budgets", default="20000")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--model", default="ct-vit-micro-32")
    ap.add_argument("--eval-n", type=int, default=2000)
    ap.add_argument("--until-decided", action="store_true", help="add seeds while the comparison is undecided")
    ap.add_argument("--max-runs", type=int, default=20, help="with --until-decided: runs in all, at most")
    ap.add_argument("--work", type=Path, default=RESULTS / "work" / "bootstrap")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from pipelines.analysis import describe
    from pipelines.build import retier, stored_config
    from pipelines.study import StudyConfig, make_variants, run_study, study_analysis
    from train.plan import EvalSets

    build, web = args.work / args.pool, args.work / f"{args.pool}_web"
    if not (build / "bootstrap" / "scores.parquet").exists():
        print(
            f"no bootstrap scores in {build}; run bench/bootstrap_filter.py --pools {args.pool} first", file=sys.stderr
        )
        return 2
    cfg = stored_config(build)
    retier(
        build, dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, score="bootstrap")), progress=False
    )
    if args.pool == "cifar":
        zeroshot, classes = cifar_eval(web, args.work / "cifar_eval", args.eval_n)
    else:
        zeroshot, classes = str(web / "eval" / "zeroshot.parquet"), str(web / "eval" / "classes.json")
    tiers = args.tiers.split(",")
    study = StudyConfig(
        tiers_dir=str(build),
        tiers=tuple(tiers),
        budgets=tuple(int(b) for b in args.budgets.split(",")),
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        variants=make_variants({"preset": "baseline"}, model=args.model),
        eval=EvalSets(zeroshot=zeroshot, classes=classes),
        name=f"bootstrap-{args.pool}",
    )
    study_dir = args.work / f"{args.pool}_study_bootstrap"
    rows = run_study(study, study_dir, until_decided=args.until_decided, max_runs=args.max_runs)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "misaligned": misaligned_share(build, web, tiers)}
    n_classes = len(json.loads(Path(classes).read_text())["classnames"])
    print(f"{args.pool}: tiers cut by bootstrap scores; zero-shot top-1 on held-out photos")
    for tier in tiers:
        print(f"  {tier:<6} misaligned share {result['misaligned'][tier]:.3f}")
    # Cells and verdicts from the study's own analysis: intervals over seeds (or eval samples, one seed),
    # comparisons paired over seeds, the family held at 5% by Holm (with --until-decided, spent over its looks).
    analysis = study_analysis(study, study_dir, rows)
    for line in describe(analysis, chance=1 / n_classes):
        print(line)
    for c in analysis.cells:
        runs = sorted(
            (r for r in rows if r["tier"] == c.tier and r["samples_seen"] == c.budget), key=lambda r: r["seed"]
        )
        result[f"{c.tier}@{c.budget}"] = {
            "seeds": {str(r["seed"]): round(r["zeroshot_top1"], 4) for r in runs},
            "mean": round(c.accuracy.mean, 4),
            "interval": [round(c.accuracy.lo, 4), round(c.accuracy.hi, 4)],
            "interval_covers": c.accuracy.label(),
            "repetition": round(c.repetition, 2),
            "misaligned": result["misaligned"][c.tier],
        }
    result["verdicts"] = [
        {
            "comparison": v.comparison.key,
            "status": v.status,
            "winner": v.winner,
            "gap": round(v.gap.mean, 4),
            "text": v.text,
        }
        for v in analysis.verdicts
    ]
    out = RESULTS / f"bootstrap_study_{args.pool}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
