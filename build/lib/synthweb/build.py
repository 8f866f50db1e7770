"""Generate a synthetic web with known ground truth.

``build(out, WebConfig(n=..., seed=...))`` writes:

- ``urls.parquet``: url, caption, uid — what a crawl would hand you; nothing that reveals truth;
- ``truth.parquet``: uid, kind, concept, lang, dup_of (+ image facts) — what each row really is;
- ``blobs.bin`` + ``routes.parquet``: what the server answers for each path (server-side only);
- ``eval/``: a held-out clean set per concept, for zero-shot (``zeroshot.parquet`` + ``classes.json``)
  and retrieval (``retrieval.parquet``);
- ``web.json``: the config, the counts per kind, and the code version.

Same config and seed, same bytes: each sample draws from its own generator seeded by
``(seed, index)``, so the order in which worker processes render samples cannot matter.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.core import schema
from synthweb import captions
from synthweb.bodies import captions_texture, render_all
from synthweb.copies import FAMILIES
from synthweb.render import CONTENT_TYPES, EXTENSIONS, Concept, all_concepts

DEFAULT_BASE = "http://127.0.0.1:8765"
# An IPv6 unique-local address: private, and routed nowhere, so even a downloader that ignored the
# safety rule would get no answer from anyone's network.
PRIVATE_BASE = "http://[fd00:7e57::10]:8765"

CAPTION_KINDS = ("misaligned", "generic", "foreign")
DUP_KINDS = ("exact_dup", "near_dup")
IMAGE_KINDS = ("tiny", "extreme_aspect", "blank")
FAULT_KINDS = (
    "http_404",
    "http_500",
    "slow",
    "truncated",
    "html_as_image",
    "empty_body",
    "noai",
    "redirect_loop",
    "bomb",
    "private_address",
)
KINDS = ("clean",) + CAPTION_KINDS + DUP_KINDS + IMAGE_KINDS + FAULT_KINDS

DEFAULT_MIX = {
    "clean": 0.55,
    "misaligned": 0.08,
    "generic": 0.05,
    "foreign": 0.08,
    "exact_dup": 0.05,
    "near_dup": 0.05,
    "tiny": 0.02,
    "extreme_aspect": 0.02,
    "blank": 0.02,
    "http_404": 0.01,
    "http_500": 0.01,
    "slow": 0.005,
    "truncated": 0.01,
    "html_as_image": 0.01,
    "empty_body": 0.01,
    "noai": 0.01,
    "redirect_loop": 0.005,
    "bomb": 0.005,
    "private_address": 0.005,
}
# Kinds whose URL serves a real image of the concept (possibly degraded).
SERVES_IMAGE = {"clean", "noai", *CAPTION_KINDS, *DUP_KINDS, *IMAGE_KINDS}
FORMAT_SHARES = {"jpeg": 0.7, "png": 0.15, "webp": 0.15}


@dataclass(frozen=True)
class WebConfig:
    n: int = 2000
    seed: int = 0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    min_side: int = 64
    max_side: int = 256
    eval_per_concept: int = 20
    retrieval_pairs: int = 250
    base_url: str = DEFAULT_BASE
    workers: int = 0  # 0: one per core

    def counts(self) -> dict[str, int]:
        """Rows per kind: exact largest-remainder allocation of ``n`` over the normalised mix."""
        unknown = set(self.mix) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds in mix: {sorted(unknown)}; known: {list(KINDS)}")
        if any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError("mix shares must be >= 0 and not all zero")
        total = sum(self.mix.values())
        exact = {k: self.n * v / total for k, v in self.mix.items()}
        counts = {k: math.floor(v) for k, v in exact.items()}
        rest = self.n - sum(counts.values())
        for k in sorted(exact, key=lambda k: (counts[k] - exact[k], KINDS.index(k)))[:rest]:
            counts[k] += 1
        if (counts.get("exact_dup", 0) or counts.get("near_dup", 0)) and not counts.get("clean", 0):
            raise ValueError("duplicates need originals: give 'clean' a share")
        return {k: counts.get(k, 0) for k in KINDS}


def parse_mix(text: str) -> dict[str, float]:
    """``"clean=0.6,foreign=0.2,http_404=0.2"`` -> shares (kinds left out get none)."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        mix[name.strip()] = float(value)
    return mix


# --- the plan: everything but pixels, drawn in one process ---------------------------------


def _token(seed: int, i: int, salt: str = "") -> str:
    return hashlib.blake2b(f"{seed}:{i}:{salt}".encode(), digest_size=10).hexdigest()


def _plan(cfg: WebConfig) -> list[dict]:
    rng = np.random.default_rng([cfg.seed, 0xC0FFEE])
    concepts = all_concepts()
    counts = cfg.counts()
    kinds = np.array([k for k in KINDS for _ in range(counts[k])], dtype=object)
    kinds = kinds[rng.permutation(len(kinds))]
    fmts = list(FORMAT_SHARES)
    rows = []
    for i, kind in enumerate(kinds):
        c = concepts[int(rng.integers(len(concepts)))]
        w, h = _size(rng, cfg)
        row = {
            "i": i,
            "kind": kind,
            "colour": c.colour,
            "shape": c.shape,
            "texture": captions_texture(rng),
            "w": w,
            "h": h,
            "format": fmts[int(rng.choice(len(fmts), p=list(FORMAT_SHARES.values())))],
            "quality": int(rng.integers(70, 96)),
            "lang": "en",
            "orig": -1,
        }
        if kind == "tiny":
            row["w"], row["h"] = int(rng.integers(8, 25)), int(rng.integers(8, 25))
        elif kind == "extreme_aspect":
            long, short = int(rng.integers(200, 257)), int(rng.integers(24, 48))
            row["w"], row["h"] = (long, short) if rng.random() < 0.5 else (short, long)
        elif kind in ("truncated", "bomb", "html_as_image"):
            row["format"] = "jpeg" if kind != "bomb" else "png"
        rows.append(row)

    clean = [r["i"] for r in rows if r["kind"] == "clean"]
    for r in rows:
        cap_rng = np.random.default_rng([cfg.seed, r["i"], 7])
        if r["kind"] in DUP_KINDS:
            o = rows[clean[int(cap_rng.integers(len(clean)))]]
            r["orig"] = o["i"]
            r["colour"], r["shape"], r["texture"] = o["colour"], o["shape"], o["texture"]
            if r["kind"] == "exact_dup":
                r["w"], r["h"], r["format"] = o["w"], o["h"], o["format"]
            else:  # a near copy is made from the original's pixels: render those at the original's size
                r["orig_w"], r["orig_h"] = o["w"], o["h"]
                family = FAMILIES[int(cap_rng.integers(len(FAMILIES)))]
                if family == "png" and o["format"] == "png":
                    family = "webp"  # a PNG of a PNG would be the same bytes: an exact copy
                r["family"] = family
                r["format"] = {"png": "png", "webp": "webp"}.get(family, "jpeg")
        concept = Concept(r["colour"], r["shape"])
        if r["kind"] == "misaligned":
            others = [c for c in concepts if c != concept]
            r["caption"] = captions.english(others[int(cap_rng.integers(len(others)))], cap_rng, r["texture"])
        elif r["kind"] == "generic":
            r["caption"] = captions.generic(cap_rng)
        elif r["kind"] == "foreign":
            r["lang"] = captions.LANGS[int(cap_rng.integers(len(captions.LANGS)))]
            r["caption"] = captions.foreign(concept, r["lang"], cap_rng)
        else:
            r["caption"] = captions.english(concept, cap_rng, r["texture"])
    return rows


def _size(rng: np.random.Generator, cfg: WebConfig) -> tuple[int, int]:
    side = int(rng.integers(cfg.min_side, cfg.max_side + 1))
    aspect = float(rng.uniform(0.75, 1.34))
    w = int(np.clip(round(side * math.sqrt(aspect)), cfg.min_side, cfg.max_side))
    h = int(np.clip(round(side / math.sqrt(aspect)), cfg.min_side, cfg.max_side))
    return w, h


# --- writing ----------------------------------------------------------------------------------


def _url(cfg: WebConfig, row: dict, token: str) -> str:
    ext = EXTENSIONS[row["format"]]
    base = PRIVATE_BASE if row["kind"] == "private_address" else cfg.base_url
    return f"{base}/img/{token}.{ext}"


def _route(row: dict, path: str, offset: int, length: int) -> dict:
    kind = row["kind"]
    return {
        "path": path,
        "behaviour": "ok" if kind in SERVES_IMAGE - {"noai"} else kind,
        "offset": offset,
        "length": length,
        "content_type": CONTENT_TYPES[row["format"]],
        "location": None,
    }


def build(out: str | os.PathLike, cfg: WebConfig = WebConfig(), progress: bool = True) -> dict:
    """Write the synthetic web to ``out`` and return its summary (also in ``out/web.json``); ``progress``
    shows bars while rendering."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = _plan(cfg)
    bodies = render_all(rows, cfg.seed, cfg.workers, "rendering web", progress)

    tokens = [_token(cfg.seed, r["i"]) for r in rows]
    urls = [_url(cfg, r, t) for r, t in zip(rows, tokens, strict=True)]
    caps = [r["caption"] for r in rows]
    uids = schema.make_uids(urls, caps)

    routes, blob_at = [], {}
    tmp_blobs = out / "blobs.bin.tmp"
    with open(tmp_blobs, "wb") as f:
        pos = 0
        for r, body in zip(rows, bodies, strict=True):
            if r["kind"] == "exact_dup":
                continue
            blob_at[r["i"]] = (pos, len(body))
            f.write(body)
            pos += len(body)
    for r, t in zip(rows, tokens, strict=True):
        src = r["orig"] if r["kind"] == "exact_dup" else r["i"]
        offset, length = blob_at[src]
        path = f"/img/{t}.{EXTENSIONS[r['format']]}"
        route = _route(r, path, offset, length)
        if r["kind"] == "redirect_loop":
            # A -> B -> A: only A is in the URL list, B exists only as the loop's other half.
            other = f"/img/{_token(cfg.seed, r['i'], 'loop')}.jpg"
            route["location"] = other
            routes.append({**route, "path": other, "location": path})
        routes.append(route)

    by_uid = dict(zip([r["i"] for r in rows], uids, strict=True))
    truth = pa.table(
        {
            "uid": uids,
            "kind": [r["kind"] for r in rows],
            "concept": [
                f"{r['colour']} {r['shape']}" if r["kind"] in SERVES_IMAGE | {"truncated"} else None for r in rows
            ],
            "lang": [r["lang"] for r in rows],
            "dup_of": [by_uid[r["orig"]] if r["orig"] >= 0 else None for r in rows],
            "image_format": [r["format"] if r["kind"] in SERVES_IMAGE else None for r in rows],
            "width": pa.array(
                [r["w"] if r["kind"] in SERVES_IMAGE - {"near_dup"} else None for r in rows], pa.int32()
            ),
            "height": pa.array(
                [r["h"] if r["kind"] in SERVES_IMAGE - {"near_dup"} else None for r in rows], pa.int32()
            ),
            "texture": [r["texture"] for r in rows],
            "near_family": [r.get("family") for r in rows],  # how a near_dup was made (synthweb/copies.py)
        }
    )
    url_table = pa.table({"url": urls, "caption": caps, "uid": uids})

    _write_eval(out / "eval", cfg, progress)
    tmp_blobs.replace(out / "blobs.bin")
    pq.write_table(pa.Table.from_pylist(routes), out / "routes.parquet")
    pq.write_table(truth, out / "truth.parquet")
    pq.write_table(url_table, out / "urls.parquet")
    summary = {
        "config": asdict(cfg),
        "counts": cfg.counts(),
        "rows": len(rows),
        "concepts": [c.name for c in all_concepts()],
        "base_url": cfg.base_url,
        "bytes": (out / "blobs.bin").stat().st_size,
        "code_version": _code_version(),
    }
    (out / "web.json").write_text(json.dumps(summary, indent=2))
    return summary


def _write_eval(out: Path, cfg: WebConfig, progress: bool = True) -> None:
    """Held-out clean images, from a seed stream the pool never uses."""
    out.mkdir(parents=True, exist_ok=True)
    concepts = all_concepts()
    eval_seed = cfg.seed + 1_000_003
    zs = [
        {
            "i": k * len(concepts) + j,
            "kind": "clean",
            "colour": c.colour,
            "shape": c.shape,
            "texture": ("plain", "striped", "dotted")[k % 3],
            "w": 96,
            "h": 96,
            "format": "jpeg",
            "quality": 90,
            "lang": "en",
            "orig": -1,
        }
        for k in range(cfg.eval_per_concept)
        for j, c in enumerate(concepts)
    ]
    labels = [concepts.index(Concept(r["colour"], r["shape"])) for r in zs]
    images = render_all(zs, eval_seed, cfg.workers, "rendering eval set", progress)
    pq.write_table(
        pa.table(
            {
                "image": pa.array(images, pa.binary()),
                "label": pa.array(labels, pa.int32()),
                "label_name": [concepts[i].name for i in labels],
            }
        ),
        out / "zeroshot.parquet",
    )
    (out / "classes.json").write_text(
        json.dumps({"classnames": [c.name for c in concepts], "templates": captions.eval_templates()}, indent=2)
    )
    ret_seed = cfg.seed + 2_000_003
    rng = np.random.default_rng([ret_seed, 5])
    pairs = []
    for i in range(cfg.retrieval_pairs):
        c = concepts[i % len(concepts)]
        pairs.append(dict(zs[0], i=i, colour=c.colour, shape=c.shape, texture=captions_texture(rng)))
    pair_images = render_all(pairs, ret_seed, cfg.workers, "rendering retrieval set", progress)
    pair_caps = [
        captions.english(Concept(p["colour"], p["shape"]), np.random.default_rng([ret_seed, p["i"], 7]), p["texture"])
        for p in pairs
    ]
    pq.write_table(
        pa.table({"image": pa.array(pair_images, pa.binary()), "caption": pair_caps}), out / "retrieval.parquet"
    )


def _code_version() -> str:
    from curate import code_version

    return code_version()


def rebase_urls(urls: pa.Table, old_base: str, new_base: str) -> pa.Table:
    """Point a URL list built for ``old_base`` at a server on ``new_base``; other URLs stay put."""
    import pyarrow.compute as pc

    col = urls.column("url")
    pattern = "^" + re.escape(old_base.rstrip("/"))
    rebased = pc.replace_substring_regex(col, pattern, new_base.rstrip("/").replace("\\", "\\\\"))
    return urls.set_column(urls.column_names.index("url"), "url", rebased)
