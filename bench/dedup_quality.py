"""Dedup quality on the synthetic web, against truth.parquet, through the real chain; then on real photos.

Builds a synthetic web, downloads it with `tiers download`, annotates it, deduplicates, and prints:
exact duplicates removed (target >= 0.99), near duplicates removed (>= 0.95), per near-copy family
(the web's near copies are made by synthweb/copies.py, as the real-photo benchmark's are),
unique samples wrongly removed (< 0.5%), for the default detector (pHash and thumbnail-neighbour
candidates verified by aligned thumbnails) and for pHash alone at several k (the detector before).
Then decontamination against the web's zero-shot set: pool images wrongly flagged as eval copies (the
synthetic web holds none), and the share of planted copies (each eval image resized to 80% and
re-encoded as JPEG) found, with and without the shape check. Finally, unless ``--no-real``, the
real-photo benchmark (bench/dedup_real.py: CIFAR-10 and COCO photos from ../shared/data).
Writes bench/results/dedup_quality.json (and dedup_real.json).

    .venv/bin/python bench/dedup_quality.py [--n 3000] [--no-real]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, not the one the venv's editable install points at
from curate.annotate import AnnotateConfig, annotate, read_annotations  # noqa: E402
from curate.dedup import DedupConfig, deduplicate  # noqa: E402
from synthweb import DEFAULT_MIX, WebConfig, WebServer, build  # noqa: E402

# Kinds that need no download to tell apart (and private_address must never be fetched).
SKIP = {"private_address", "slow"}


def download(urls: Path, build_dir: Path) -> None:
    try:
        from curate.download import DownloadConfig
        from curate.download import download as tiers_download

        tiers_download(urls, build_dir, DownloadConfig(timeout=2), allow_private="loopback")
    except ImportError:
        from curate.annotate.raw import download_plain

        download_plain(urls, build_dir)


def score(out, truth: dict) -> dict:
    """Duplicates handled (the copy and its original share a cluster, so at most one is kept), and
    unique images wrongly removed, by kind."""
    dup_of = dict(zip(out.column("uid").to_pylist(), out.column("dup_of").to_pylist(), strict=True))
    removed = {u for u, d in dup_of.items() if d is not None}

    def cluster(x):
        return dup_of.get(x) or x

    exact = [u for u in dup_of if truth[u]["kind"] == "exact_dup" and truth[u]["dup_of"] in dup_of]
    near = [u for u in dup_of if truth[u]["kind"] == "near_dup" and truth[u]["dup_of"] in dup_of]
    originals = {truth[u]["dup_of"] for u in exact + near}
    uniques = [u for u in dup_of if truth[u]["kind"] not in ("exact_dup", "near_dup") and u not in originals]
    wrong = [u for u in uniques if u in removed]
    found = {u: cluster(u) == cluster(truth[u]["dup_of"]) for u in near}
    families = sorted({truth[u].get("near_family") for u in near} - {None})
    return {
        "exact_removed": round(float(np.mean([cluster(u) == cluster(truth[u]["dup_of"]) for u in exact])), 4),
        "near_removed": round(float(np.mean(list(found.values()))), 4),
        "near_removed_by_family": {
            f: round(float(np.mean([found[u] for u in near if truth[u].get("near_family") == f])), 4) for f in families
        },
        "unique_wrongly_removed": round(len(wrong) / max(len(uniques), 1), 4),
        "wrongly_removed_by_kind": {
            k: sum(truth[u]["kind"] == k for u in wrong) for k in sorted({truth[u]["kind"] for u in wrong})
        },
    }


def contamination_scores(pool, eval_set: Path) -> dict:
    """Pool rows flagged as eval copies (all wrong here) and recall on planted resized copies."""
    import io

    from PIL import Image

    from curate.annotate import image as img
    from curate.dedup.decontaminate import eval_hashes, find_contaminated

    planted = []
    for data in pq.read_table(eval_set, columns=["image"]).column("image").to_pylist():
        im = Image.open(io.BytesIO(data)).convert("RGB")
        im = im.resize((max(1, round(im.width * 0.8)), max(1, round(im.height * 0.8))))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
        m = img.measure(img.decode(buf.getvalue())[0].pixels)
        row = {"sha256": img.sha256(buf.getvalue()), "pixel_hash": m.pixel_hash, "phash": m.phash}
        planted.append({**row, "width": m.width, "height": m.height})
    planted = pa.Table.from_pylist(
        planted,
        schema=pa.schema(
            [
                ("sha256", pa.string()),
                ("pixel_hash", pa.string()),
                ("phash", pa.uint64()),
                ("width", pa.int32()),
                ("height", pa.int32()),
            ]
        ),
    )
    evals = {"zeroshot": eval_hashes(eval_set)}
    out = {}
    for tol in (0.0, 0.05):
        wrong = find_contaminated(pool, evals, k=6, shape_tolerance=tol)
        found = find_contaminated(planted, evals, k=6, shape_tolerance=tol)
        out[f"shape_tolerance={tol}"] = {
            "pool_wrongly_flagged": len(wrong),
            "pool_rows": pool.num_rows,
            "planted_copies_found": round(len(found) / planted.num_rows, 4),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--out", default="bench/results/dedup_quality.json")
    ap.add_argument("--no-real", action="store_true", help="skip the real-photo benchmark (bench/dedup_real.py)")
    args = ap.parse_args()
    mix = {k: v for k, v in DEFAULT_MIX.items() if k not in SKIP}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build(tmp / "web", WebConfig(n=args.n, seed=0, mix=mix, eval_per_concept=8, retrieval_pairs=1))
        with WebServer(tmp / "web") as web:
            download(web.urls_path, tmp / "build")
        annotate(tmp / "build", AnnotateConfig(), progress=False)
        ann = read_annotations(tmp / "build")
        truth = {r["uid"]: r for r in pq.read_table(tmp / "web" / "truth.parquet").to_pylist()}

        uids = ann.column("uid").to_pylist()
        ph = dict(zip(uids, ann.column("phash").to_pylist(), strict=True))

        def dist(a, b):
            return int(np.bitwise_count(np.uint64(ph[a]) ^ np.uint64(ph[b])))

        near_d = [
            dist(u, t["dup_of"])
            for u, t in truth.items()
            if t["kind"] == "near_dup"
            and u in ph
            and t["dup_of"] in ph
            and ph[u] is not None
            and ph[t["dup_of"]] is not None
        ]
        # Nearest other image of the same concept, for distinct clean images: how close do non-copies get?
        clean = [u for u, t in truth.items() if t["kind"] == "clean" and u in ph and ph[u] is not None]
        arr = np.array([ph[u] for u in clean], np.uint64)
        concept = np.array([truth[u]["concept"] for u in clean], dtype=object)
        nearest = []
        for i in range(min(1000, len(clean))):
            d = np.bitwise_count(arr ^ arr[i]).astype(int)
            d[i] = 99
            same = concept == concept[i]
            nearest.append(int(d[same].min()) if same.sum() > 1 else 99)

        # Only decodable images take part, as in the dedup stage: an undecodable one has failed already.
        ann = ann.filter(ann.column("decode_error").is_null())
        results = {}
        results["default (verified)"] = score(deduplicate(ann, DedupConfig(semantic=False)), truth)
        for k, tol in ((4, 0.05), (6, 0.05), (8, 0.05), (6, 0.0)):
            cfg = DedupConfig(near_k=k, near_shape_tolerance=tol, semantic=False, verify=False)
            results[f"phash only k={k} shape_tolerance={tol}"] = score(deduplicate(ann, cfg), truth)
        decontamination = contamination_scores(ann, tmp / "web" / "eval" / "zeroshot.parquet")
        summary = {
            "n": args.n,
            "annotated": len(uids),
            "near_dup_distance_to_original": {
                "max": max(near_d),
                "p95": float(np.percentile(near_d, 95)),
                "mean": float(np.mean(near_d)),
            },
            "nearest_same_concept_distance": {
                "min": min(nearest),
                "p01": float(np.percentile(nearest, 1)),
                "p05": float(np.percentile(nearest, 5)),
                "median": float(np.median(nearest)),
            },
            "by_k": results,
            "decontamination": decontamination,
        }
    print(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    if not args.no_real:
        import dedup_real

        dedup_real.main([])


if __name__ == "__main__":
    main()
