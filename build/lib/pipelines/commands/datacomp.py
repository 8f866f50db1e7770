"""``tiers subset`` and ``tiers export``: DataComp-style uid lists in and out (:mod:`curate.shard.subset`)."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("tiers")


def register(sub) -> None:
    p = sub.add_parser(
        "subset",
        help="make a tier from a list of uids (a DataComp subset .npy, a parquet or a text list); no download",
        description="Make tier NAME of a build from the uids in FILE: DataComp's .npy of dtype u8,u8, a parquet "
        "with a uid column, or a text file of one uid per line. The samples' bytes are copied from the raw "
        "tars into DIR/tiers/subsets/NAME/, and the tier manifest lists the new tier. uids map to DataComp's "
        "128-bit uids as curate/core/uid128.py documents, the same way as in `tiers export`.",
    )
    p.add_argument("dir", help="a `tiers build` output directory")
    p.add_argument("--uids", required=True, metavar="FILE", help=".npy (u8,u8), .parquet (uid column) or text")
    p.add_argument("--name", required=True, help="the new tier's name")
    p.add_argument("--replace", action="store_true", help="replace a subset of this name made from another list")
    p.set_defaults(func=_subset)

    p = sub.add_parser(
        "export",
        help="write a tier's uids sorted, as DataComp's resharder reads them (.npy u8,u8) or as parquet",
    )
    p.add_argument("dir", help="a `tiers build` output directory")
    p.add_argument("--tier", required=True, help="tier name in the manifest (e.g. top30, or a subset)")
    p.add_argument("--format", required=True, choices=["datacomp-npy", "parquet"])
    p.add_argument("--out", required=True, help="file to write")
    p.set_defaults(func=_export)


def _subset(args: argparse.Namespace) -> int:
    from curate.shard.subset import make_subset

    s = make_subset(args.dir, args.uids, args.name, replace=args.replace, progress=args.progress)
    log.info(
        f"tier {s.name}: {s.samples:,} samples in {len(s.band['shards'])} shards ({s.band['bytes'] / 1e6:.1f} MB) "
        f"from {s.unique:,} uids in {s.source}"
    )
    kept = sum(s.by_status.get("kept", {}).values())
    if kept != s.samples:
        detail = ", ".join(
            f"{st} ({', '.join(f'{r} {n}' for r, n in rs.items())})" for st, rs in s.by_status.items() if st != "kept"
        )
        log.info(f"  {kept:,} kept by this build's filters; the others: {detail}")
    if s.unknown or s.no_bytes:
        lost = ", ".join(f"{r} {n}" for r, n in sorted(s.no_bytes.items()))
        log.warning(
            f"{s.unique - s.samples:,} of the {s.unique:,} uids are not in the subset: {s.unknown:,} not in this "
            f"build" + (f"; without stored bytes: {lost}" if lost else "")
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from curate.shard.subset import export_tier

    n = export_tier(args.dir, args.tier, args.format, args.out)
    log.info(f"{args.out}: {n:,} uids of tier {args.tier} ({args.format}, sorted by 128-bit uid)")
    return 0
