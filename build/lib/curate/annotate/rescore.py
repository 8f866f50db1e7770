"""Score chosen samples of a build with a CLIP, reading their bytes from the raw tars.

The bootstrapped filter (``pipelines/bootstrap.py``) trains filter CLIPs on parts of the pool and
scores the *other* parts with them, so each model scores a different subset of rows: this is the
annotate stage's CLIP pass (:class:`~curate.annotate.clip.ClipScorer`, the annotate decoder)
restricted to given uids. :func:`clip_scores` reads each raw shard once for all the models that
need rows from it, and returns the cosine similarity of every requested pair; rows whose image does
not decode get NaN. It runs in this process, one model at a time (the filter models are tiny).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.annotate import image as img
from curate.annotate.raw import IMAGE, iter_samples
from curate.core import schema


def clip_scores(
    build_dir: str | os.PathLike,
    rows: pa.Table,
    model_of: np.ndarray,
    specs: list[str],
    device: str = "auto",
    batch_size: int = 256,
) -> np.ndarray:
    """Cosine similarity per row of ``rows`` (uid, shard, caption), scored by the model
    ``specs[model_of[k]]`` (a ``--clip-model`` spec, e.g. ``local-dir:RUN/model``); NaN where the image
    does not decode. ``model_of`` < 0 leaves a row unscored (NaN)."""
    from curate.annotate.clip import ClipScorer

    raw_dir = Path(build_dir) / "raw"
    model_of = np.asarray(model_of)
    out = np.full(rows.num_rows, np.nan, np.float32)
    at = {u: k for k, u in enumerate(rows.column(schema.UID).to_pylist())}
    captions = rows.column(schema.CAPTION).to_pylist()
    shard_of = rows.column(schema.SHARD).to_pylist()
    for m, spec in enumerate(specs):
        mine = np.flatnonzero(model_of == m)
        if not len(mine):
            continue
        scorer = ClipScorer(spec, device, batch_size)
        pending: list[tuple[int, object]] = []  # (row, preprocessed image): embedded a batch at a time

        def flush(pending=pending, scorer=scorer):
            part = [k for k, _ in pending]
            ei, et = scorer.embed([x for _, x in pending], [captions[k] for k in part])
            out[part] = (ei * et).sum(axis=1)
            pending.clear()

        for shard in sorted({shard_of[k] for k in mine}):
            for batch in iter_samples(raw_dir, shard):
                blobs = batch.column(IMAGE).to_pylist()
                for uid, data in zip(batch.column(schema.UID).to_pylist(), blobs, strict=True):
                    k = at.get(uid)
                    if k is None or model_of[k] != m or data is None:
                        continue
                    dec, err = img.decode(data)
                    if err is None:
                        pending.append((k, scorer.preprocess(dec.image)))
                    if len(pending) >= batch_size:
                        flush()
        if pending:
            flush()
    return out
