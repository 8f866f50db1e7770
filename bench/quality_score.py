"""The no-model quality score on real photos and generated junk: where does the junk rank?

The pool: ``--photos`` CIFAR-10 test photos (32 px) and the 239 COCO photos resized to a long side
of 256-512 px (``../shared/data``), plus ``--junk`` images of each kind of
:mod:`synthweb.junk` (noise, flat colour, tiny upscales, text screenshots, JPEG at quality
1-7), each at the size of a photo drawn half from CIFAR, half from COCO. Every image gets a caption
drawn at random from real CC3M alt-texts, so captions say nothing about which images are junk and
the ranking is the image part's. Each image goes through the annotate stage itself
(``curate.annotate.Annotator``: one decode, every signal, fastText language ID), then is scored by
the heuristic before issue 17 (rewarding entropy and sharpness) and by today's
(``curate.select.quality.heuristic``). Printed and written to bench/results/quality_score.json:

- the share of junk in the top 10 / 30 / 50 % of each ranking against its share of the pool, in
  all and per kind (the goal: below the pool share at every cut);
- every term of today's image part, measured: its mean on photos and on each junk kind, and its
  ROC AUC for photos against that kind (1.0: the term alone puts every photo above every such image).

    .venv/bin/python bench/quality_score.py [--photos 1000] [--junk 100]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
CUTS = (0.1, 0.3, 0.5)


def heuristic_before(table: pa.Table, ref_side: int = 224) -> np.ndarray:
    """The no-model score as it was before issue 17 (curate/quality.py at d9c4588), for comparison."""
    from curate.core import schema
    from curate.select.quality import QualityConfig, _col, caption_part

    text = caption_part(table, QualityConfig())
    side = np.minimum(_col(table, schema.WIDTH, 0.0), _col(table, schema.HEIGHT, 0.0))
    aspect = np.maximum(_col(table, schema.ASPECT, 1.0), 1.0)
    image = (
        np.minimum(side / ref_side, 1.0)
        + (1 - _col(table, schema.BLANK_SHARE, 0.0))
        + np.clip(_col(table, schema.ENTROPY, 0.0) / 8.0, 0, 1)
        + (1 - np.exp(-np.maximum(_col(table, schema.SHARPNESS, 0.0), 0) / 100.0))
        + np.minimum(1.0, 2.0 / aspect)
    ) / 5
    return ((text + image) / 2).astype(np.float32)


def _jpeg(img, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def pool(n_photos: int, n_junk: int, seed: int) -> tuple[list[bytes], list[str], list[str]]:
    """(image bytes, kind, size group) per image; kind is "photo" or a junk kind."""
    from PIL import Image

    from synthweb.junk import KINDS, junk

    rng = np.random.default_rng(seed)
    cifar = pq.read_table(DATA / "cifar10" / "test.parquet", columns=["image"]).column("image").to_pylist()
    coco = pq.read_table(DATA / "coco_mini" / "coco_mini_pairs.parquet", columns=["image"]).column("image").to_pylist()
    big = []
    for data in coco:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        s = float(rng.uniform(256, 512)) / max(im.size)
        big.append(im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS))
    blobs, kinds, groups = [], [], []
    for data in cifar[:n_photos]:
        blobs.append(data)
        kinds.append("photo")
        groups.append("32px")
    for im in big:
        blobs.append(_jpeg(im))
        kinds.append("photo")
        groups.append("256px+")
    spare = [Image.open(io.BytesIO(d)).convert("RGB") for d in cifar[-n_junk:]]  # never in the pool
    for kind in KINDS:
        for k in range(n_junk):
            small = k % 2 == 0
            src = spare[k] if small else big[int(rng.integers(len(big)))]
            blobs.append(_jpeg(junk(kind, rng, src.size, src), 95 if kind == "compressed" else 92))
            kinds.append(kind)
            groups.append("32px" if small else "256px+")
    return blobs, kinds, groups


def annotate(blobs: list[bytes], seed: int) -> pa.Table:
    from curate.annotate import AnnotateConfig, Annotator
    from curate.annotate.raw import IMAGE, SAMPLE_SCHEMA
    from curate.core import schema

    captions = pq.read_table(DATA / "web_captions" / "cc3m_validation.parquet", columns=["caption"])
    captions = captions.column("caption").to_pylist()
    rng = np.random.default_rng([seed, 3])
    n = len(blobs)
    batch = pa.table(
        {
            schema.UID: [f"q{k:06d}" for k in range(n)],
            schema.URL: [f"http://example.invalid/{k}.jpg" for k in range(n)],
            schema.CAPTION: [captions[int(i)] for i in rng.integers(len(captions), size=n)],
            schema.SHARD: ["00000"] * n,
            schema.KEY: [f"{k:09d}" for k in range(n)],
            schema.ORIGINAL_WIDTH: pa.nulls(n, pa.int32()),
            schema.ORIGINAL_HEIGHT: pa.nulls(n, pa.int32()),
            IMAGE: pa.array(blobs, pa.binary()),
        },
        schema=SAMPLE_SCHEMA,
    )
    annotator = Annotator(AnnotateConfig())
    return pa.concat_tables([annotator(batch.slice(s, 256)) for s in range(0, n, 256)])


def junk_shares(score: np.ndarray, kinds: np.ndarray) -> dict:
    order = np.lexsort((np.arange(len(score)), -score))
    out = {"pool": {k: round(float((kinds == k).mean()), 4) for k in ["junk", *sorted(set(kinds) - {"photo"})]}}
    out["pool"]["junk"] = round(float((kinds != "photo").mean()), 4)
    for cut in CUTS:
        top = kinds[order[: int(round(cut * len(score)))]]
        shares = {"junk": round(float((top != "photo").mean()), 4)}
        shares.update({k: round(float((top == k).mean()), 4) for k in sorted(set(kinds) - {"photo"})})
        out[f"top{round(cut * 100)}"] = shares
    return out


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a random photo's term above a random junk image's), ties half."""
    both = np.concatenate([pos, neg])
    ranks = np.argsort(np.argsort(both, kind="mergesort"), kind="mergesort").astype(np.float64) + 1
    for v in np.unique(both):
        m = both == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=1000, help="CIFAR-10 photos in the pool (plus 239 COCO)")
    ap.add_argument("--junk", type=int, default=100, help="images of each junk kind")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not (DATA / "cifar10" / "test.parquet").exists():
        print(f"needs {DATA} (cifar10, coco_mini, web_captions); not found", file=sys.stderr)
        return 2
    from curate.select.quality import QualityConfig, heuristic, image_terms

    t0 = time.perf_counter()
    from curate.annotate.stage import SIGNALS_VERSION

    tag = f"{args.photos}_{args.junk}_{args.seed}_signals{SIGNALS_VERSION}"
    cache = RESULTS / "cache" / f"quality_score_{tag}.parquet"  # delete it after changing a signal's code
    blobs, kinds, groups = pool(args.photos, args.junk, args.seed)
    if cache.exists() and pq.read_metadata(cache).num_rows == len(blobs):
        table = pq.read_table(cache)
    else:
        table = annotate(blobs, args.seed)
        cache.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, cache)
    kinds, groups = np.asarray(kinds, dtype=object), np.asarray(groups, dtype=object)
    results = {"args": vars(args), "images": len(kinds), "seconds_to_annotate": round(time.perf_counter() - t0, 1)}
    scores = {"before": heuristic_before(table), "after": heuristic(table)}
    for name, s in scores.items():
        results[name] = {"all": junk_shares(s, kinds)}
        for g in ("32px", "256px+"):
            results[name][g] = junk_shares(s[groups == g], kinds[groups == g])
    terms = image_terms(table, QualityConfig())
    photo = kinds == "photo"
    results["terms"] = {
        term: {
            "mean_photo": round(float(v[photo].mean()), 3),
            **{
                k: {
                    "mean": round(float(v[kinds == k].mean()), 3),
                    "auc_photo_vs": round(auc(v[photo], v[kinds == k]), 3),
                }
                for k in sorted(set(kinds) - {"photo"})
            },
        }
        for term, v in terms.items()
    }
    for name in scores:
        r = results[name]["all"]
        print(
            f"{name:<6} junk share: pool {r['pool']['junk']:.3f}; "
            + ", ".join(f"top{round(c * 100)} {r[f'top{round(c * 100)}']['junk']:.3f}" for c in CUTS)
        )
        for k in sorted(set(kinds) - {"photo"}):
            print(
                f"         {k:<13} pool {r['pool'][k]:.3f}  "
                + "  ".join(f"top{round(c * 100)} {r[f'top{round(c * 100)}'][k]:.3f}" for c in CUTS)
            )
    print("terms (mean on photos; AUC photos vs each junk kind):")
    for term, v in results["terms"].items():
        print(
            f"  {term:<11} photo {v['mean_photo']:.2f}  "
            + "  ".join(f"{k} {v[k]['auc_photo_vs']:.2f}" for k in sorted(set(kinds) - {"photo"}))
        )
    out = RESULTS / "quality_score.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
