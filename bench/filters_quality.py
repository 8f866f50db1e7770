"""Filter quality against ground truth: precision and recall per filter on the synthetic web, and
language-ID accuracy per language on real labelled sentences.

1. Synthetic web (``--n`` URLs, the default raw-crawl mix without ``private_address``): built, served on
   127.0.0.1, downloaded with plain img2dataset (bytes kept as served), annotated on Ray, then every
   filter of the ``synthetic-basic`` preset (and both English rules) is scored on its own against
   ``truth.parquet``: of the rows it drops, how many are of the kinds it targets (precision), and of
   the rows of those kinds, how many it drops (recall). English captions kept = 1 - drops among
   rows whose caption truth says is English; generic captions ("IMG_0423.JPG") are shown apart.
2. ``../shared/data/lid/lingua_testdata.parquet`` (skipped when absent): for the ``sentences`` kind,
   accuracy per language of our language-ID stage and of fastText's own ``predict`` on the same text
   (the reference; they should agree exactly), plus what each English rule keeps of English and of
   everything else, for all three kinds (sentences, word pairs, single words).

    .venv/bin/python bench/filters_quality.py [--n 3000] [--lingua PATH]

Prints tables and writes bench/results/filters_quality.json.
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

LINGUA = ROOT.parent / "shared" / "data" / "lid" / "lingua_testdata.parquet"
# lid.176 says "no" for Norwegian Bokmål; it has no label at all for these languages.
TO_FASTTEXT = {"nb": "no"}

IMAGE_KINDS = {"tiny", "extreme_aspect", "blank"}
BROKEN = {"truncated", "html_as_image", "bomb", "empty_body"}
# filter name -> the truth kinds it is meant to drop
TARGETS = {
    "decode_error": BROKEN,
    "language": {"foreign"},
    "language_argmax": {"foreign"},
    "min_words": {"generic"},
    "min_chars": {"generic"},
    "boilerplate": {"generic"},
    "url": {"generic"},
    "html": {"generic"},
    "min_side": {"tiny"},
    "max_aspect": {"extreme_aspect"},
    "blank": {"blank"},
    "image (any of the three)": IMAGE_KINDS,
    "all filters": BROKEN | IMAGE_KINDS | {"foreign", "generic"},
}


def synthetic(n: int, seed: int, work: Path) -> dict:
    from curate.annotate import AnnotateConfig, annotate, read_annotations
    from curate.annotate.raw import download_plain
    from curate.core.runtime import ray_session
    from curate.filters import apply_filters, build_filters, preset_config, rules
    from synthweb import WebConfig, WebServer, build
    from synthweb.build import DEFAULT_MIX

    mix = {k: v for k, v in DEFAULT_MIX.items() if k != "private_address"}  # never fetched
    t0 = time.perf_counter()
    build(work / "web", WebConfig(n=n, seed=seed, mix=mix, eval_per_concept=1, retrieval_pairs=5))
    with WebServer(work / "web", slow_seconds=5) as web:
        download_plain(web.urls_path, work / "build", samples_per_shard=500, threads=32, timeout=2)
    with ray_session():
        annotate(work / "build", AnnotateConfig(), progress=False)
    print(f"synthetic web: {n} URLs built, downloaded and annotated in {time.perf_counter() - t0:.0f} s")

    table = read_annotations(work / "build")
    truth = {r["uid"]: r for r in pq.read_table(work / "web" / "truth.parquet").to_pylist()}
    kinds = np.array([truth[u]["kind"] for u in table.column("uid").to_pylist()], dtype=object)
    en = np.array([truth[u]["lang"] == "en" for u in table.column("uid").to_pylist()])
    generic = kinds == "generic"
    filters = build_filters(preset_config("synthetic-basic"))
    result = apply_filters(table, filters)
    fails = {f.name: ~f(table)[0] for f in filters}
    fails["language_argmax"] = ~rules.language(["en"])(table)[0]
    fails["image (any of the three)"] = fails["min_side"] | fails["max_aspect"] | fails["blank"]
    fails["all filters"] = ~result.keep
    decoded = np.array([e is None for e in table.column("decode_error").to_pylist()])

    rows = []
    print(
        f"{table.num_rows} annotated samples; kinds: {dict(zip(*np.unique(kinds, return_counts=True), strict=True))}"
    )
    print(f"  {'filter':<26} {'targets':<36} {'dropped':>7} {'precision':>9} {'recall':>7} {'clean dropped':>13}")
    for name, drop in fails.items():
        target = np.isin(kinds, list(TARGETS[name]))
        # A filter on decoded images is judged on decoded rows; broken images are the decode filter's.
        scope = np.ones(len(kinds), bool) if name in ("decode_error", "all filters") else decoded
        d, tg = drop & scope, target & scope
        r = {
            "filter": name,
            "targets": sorted(TARGETS[name]),
            "dropped": int(d.sum()),
            "precision": float((d & tg).sum() / max(1, d.sum())),
            "recall": float((d & tg).sum() / max(1, tg.sum())),
            "clean_dropped": float(d[kinds == "clean"].mean()),
            "off_target_drops": {
                str(k): int(v) for k, v in zip(*np.unique(kinds[d & ~tg], return_counts=True), strict=True)
            },
        }
        if name.startswith("language"):
            keep_en = ~drop & en & decoded
            r["english_kept"] = float(keep_en[~generic].sum() / max(1, (en & decoded & ~generic).sum()))
            r["english_kept_incl_generic"] = float(keep_en.sum() / max(1, (en & decoded).sum()))
        rows.append(r)
        extra = (
            f"  English kept {r['english_kept']:.4f} ({r['english_kept_incl_generic']:.4f} incl. generic)"
            if ("english_kept" in r)
            else ""
        )
        off = ", ".join(f"{k} {v}" for k, v in sorted(r["off_target_drops"].items(), key=lambda kv: -kv[1])[:3])
        print(
            f"  {name:<26} {','.join(r['targets'])[:36]:<36} {r['dropped']:>7} {r['precision']:>9.3f} "
            f"{r['recall']:>7.3f} {r['clean_dropped']:>13.3f}{extra}" + (f"  [also drops: {off}]" if off else "")
        )
    return {"n": n, "annotated": table.num_rows, "counts": result.counts, "filters": rows}


def lingua(path: Path) -> dict:
    import polars as pl
    import pyarrow as pa

    from curate.annotate.language import LanguageID
    from curate.filters import rules
    from curate.filters.config import EN_MIN_SCORE

    df = pl.read_parquet(path)
    lid = LanguageID()
    out: dict = {"languages": {}, "rules": {}}
    supported = {lab.removeprefix("__label__") for lab in lid.model.get_labels()}
    t0 = time.perf_counter()
    for kind in ("sentences", "word-pairs", "single-words"):
        sub = df.filter(pl.col("kind") == kind)
        texts = sub["text"].to_list()
        gold = np.array([TO_FASTTEXT.get(x, x) for x in sub["language"].to_list()], dtype=object)
        cols = lid(texts)
        ours = np.array(cols["lang"].to_pylist(), dtype=object)
        labels, _ = lid.model.predict([t.replace("\r", " ").replace("\n", " ") for t in texts], k=1)
        ref = np.array([lab[0].removeprefix("__label__") for lab in labels], dtype=object)
        is_en, known = gold == "en", np.isin(gold, list(supported))
        t = pa.table({"lang": cols["lang"], "lang_scores": cols["lang_scores"]})
        preset = f"argmax or P(en)>={EN_MIN_SCORE}"
        for rule_name, f in (("argmax", rules.language(["en"])), (preset, rules.language(["en"], EN_MIN_SCORE))):
            keep = f(t)[0]
            out["rules"][f"{kind}: {rule_name}"] = {
                "english_kept": float(keep[is_en].mean()),
                "other_kept": float(keep[~is_en & known].mean()),
                "unknown_language_kept": float(keep[~known].mean()),
            }
        agree = float((ours == ref).mean())
        if kind == "sentences":
            for lang in sorted(set(gold)):
                m = gold == lang
                out["languages"][lang] = {
                    "n": int(m.sum()),
                    "ours": float((ours[m] == lang).mean()),
                    "fasttext_predict": float((ref[m] == lang).mean()),
                    "supported": lang in supported,
                }
        out[f"{kind}_agreement_with_reference"] = agree
        out[f"{kind}_accuracy"] = float((ours == gold)[np.isin(gold, list(supported))].mean())
    out["seconds"] = time.perf_counter() - t0

    print(f"\nlingua test data ({path.name}), sentences, accuracy per language (ours | fastText predict):")
    langs = out["languages"]
    line = []
    for k, (lang, v) in enumerate(langs.items()):
        mark = "" if v["supported"] else "*"
        line.append(f"{lang + mark:>4} {v['ours']:.3f}|{v['fasttext_predict']:.3f}")
        if len(line) == 5 or k == len(langs) - 1:
            print("  " + "   ".join(line))
            line = []
    sup = [v["ours"] for v in langs.values() if v["supported"]]
    print(f"  (* no such label in lid.176: {', '.join(k for k, v in langs.items() if not v['supported'])})")
    print(f"  mean over the {len(sup)} languages lid.176 knows: {np.mean(sup):.4f}; all rows of supported languages:")
    for kind in ("sentences", "word-pairs", "single-words"):
        print(
            f"    {kind:<13} accuracy {out[kind + '_accuracy']:.4f}   "
            f"agreement with fastText predict {out[kind + '_agreement_with_reference']:.4f}"
        )
    print("  English rules, share kept of: English | other languages lid.176 knows | languages it does not know")
    for name, v in out["rules"].items():
        print(f"    {name:<40} {v['english_kept']:.4f} | {v['other_kept']:.4f} | {v['unknown_language_kept']:.4f}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="URLs in the synthetic web")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lingua", type=Path, default=LINGUA)
    ap.add_argument("--skip-synthetic", action="store_true")
    args = ap.parse_args(argv)

    results: dict = {}
    if not args.skip_synthetic:
        with tempfile.TemporaryDirectory(prefix="bench_filters_") as tmp:
            results["synthetic"] = synthetic(args.n, args.seed, Path(tmp))
    if args.lingua.exists():
        results["lingua"] = lingua(args.lingua)
    else:
        print(f"\n(no {args.lingua}: language-ID accuracy on real sentences skipped)")
    out = ROOT / "bench" / "results" / "filters_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
