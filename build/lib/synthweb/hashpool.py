"""A pool of annotation rows with planted duplicates, for dedup at scale: no images, only the columns
dedup reads (uid, sha256, pixel_hash, phash, width, height), made a chunk at a time.

Row ``r`` is an original unless drawn as a copy of an earlier row: an exact copy (same bytes), a
pixel copy (the same pixels re-encoded: new sha256, same pixel hash and pHash), a near copy (resized
0.5-1.5x and re-encoded: its pHash 1-6 bits from the source's, a new pixel hash) or one of a few
placeholder images served at many URLs (a "no image" GIF). Every original's values are a hash of
its row number, so a chunk is made without holding the rows before it: 10M rows need no more
memory than one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

KINDS = ("original", "exact", "pixels", "near", "placeholder")
# Two hex digits of each byte value, as the little-endian uint16 whose bytes spell them.
_HEX2 = np.array([int.from_bytes(f"{b:02x}".encode(), "little") for b in range(256)], np.uint16)


@dataclass(frozen=True)
class PoolConfig:
    exact: float = 0.04  # share of rows that are byte copies of an earlier row
    pixels: float = 0.01  # re-encoded copies (same pixels)
    near: float = 0.05  # resized and re-encoded copies (pHash 1-6 bits away)
    placeholder: float = 0.002  # rows showing one of ``placeholders`` images
    placeholders: int = 20
    seed: int = 0


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64: a well-spread 64-bit hash of each value."""
    x = np.asarray(x, np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hex(ids: np.ndarray, salt: int, chars: int) -> pa.Array:
    """A hex string of ``chars`` characters per id, a hash of (id, salt)."""
    words = -(-chars // 16)
    base = np.asarray(ids, np.int64).astype(np.uint64) * np.uint64(words) + np.uint64(salt << 56)
    raw = _mix(base[:, None] + np.arange(words, dtype=np.uint64)).view(np.uint8).reshape(len(ids), 8 * words)
    text = _HEX2[raw].view(np.uint8).reshape(len(ids), 16 * words)
    if chars < 16 * words:
        text = np.ascontiguousarray(text[:, :chars])
    offsets = np.arange(0, (len(ids) + 1) * chars, chars, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(len(ids), pa.py_buffer(offsets), pa.py_buffer(text)).cast(pa.string())


def _flips(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    """A 64-bit mask with ``d[r]`` distinct random bits set, per row."""
    order = np.argsort(rng.random((len(d), 64)), axis=1)
    chosen = order < d[:, None]
    return (chosen.astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


def _kind(rows: np.ndarray, cfg: PoolConfig) -> np.ndarray:
    """Index into :data:`KINDS` of each row, a hash of the row number (so any row's kind is known
    without its chunk); the first 1,000 rows are originals."""
    u = (_mix(np.asarray(rows, np.uint64) ^ np.uint64(cfg.seed + 0x5EED)) >> np.uint64(11)) / float(1 << 53)
    cum = np.cumsum([cfg.exact, cfg.pixels, cfg.near, cfg.placeholder])
    kind = np.searchsorted(cum, u, side="right") + 1
    kind[(kind > 4) | (np.asarray(rows) < 1000)] = 0
    return kind


def _sources(rng: np.random.Generator, r: np.ndarray, cfg: PoolConfig) -> np.ndarray:
    """An earlier original row per row: the first of 16 draws that is an original, else one of the
    first 1,000 rows (all originals)."""
    draws = (rng.random((len(r), 16)) * np.maximum(r, 1)[:, None]).astype(np.int64)
    ok = _kind(draws.ravel(), cfg).reshape(draws.shape) == 0
    first = ok.argmax(axis=1)
    return np.where(ok.any(axis=1), draws[np.arange(len(r)), first], draws[:, 0] % 1000)


def chunks(n: int, cfg: PoolConfig = PoolConfig(), rows: int = 1 << 20) -> Iterator[tuple[pa.Table, pa.Table]]:
    """(pool chunk, truth chunk) of ``n`` rows in all, ``rows`` at a time. Truth: row, kind (of
    :data:`KINDS`), source (the original row copied; -1 for originals and placeholders), family (the
    original's row, or a placeholder's id < 0: rows of one family are one image), bits (pHash bits
    flipped)."""
    for a in range(0, n, rows):
        r = np.arange(a, min(n, a + rows), dtype=np.int64)
        rng = np.random.default_rng([cfg.seed, a])
        kind = _kind(r, cfg)
        src = np.full(len(r), -1, np.int64)
        copy = (kind >= 1) & (kind <= 3)
        src[copy] = _sources(rng, r[copy], cfg)
        # Whose bytes / pixels / pHash a row shows: its own, its source's, or a placeholder's (< 0).
        ident = np.where(kind == 0, r, src)
        ident[kind == 4] = -1 - rng.integers(0, cfg.placeholders, int((kind == 4).sum()))
        bits = np.zeros(len(r), np.int64)
        bits[kind == 3] = rng.integers(1, 7, int((kind == 3).sum()))
        flips = np.zeros(len(r), np.uint64)
        flips[kind == 3] = _flips(rng, bits[kind == 3])
        scale = np.where(kind == 3, rng.uniform(0.5, 1.5, len(r)), 1.0)
        fresh = -(1 << 40) - r  # an id of the row's own new encoding
        sha_id = np.where((kind == 2) | (kind == 3), fresh, ident)
        pix_id = np.where(kind == 3, fresh, ident)
        phash = _mix(ident.astype(np.uint64) ^ np.uint64(cfg.seed << 32)) ^ flips
        size = _mix(ident.astype(np.uint64) + np.uint64(7))
        w = 64 + (size % np.uint64(900)).astype(np.int64)
        h = 64 + ((size >> np.uint64(20)) % np.uint64(900)).astype(np.int64)
        pool = pa.table(
            {
                "uid": _hex(r, cfg.seed * 4 + 1, 24),
                "sha256": _hex(sha_id, cfg.seed * 4 + 2, 64),
                "pixel_hash": _hex(pix_id, cfg.seed * 4 + 3, 40),
                "phash": pa.array(phash, pa.uint64()),
                "width": pa.array(np.maximum(1, np.round(w * scale)).astype(np.int32)),
                "height": pa.array(np.maximum(1, np.round(h * scale)).astype(np.int32)),
            }
        )
        truth = pa.table({"row": r, "kind": np.asarray(KINDS)[kind], "source": src, "family": ident, "bits": bits})
        yield pool, truth


def pool(n: int, cfg: PoolConfig = PoolConfig()) -> tuple[pa.Table, pa.Table]:
    """The whole pool and its truth in memory (tests)."""
    parts = list(chunks(n, cfg))
    return pa.concat_tables([p for p, _ in parts]), pa.concat_tables([t for _, t in parts])
