"""Remove pool samples that are copies of evaluation images, so zero-shot scores stay honest.

An evaluation set is an ImageFolder (``root/<class>/<image>``) or a parquet file with an ``image``
column of encoded bytes (CIFAR-10, the synthetic web's ``eval/zeroshot.parquet``, ...). Its images
are hashed exactly as the annotate stage hashes the pool (sha256 of the bytes, hash of the decoded
pixels, 64-bit pHash); a pool sample is contaminated when any of the three matches an evaluation
image, pHash within the near-duplicate distance ``k``. As in near dedup, a pHash match between
images of different shapes is not a copy (a copy may be resized, not stretched): pairs whose aspect
ratios differ by more than the shape tolerance are vetoed. The pool's shape is the original one
img2dataset saw (``original_width/height``), so resizing or cropping at download time does not
count against it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.annotate import image as img
from curate.core import schema
from curate.core.errors import InputError
from curate.dedup.near import NearConfig, aspect_differs, distinct, log_aspect, near_pairs

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _images(path: Path) -> list[bytes]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(
                "no images in this folder (expected an ImageFolder: root/<class>/<image>)", path=str(path)
            )
        return [p.read_bytes() for p in files]
    try:
        t = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"unreadable evaluation set: {e}", path=str(path)) from None
    col = next((c for c in ("image", "jpg", "png", "webp") if c in t.column_names), None)
    if (
        col is None
        or not pa.types.is_binary(t.schema.field(col).type)
        and not pa.types.is_large_binary(t.schema.field(col).type)
    ):
        raise InputError(f"no 'image' column of bytes (columns: {', '.join(t.column_names)})", path=str(path))
    return [b for b in t.column(col).to_pylist() if b]


def eval_hashes(path: str | os.PathLike) -> pa.Table:
    """sha256, pixel_hash and phash of every decodable image of one evaluation set."""
    rows = []
    for i, data in enumerate(_images(Path(path))):
        decoded, _ = img.decode(data)
        if decoded is None:
            continue
        signals = img.measure(decoded.pixels)  # the annotate stage's own code path: identical hashes
        rows.append(
            {
                "item": i,
                schema.SHA256: img.sha256(data),
                schema.PIXEL_HASH: signals.pixel_hash,
                schema.PHASH: signals.phash,
                schema.WIDTH: signals.width,
                schema.HEIGHT: signals.height,
            }
        )
    return pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("item", pa.int64()),
                (schema.SHA256, pa.string()),
                (schema.PIXEL_HASH, pa.string()),
                (schema.PHASH, pa.uint64()),
                (schema.WIDTH, pa.int32()),
                (schema.HEIGHT, pa.int32()),
            ]
        ),
    )


def find_contaminated(
    pool: pa.Table, evals: dict[str, pa.Table], k: int, shape_tolerance: float = 0.0
) -> dict[int, str]:
    """Pool row index -> ``"<set>:<item>"`` of an evaluation image it copies (first set wins).

    ``shape_tolerance`` > 0 vetoes pHash matches whose width/height ratios differ by more than that
    share (exact and pixel matches are never vetoed; an unknown shape vetoes nothing).
    """
    out: dict[int, str] = {}
    pool_shape = log_aspect(pool, prefer_original=True)
    pool_sha = pool.column(schema.SHA256).to_pylist()
    pool_pix = pool.column(schema.PIXEL_HASH).to_pylist()
    ph = pool.column(schema.PHASH)
    valid = np.flatnonzero(ph.is_valid().to_numpy(zero_copy_only=False))
    pool_ph = ph.to_numpy(zero_copy_only=False)[valid].astype(np.uint64)
    for name, ev in evals.items():
        items = ev.column("item").to_pylist()
        by_sha = dict(zip(ev.column(schema.SHA256).to_pylist(), items, strict=True))
        by_pix = dict(zip(ev.column(schema.PIXEL_HASH).to_pylist(), items, strict=True))
        for r, (s, p) in enumerate(zip(pool_sha, pool_pix, strict=True)):
            hit = by_sha.get(s) if s is not None else None
            hit = hit if hit is not None else (by_pix.get(p) if p is not None else None)
            if hit is not None:
                out.setdefault(r, f"{name}:{hit}")
        ev_ph = ev.column(schema.PHASH).to_numpy(zero_copy_only=False).astype(np.uint64)
        if not len(ev_ph) or not len(pool_ph):
            continue
        values, inverse = distinct(np.concatenate([pool_ph, ev_ph]))
        vi, vj, _ = near_pairs(values, NearConfig(k=k))
        # Map each distinct value back to its pool rows and its evaluation items.
        n_pool = len(pool_ph)
        ev_shape = log_aspect(ev)
        pool_rows: dict[int, list[int]] = {}
        ev_items: dict[int, list[int]] = {}  # distinct value -> positions in ev
        for pos, v in enumerate(inverse):
            if pos < n_pool:
                pool_rows.setdefault(int(v), []).append(int(valid[pos]))
            else:
                ev_items.setdefault(int(v), []).append(pos - n_pool)
        pairs = list(zip(vi.tolist(), vj.tolist(), strict=True)) + [(v, v) for v in ev_items]
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                if y in ev_items and x in pool_rows:
                    for r in pool_rows[x]:
                        for e in ev_items[y]:
                            if not aspect_differs(pool_shape[r], ev_shape[e], shape_tolerance):
                                out.setdefault(r, f"{name}:{items[e]}")
                                break
    return out


def set_name(path: str | os.PathLike) -> str:
    p = Path(path)
    return p.parent.name + "/" + p.stem if p.is_file() else p.name
