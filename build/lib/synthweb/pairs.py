"""Serve any image-caption pairs as a web: real photos go through the real chain (download, annotate,
dedup, select, shard) exactly as a crawl would.

``write_pairs(out, images, captions, columns=..., truth=...)`` writes what :class:`WebServer` serves
(``blobs.bin``, ``routes.parquet``) and ``urls.parquet`` (url, caption, uid and ``columns``: input
columns the chain carries through to ``samples.parquet``), plus ``truth.parquet`` (uid and ``truth``)
for scoring. Benchmarks use it to put CIFAR-10 and COCO photos with true and false captions through
``tiers build``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.core import schema
from curate.core.imagecheck import sniff
from synthweb.build import DEFAULT_BASE, _token
from synthweb.render import CONTENT_TYPES, EXTENSIONS


def write_pairs(
    out: str | os.PathLike,
    images: list[bytes],
    captions: list[str],
    columns: dict[str, list] | None = None,
    truth: dict[str, list] | None = None,
    seed: int = 0,
) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    urls, routes, pos = [], [], 0
    with open(out / "blobs.bin.tmp", "wb") as f:
        for i, data in enumerate(images):
            fmt = sniff(data)[0]
            if fmt not in CONTENT_TYPES:
                raise ValueError(f"image {i} is {fmt}, not one of {', '.join(CONTENT_TYPES)}")
            path = f"/img/{_token(seed, i)}.{EXTENSIONS[fmt]}"
            routes.append(
                {
                    "path": path,
                    "behaviour": "ok",
                    "offset": pos,
                    "length": len(data),
                    "content_type": CONTENT_TYPES[fmt],
                    "location": None,
                }
            )
            urls.append(DEFAULT_BASE + path)
            f.write(data)
            pos += len(data)
    uids = schema.make_uids(urls, captions)
    pq.write_table(pa.Table.from_pylist(routes), out / "routes.parquet")
    pq.write_table(pa.table({"url": urls, "caption": captions, "uid": uids, **(columns or {})}), out / "urls.parquet")
    pq.write_table(pa.table({"uid": uids, **(truth or {})}), out / "truth.parquet")
    (out / "blobs.bin.tmp").replace(out / "blobs.bin")
    return out
