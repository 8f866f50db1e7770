"""Standard evaluation on real data: CIFAR-10's test set with clip_benchmark's class names and OpenAI prompt
ensemble (``cifar10=PATH``) against the default prompts, on the same model and images.

The model is a `tiers train` run (``--run``), or, by default, a tiny CLIP trained here on a synthetic web's
clean samples: it has never seen a photo, so its CIFAR-10 accuracy sits near chance (10%) with either prompt
set. What this measures is that the standard path runs on the real 10,000 images, how long it takes, and the
prompt set's effect on this model; numbers comparable with published ones need a pretrained CLIP, which
this machine cannot download. Needs ../shared/data/cifar10/test.parquet. Writes
bench/results/standard_eval.json.

    .venv/bin/python bench/standard_eval.py [--run RUN] [--limit 0] [--samples 4096]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
CIFAR = REPO.parent / "shared" / "data" / "cifar10" / "test.parquet"


def tiny_run(root: Path, samples: int) -> Path:
    from synthweb import WebConfig, build
    from synthweb.shards import shards_from_synthweb
    from train import api
    from train.config import make_config

    build(root / "web", WebConfig(n=1000, seed=0, mix={"clean": 1.0}))
    shards_from_synthweb(root / "web", root / "tiers", {"full": 1.0}, shard_size=500)
    cfg = make_config({"model": "ct-vit-tiny-32", "samples_seen": samples, "batch_size": 64, "workers": 1})
    api.train(cfg, root / "tiers", "full", root / "run", progress=False)
    return root / "run"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a `tiers train` run (default: train a tiny one on synthetic data)")
    p.add_argument("--limit", type=int, default=0, help="CIFAR-10 rows (0: all 10,000)")
    p.add_argument("--samples", type=int, default=4096, help="samples seen by the tiny run")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "standard_eval.json")
    a = p.parse_args(argv)
    if not CIFAR.is_file():
        print(f"no {CIFAR}: nothing to measure")
        return 0
    from curate.core.runtime import quiet_environment
    from train import api
    from train.config import EvalConfig

    quiet_environment()
    root = Path(tempfile.mkdtemp(prefix="bench-stdeval-"))
    try:
        run = a.run or tiny_run(root, a.samples)
        res = {"run": str(a.run or f"tiny synthetic run (ct-vit-tiny-32, {a.samples:,} samples seen)")}
        for name in ("cifar10", "plain"):
            shutil.rmtree(root / "eval", ignore_errors=True)
            t0 = time.perf_counter()
            # a copy of the run's model, so each evaluation starts afresh
            shutil.copytree(api.rundir.model_dir(run), root / "eval" / "model")
            report = api.evaluate(root / "eval", EvalConfig(zeroshot=(f"{name}={CIFAR}",), limit=a.limit))
            r = report.get("zeroshot", name)
            r["seconds"] = time.perf_counter() - t0
            res[name] = {k: v for k, v in r.items() if k != "templates"}
            print(
                f"{name:<8} top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  n {r['n']}  "
                f"prompts {r.get('templates_from', 'default (4 templates)')}  {r['seconds']:.0f} s"
            )
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2))
        print(f"wrote {a.out}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
