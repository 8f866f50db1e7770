"""The dedup stage over a build directory: ``tiers dedup DIR``.

Reads the annotation table (and CLIP image embeddings when annotate made them), decides duplicates
with :func:`curate.dedup.deduplicate`, optionally removes copies of evaluation images, and writes
``DIR/dedup.parquet`` (uid, dup_of, dup_kind; null for unique samples and keepers; one row per
decoded image: an undecodable one has failed already and takes no part) with a summary
in ``DIR/dedup.json``. Nothing is decoded from the pool, so a rerun with other thresholds takes
seconds; a rerun with the same settings over the same annotations does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.core import schema, units
from curate.core.errors import InputError
from curate.dedup import DedupConfig, deduplicate
from curate.dedup.decontaminate import eval_hashes, find_contaminated, set_name

log = logging.getLogger(__name__)

DEDUP = "dedup.parquet"
SUMMARY = "dedup.json"
CONTAMINATION = "contamination"


def _annotations_state(build_dir: Path) -> str:
    """A fingerprint of the finished annotation units: dedup is redone when they change."""
    h = hashlib.sha256()
    for p in sorted((build_dir / "annotations").glob("*.parquet")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class DedupSummary:
    """What ``DIR/dedup.parquet`` decided (also ``DIR/dedup.json``); ``key`` says what it was decided from."""

    key: dict
    rows: int  # decoded images that took part
    duplicates: int  # dropped as a duplicate of a keeper
    by_kind: dict[str, int]  # exact, pixels, near, semantic, caption, contamination
    contaminated: dict[str, int]  # evaluation set -> pool samples that copy its images
    semantic: bool  # whether CLIP embeddings took part


def _key(build_dir: Path, cfg: DedupConfig, quality, prefer, decontaminate) -> dict:
    def digest(a, dtype):
        return None if a is None else hashlib.sha256(np.asarray(a, dtype).tobytes()).hexdigest()[:16]

    return {
        "config": asdict(cfg),
        "annotations": _annotations_state(build_dir),
        "decontaminate": [str(Path(p).resolve()) for p in decontaminate],
        "quality": digest(quality, np.float32),
        "prefer": digest(prefer, bool),
    }


def run_dedup(
    build_dir: str | os.PathLike,
    cfg: DedupConfig = DedupConfig(),
    quality: np.ndarray | None = None,
    prefer: np.ndarray | None = None,
    decontaminate: tuple[str, ...] = (),
) -> DedupSummary:
    """Decide and write duplicates for ``build_dir``; returns the summary.

    ``quality`` and ``prefer`` (aligned with the annotation table) rank keepers; ``prefer`` is
    typically "passes the filters", so a cluster keeps a sample that will be kept.
    """
    from curate.annotate import read_annotations

    build_dir = Path(build_dir)
    key = _key(build_dir, cfg, quality, prefer, decontaminate)
    old = build_dir / SUMMARY
    if (build_dir / DEDUP).exists() and old.exists() and json.loads(old.read_text()).get("key") == key:
        return DedupSummary(**json.loads(old.read_text()))

    cols = [schema.UID, schema.SHA256, schema.PIXEL_HASH, schema.PHASH, schema.WIDTH, schema.HEIGHT]
    cols += [schema.ORIGINAL_WIDTH, schema.ORIGINAL_HEIGHT]
    table = read_annotations(build_dir, columns=cols + [schema.CAPTION, schema.DECODE_ERROR])
    # An image that did not decode has failed already; its bytes (an HTML page, a bomb) are often
    # shared by many URLs, and must not make those URLs "duplicates" of anything.
    decoded = table.column(schema.DECODE_ERROR).is_null().to_numpy(zero_copy_only=False)
    all_uids = table.column(schema.UID)
    table = table.filter(pa.array(decoded))
    quality = None if quality is None else np.asarray(quality)[decoded]
    prefer = None if prefer is None else np.asarray(prefer)[decoded]
    embeddings = _embeddings(build_dir, all_uids, decoded) if cfg.semantic else None
    out = deduplicate(table, cfg, embeddings=embeddings, quality=quality, prefer=prefer)
    out, per_set = _decontaminate(out, table, cfg, decontaminate)

    kinds = out.column(schema.DUP_KIND).to_pylist()
    summary = DedupSummary(
        key=key,
        rows=table.num_rows,
        duplicates=sum(k is not None and k != CONTAMINATION for k in kinds),
        by_kind={k: kinds.count(k) for k in sorted({k for k in kinds if k is not None})},
        contaminated=per_set,
        semantic=embeddings is not None,
    )
    with units.atomic_path(build_dir / DEDUP) as tmp:
        pq.write_table(out, tmp)
    with units.atomic_path(old) as tmp:
        tmp.write_text(json.dumps(asdict(summary), indent=2))
    return summary


def _embeddings(build_dir: Path, all_uids, decoded: np.ndarray) -> np.ndarray | None:
    """CLIP image embeddings of the decoded rows, or None when annotate ran without CLIP."""
    from curate.annotate import load_embeddings

    try:
        uids, embeddings = load_embeddings(build_dir)
    except InputError as e:
        if "no CLIP embeddings" not in str(e):
            raise
        return None
    if uids != all_uids.to_pylist():
        raise InputError("embeddings and annotations disagree on row order; re-run `tiers annotate`")
    return embeddings[decoded].astype(np.float32)


def _decontaminate(out: pa.Table, table: pa.Table, cfg: DedupConfig, sets: tuple[str, ...]):
    """Mark pool rows that copy an evaluation image (``dup_kind = contamination``); counts per set."""
    per_set: dict[str, int] = {}
    if not sets:
        return out, per_set
    evals = {set_name(p): eval_hashes(p) for p in sets}
    hits = find_contaminated(table, evals, cfg.near_k, cfg.near_shape_tolerance)
    dup_of = out.column(schema.DUP_OF).to_pylist()
    kind = out.column(schema.DUP_KIND).to_pylist()
    for r, src in hits.items():
        dup_of[r], kind[r] = src, CONTAMINATION
        per_set[src.rsplit(":", 1)[0]] = per_set.get(src.rsplit(":", 1)[0], 0) + 1
    out = out.set_column(1, schema.DUP_OF, pa.array(dup_of, pa.string()))
    out = out.set_column(2, schema.DUP_KIND, pa.array(kind, pa.string()))
    for name, n in per_set.items():
        log.info(f"decontamination: {n} pool samples copy images of {name}")
    return out, per_set


def read_dedup(build_dir: str | os.PathLike) -> pa.Table:
    p = Path(build_dir) / DEDUP
    if not p.exists():
        raise InputError("no dedup decisions yet; run `tiers dedup`", path=str(p))
    return pq.read_table(p)
