"""Near-copy dedup on real photos: recall per transformation and size, and unique photos wrongly removed.

Two pools, built from ``../shared/data`` (never from the synthetic web):

- ``32px``: the first ``--originals`` CIFAR-10 test photos (32x32) each get one near copy per family
  of :mod:`synthweb.copies` (resize 0.5-1.5x, crop 1-10% per side, JPEG 30-95, brightness and
  contrast, PNG and WebP round trips, and all of resize + crop + tone + JPEG at once); the other CIFAR
  test photos are the uniques.
- ``256px``: the 239 COCO photos, each resized so its long side is 256-512 px, with one copy per
  family; uniques are the four quadrants of every COCO photo (a 50% crop is not a near copy) and
  ``--upscaled`` CIFAR photos upscaled to 256 px (the web's tiny upscales).

Every image goes through the annotate stage's decoder and signals (``curate.annotate.image``), and the
decision is ``curate.dedup.deduplicate`` on that table, as in ``tiers dedup``. A copy is found when it
ends in its original's cluster; a unique is wrongly removed when it is not its cluster's keeper.
CIFAR-10's test set holds near duplicates of its own (the same car photographed a moment apart, the
same photo shifted): links between two CIFAR uniques are listed apart (``source_pairs``) with their
classes, and drawn to ``bench/results/dedup_real_<pool>_links.png`` so a person can judge them.

    .venv/bin/python bench/dedup_real.py [--originals 1000] [--upscaled 2000]

Prints the figures for the default detector and for pHash alone (k = 6, shape within 5%: the
detector before issue 17), and writes bench/results/dedup_real.json. Signals are cached under
bench/results/cache/, so a rerun with other thresholds decodes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
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
CACHE_VERSION = 2


def _jpeg(img, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def pool_rows(name: str, originals: int, upscaled: int, seed: int = 0) -> list[dict]:
    """Rows of uid, image bytes, role (original / copy / unique), source, family, label."""
    from PIL import Image

    from synthweb.copies import FAMILIES, near_copy

    rng = np.random.default_rng([seed, 17])
    cifar = pq.read_table(DATA / "cifar10" / "test.parquet", columns=["image", "label_name"]).to_pydict()
    rows = []

    def add(data, role, source, family=None, label=None):
        rows.append({"uid": f"{role}-{len(rows):06d}", "image": data, "role": role, "source": source})
        rows[-1].update(family=family, label=label)

    if name == "32px":
        first = seed * originals  # another seed takes other CIFAR photos as originals
        for k, (data, label) in enumerate(zip(cifar["image"], cifar["label_name"], strict=True)):
            is_original = first <= k < first + originals
            add(data, "original" if is_original else "unique", f"cifar{k}", label=label)
            if is_original:
                im = Image.open(io.BytesIO(data)).convert("RGB")
                for f in FAMILIES:
                    add(near_copy(im, f, rng), "copy", f"cifar{k}", f, label)
        return rows
    coco = pq.read_table(DATA / "coco_mini" / "coco_mini_pairs.parquet", columns=["image", "image_id"]).to_pydict()
    for data, cid in zip(coco["image"], coco["image_id"], strict=True):
        im = Image.open(io.BytesIO(data)).convert("RGB")
        s = float(rng.uniform(256, 512)) / max(im.size)
        orig = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
        add(_jpeg(orig), "original", f"coco{cid}", label="coco")
        for f in FAMILIES:
            add(near_copy(orig, f, rng, min_side=16), "copy", f"coco{cid}", f, "coco")
        w, h = im.size
        for q, box in enumerate(
            ((0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h))
        ):
            add(_jpeg(im.crop(box)), "unique", f"coco{cid}q{q}", label="coco-quadrant")
    for k in range(upscaled):
        im = Image.open(io.BytesIO(cifar["image"][-1 - k])).convert("RGB").resize((256, 256), Image.BICUBIC)
        add(_jpeg(im), "unique", f"cifar{len(cifar['image']) - 1 - k}-up", label=cifar["label_name"][-1 - k])
    return rows


def signals(rows: list[dict]) -> pa.Table:
    """The annotate stage's image columns for every row (one decode each)."""
    from curate.annotate import image as img
    from curate.core import schema

    cols = {k: [] for k in ("sha256", "pixel_hash", "phash", "width", "height", "thumb")}
    for r in rows:
        dec, err = img.decode(r["image"])
        if err:
            raise RuntimeError(f"{r['uid']}: {err}")
        m = img.measure(dec.pixels)
        cols["sha256"].append(img.sha256(r["image"]))
        for k in ("pixel_hash", "phash", "width", "height", "thumb"):
            cols[k].append(getattr(m, k))
    meta = {k: [r[k] for r in rows] for k in ("uid", "role", "source", "family", "label")}
    return pa.table(
        {
            **meta,
            schema.SHA256: cols["sha256"],
            schema.PIXEL_HASH: cols["pixel_hash"],
            schema.PHASH: pa.array(cols["phash"], pa.uint64()),
            schema.WIDTH: pa.array(cols["width"], pa.int32()),
            schema.HEIGHT: pa.array(cols["height"], pa.int32()),
            schema.THUMB: pa.array(cols["thumb"], pa.binary(schema.THUMB_BYTES)),
        }
    )


def load_pool(name: str, args) -> pa.Table:
    tag = f"v{CACHE_VERSION}_{args.originals}_{args.upscaled}_seed{args.seed}"
    path = RESULTS / "cache" / f"dedup_real_{name}_{tag}.parquet"
    if path.exists():
        return pq.read_table(path)
    t0 = time.perf_counter()
    table = signals(pool_rows(name, args.originals, args.upscaled, args.seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    print(f"{name}: {table.num_rows} images measured in {time.perf_counter() - t0:.0f} s -> {path}")
    return table


def score(pool: pa.Table, out: pa.Table) -> dict:
    """Recall per family (copy in its original's cluster), uniques wrongly removed, links between uniques."""
    role = np.asarray(pool.column("role").to_pylist(), dtype=object)
    source = np.asarray(pool.column("source").to_pylist(), dtype=object)
    family = np.asarray(pool.column("family").to_pylist(), dtype=object)
    uids = pool.column("uid").to_pylist()
    dup_of = out.column("dup_of").to_pylist()
    row = {u: k for k, u in enumerate(uids)}
    cluster = np.array([row[d] if d is not None else k for k, d in enumerate(dup_of)])
    orig_row = {s: k for k, (s, r) in enumerate(zip(source, role, strict=True)) if r == "original"}
    copies = np.flatnonzero(role == "copy")
    found = np.array([cluster[k] == cluster[orig_row[source[k]]] for k in copies])
    uniq = np.flatnonzero(role == "unique")
    removed = uniq[np.array([dup_of[k] is not None for k in uniq], bool)]
    # Sources wrongly merged: a cluster holding rows of more than one source.
    by_cluster: dict[int, set] = {}
    for k, c in enumerate(cluster):
        by_cluster.setdefault(int(c), set()).add(source[k])
    merged = sum(len(s) > 1 for s in by_cluster.values())
    return {
        "recall": round(float(found.mean()), 4),
        "recall_by_family": {
            f: round(float(found[family[copies] == f].mean()), 4) for f in dict.fromkeys(family[copies])
        },
        "copies": int(len(copies)),
        "uniques": int(len(uniq)),
        "uniques_wrongly_removed": int(len(removed)),
        "unique_wrongly_removed_share": round(len(removed) / max(len(uniq), 1), 5),
        "clusters_joining_sources": int(merged),
        "_removed": removed,
        "_cluster": cluster,
    }


def source_pairs(pool: pa.Table, res: dict, png: Path) -> list[dict]:
    """Wrongly removed uniques with their keeper, classes named, drawn side by side for a person."""
    from PIL import Image

    from curate.dedup.copies import thumbs

    label = pool.column("label").to_pylist()
    source = pool.column("source").to_pylist()
    _, t, _ = thumbs(pool.column("thumb"), pool.num_rows)
    pairs, tiles = [], []
    for k in res["_removed"]:
        keeper = int(res["_cluster"][k])
        pairs.append({"unique": source[k], "keeper": source[keeper], "classes": [label[k], label[keeper]]})
        tiles.append(np.concatenate([t[k], np.zeros((16, 2, 3)), t[keeper]], axis=1))
    if tiles:
        per_row = 8
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % per_row)
        grid = np.concatenate(
            [np.concatenate(tiles[r : r + per_row], axis=1) for r in range(0, len(tiles), per_row)], axis=0
        )
        Image.fromarray(grid.astype(np.uint8)).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(png)
    return pairs


def run_pool(name: str, args) -> dict:
    from curate.dedup import DedupConfig, deduplicate

    pool = load_pool(name, args)
    configs = {
        "default": DedupConfig(semantic=False),
        "phash_only_k6": DedupConfig(semantic=False, verify=False),
    }
    out = {"images": pool.num_rows}
    for label, cfg in configs.items():
        t0 = time.perf_counter()
        res = score(pool, deduplicate(pool.drop_columns(["role", "source", "family", "label"]), cfg))
        res["seconds"] = round(time.perf_counter() - t0, 2)
        if label == "default":
            res["source_pairs"] = source_pairs(pool, res, RESULTS / f"dedup_real_{name}_seed{args.seed}_links.png")
            cross = sum(p["classes"][0] != p["classes"][1] for p in res["source_pairs"])
            res["links_across_classes"] = cross
        res = {k: v for k, v in res.items() if not k.startswith("_")}
        res["config"] = {k: v for k, v in dataclasses.asdict(cfg).items() if k.startswith(("near", "verify", "copy"))}
        out[label] = res
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--originals", type=int, default=1000, help="CIFAR photos that get near copies (32px pool)")
    ap.add_argument("--upscaled", type=int, default=2000, help="CIFAR photos upscaled to 256 px as uniques")
    ap.add_argument("--pools", default="32px,256px")
    ap.add_argument("--seed", type=int, default=0, help="transformations drawn, and (32px) which photos are originals")
    ap.add_argument("--out", type=Path, help="default: bench/results/dedup_real[_seedN].json")
    args = ap.parse_args(argv)
    args.out = args.out or RESULTS / ("dedup_real.json" if args.seed == 0 else f"dedup_real_seed{args.seed}.json")
    if not (DATA / "cifar10" / "test.parquet").exists():
        print(f"needs {DATA}/cifar10 and coco_mini (../shared/data); not found", file=sys.stderr)
        return 2
    results = {"args": {k: str(v) for k, v in vars(args).items()}}
    for name in args.pools.split(","):
        results[name] = r = run_pool(name, args)
        for label in ("default", "phash_only_k6"):
            x = r[label]
            fams = "  ".join(f"{f} {v:.3f}" for f, v in x["recall_by_family"].items())
            print(
                f"{name} {label:<14} recall {x['recall']:.3f} ({fams}); uniques wrongly removed "
                f"{x['uniques_wrongly_removed']}/{x['uniques']} = {100 * x['unique_wrongly_removed_share']:.2f}%"
                f"; {x['seconds']} s"
            )
        d = r["default"]
        print(f"  {len(d['source_pairs'])} uniques removed, {d['links_across_classes']} of them across classes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
