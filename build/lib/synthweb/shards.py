"""Tier shards straight from a synthetic web, without the curation chain: for tests, benches and demos.

``shards_from_synthweb(web, out)`` reads a built synthetic web (``synthweb.build``), takes the
samples of the chosen kinds (clean ones by default: bytes from ``blobs.bin`` via ``routes.parquet``,
captions from ``urls.parquet``, kinds from ``truth.parquet``), deals them into nested tiers and writes
``out/tiers/bands/<band>/NNNNNN.tar`` plus ``out/tiers/manifest.json`` in the format of
:mod:`curate.core.manifest`, so :func:`curate.core.manifest.read_tier` reads it as it reads a real build.
Tiers are nested prefixes of one seeded shuffle: ``{"small": 0.1, "full": 1.0}`` gives a band of the
first 10% (tier ``small``) and a band of the rest (``full`` = both bands).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow.parquet as pq

from curate import code_version
from curate.core import units
from curate.core.manifest import BANDS, TIERS, BandEntry, Manifest
from curate.core.tarstream import TarWriter


def _samples(web: Path, kinds: tuple[str, ...]) -> list[dict]:
    urls = pq.read_table(web / "urls.parquet").to_pylist()
    kind_of = dict(
        zip(*pq.read_table(web / "truth.parquet", columns=["uid", "kind"]).to_pydict().values(), strict=True)
    )
    routes = {r["path"]: r for r in pq.read_table(web / "routes.parquet").to_pylist()}
    out = []
    for u in urls:
        if kind_of.get(u["uid"]) not in kinds:
            continue
        path = urlsplit(u["url"]).path
        r = routes.get(path)
        if r is None or r["behaviour"] != "ok" or not r["length"]:
            continue
        out.append({**u, "ext": path.rsplit(".", 1)[-1], "offset": r["offset"], "length": r["length"]})
    return sorted(out, key=lambda s: s["uid"])


def shards_from_synthweb(
    web: str | os.PathLike,
    out: str | os.PathLike,
    tiers: dict[str, float] | None = None,
    kinds: tuple[str, ...] = ("clean",),
    shard_size: int = 500,
    seed: int = 0,
) -> Path:
    """Write tier shards and a manifest for the synthetic web at ``web``; returns the manifest path."""
    web, out = Path(web), Path(out)
    tiers = dict(sorted((tiers or {"small": 0.1, "full": 1.0}).items(), key=lambda kv: kv[1]))
    samples = _samples(web, tuple(kinds))
    if not samples:
        raise ValueError(f"no samples of kinds {kinds} in {web}")
    order = np.random.default_rng([seed, 0x7135]).permutation(len(samples))
    samples = [samples[i] for i in order]
    tiers_dir = out / TIERS
    bands, lo = {}, 0
    with open(web / "blobs.bin", "rb") as blobs:
        for name, frac in tiers.items():
            hi = max(lo, min(len(samples), round(frac * len(samples))))
            band = f"band-{name}"
            shards = []
            for k in range(lo, hi, shard_size):
                rel = f"{BANDS}/{band}/{len(shards):06d}.tar"
                _write_shard(tiers_dir / rel, samples[k : min(hi, k + shard_size)], blobs, band)
                shards.append(rel)
            size = sum(os.path.getsize(tiers_dir / s) for s in shards)
            bands[band] = BandEntry(tuple(shards), hi - lo, size)
            lo = hi
    names = [f"band-{n}" for n in tiers]
    manifest = Manifest.assemble(
        tiers_dir,
        bands,
        {name: names[: k + 1] for k, name in enumerate(tiers)},
        config={"source": "synthweb", "web": str(web.resolve()), "kinds": list(kinds), "seed": seed},
        counts={"kept": {"-": len(samples)}},
        input_rows=len(samples),
        code_version=code_version(),
    )
    return manifest.write(tiers_dir)


def _write_shard(dest: Path, rows: list[dict], blobs, band: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with units.atomic_path(dest) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            w = TarWriter(fd)
            for r in rows:
                data = os.pread(blobs.fileno(), r["length"], r["offset"])
                meta = {"uid": r["uid"], "url": r["url"], "caption": r["caption"], "quality": None, "band": band}
                w.add(f"{r['uid']}.{r['ext']}", data)
                w.add(f"{r['uid']}.txt", (r["caption"] or "").encode())
                w.add(f"{r['uid']}.json", json.dumps(meta, sort_keys=True).encode())
            w.close()
        finally:
            os.close(fd)
