"""The bytes every synthetic URL serves: rendered images, near copies, and hostile bodies.

Rows come from :func:`synthweb.build` (kind, concept, size, format, ...); :func:`render_all` renders
them in worker processes, reproducibly: a row's bytes depend only on the web's seed and the row.
"""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
from PIL import Image
from tqdm import tqdm

from synthweb.copies import near_copy
from synthweb.render import Concept, blank, encode, render


def captions_texture(rng: np.random.Generator) -> str:
    return ("plain", "striped", "dotted")[int(rng.integers(3))]


def _image(row: dict, seed: int) -> Image.Image:
    rng = np.random.default_rng([seed, row["i"], 1])
    if row["kind"] == "blank":
        return blank(rng, (row["w"], row["h"]))
    concept = Concept(row["colour"], row["shape"])
    return render(concept, rng, (row["w"], row["h"]), texture=row["texture"], clutter=row["kind"] != "tiny")


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 200-byte PNG declaring width x height pixels: its IDAT inflates far past any sane limit."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 65536, 9)  # a first slice of zero rows
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


HTML_BODY = (
    b"<!DOCTYPE html><html><head><title>Not Found</title></head><body><h1>Sorry</h1>" + b" " * 200 + b"</body></html>"
)


def _body(row: dict, seed: int) -> bytes:
    kind = row["kind"]
    if kind in ("http_404", "http_500", "redirect_loop", "private_address", "empty_body"):
        return b""
    if kind == "html_as_image":
        return HTML_BODY
    if kind == "bomb":
        return bomb_png()
    if kind == "near_dup":
        orig = dict(row, i=row["orig"], kind="clean", w=row["orig_w"], h=row["orig_h"])
        return near_copy(_image(orig, seed), row["family"], np.random.default_rng([seed, row["i"], 2]), min_side=16)
    data = encode(_image(row, seed), row["format"], row["quality"])
    if kind == "truncated":
        return data[: max(64, len(data) // 2)]
    return data


def _bodies(rows: list[dict], seed: int) -> list[bytes]:
    return [b"" if r["kind"] == "exact_dup" else _body(r, seed) for r in rows]


def render_all(rows: list[dict], seed: int, workers: int, desc: str, progress: bool = True) -> list[bytes]:
    chunks = [rows[k : k + 256] for k in range(0, len(rows), 256)]
    workers = workers or os.cpu_count() or 1
    out: list[bytes] = []
    bar = tqdm(total=len(rows), desc=desc, unit="img", disable=not progress or len(rows) < 2000, leave=False)
    if workers <= 1 or len(rows) < 1000:
        for c in chunks:
            out.extend(_bodies(c, seed))
            bar.update(len(c))
    else:
        # spawn, not fork: callers (tests, Ray drivers) may hold threads that fork would copy half-way.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for c, bodies in zip(chunks, pool.map(_bodies, chunks, [seed] * len(chunks)), strict=True):
                out.extend(bodies)
                bar.update(len(c))
    bar.close()
    return out
