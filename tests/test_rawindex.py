"""The raw-tar index picks, per key, the member a per-member loop picks, in the same order."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from curate.core.tarindex import INDEX_SCHEMA, entries
from curate.core.tarstream import IMAGE_EXTS, Members


def by_loop(members: list[tuple[str, int, int]]) -> pa.Table:
    """The rule as a loop over members (what the index did before it was column-wise)."""
    exts = {e: i for i, e in enumerate(IMAGE_EXTS)}
    best: dict[str, tuple[int, str, int, int]] = {}
    for name, offset, size in members:
        stem, dot, ext = name.rpartition(".")
        rank = exts.get(ext)
        if rank is None or "/" in stem:
            stem = stem.rpartition("/")[2]
            rank = exts.get(ext.lower())
            if not dot or rank is None:
                continue
            rank += len(IMAGE_EXTS)
            ext = ext.lower()
        old = best.get(stem)
        if old is None or rank <= old[0]:
            best[stem] = (rank, ext, offset, size)
    return pa.table(
        {
            "key": list(best),
            "ext": [v[1] for v in best.values()],
            "offset": [v[2] for v in best.values()],
            "size": [v[3] for v in best.values()],
        },
        schema=INDEX_SCHEMA,
    )


NAMES = [
    "k1.jpg", "k1.JPG", "k1.png", "a/k1.png", "a/b/k1.jpeg", "k1.txt", "k1.json", "jpg", "k1", "a.b/c", "x/k2.webp",
    "k\n1.jpg", "k1.jpeg", ".jpg", "k1..jpg", "ü.jpg", "K1.Jpg", "k2.WEBP", "k2.webp", "/k3.png", "k3.png/",
    "dir/", "k1.jpg.txt", "a.jpg/k4.png", "k5.JPEG", "k5.jpeg", "k5.Png",
]  # fmt: skip


def columns(members):
    return Members(
        pa.array([m[0] for m in members], pa.string()),
        np.array([m[1] for m in members], np.int64),
        np.array([m[2] for m in members], np.int64),
    )


@pytest.mark.parametrize("seed", range(60))
def test_index_entries_equal_the_loop(seed):
    rng = random.Random(seed)
    pool = rng.sample(NAMES, rng.randint(1, len(NAMES)))
    members = [(rng.choice(pool), 512 * (i + 1), rng.randint(0, 900)) for i in range(rng.randint(0, 40))]
    assert entries(columns(members)).equals(by_loop(members))


def test_index_of_a_tar_as_img2dataset_writes_it():
    members = []
    for i in range(1000):
        key = f"00000{i:04d}"
        members += [(f"{key}.jpg", 3 * i, i), (f"{key}.txt", 3 * i + 1, 5), (f"{key}.json", 3 * i + 2, 9)]
    got = entries(columns(members))
    assert got.equals(by_loop(members)) and got.num_rows == 1000
