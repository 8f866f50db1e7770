"""SemDeDup (Abbas et al. 2023): semantic duplicates among CLIP image embeddings.

Spherical k-means puts similar embeddings in the same cluster; within a cluster every pair with
cosine similarity above ``1 - eps`` is linked. Comparing only within clusters turns n^2 into
roughly n^2 / clusters; a pair split across clusters is missed, which SemDeDup accepts as the
price of scale. Seeded, so the same embeddings give the same links.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SemanticConfig:
    eps: float = 0.03  # link pairs with cosine similarity > 1 - eps
    clusters: int = 0  # 0: about sqrt(n / 4), at least 1
    iterations: int = 10
    seed: int = 0


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kmeans(x: np.ndarray, k: int, iterations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means of unit vectors ``x``: (labels, unit centres). Seeded random init, no k-means++."""
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(len(x), size=k, replace=False)].copy()
    labels = np.zeros(len(x), np.int64)
    for _ in range(iterations):
        # Each row's nearest centre, 8,192 rows at a time (not rows x k similarities at once).
        blocks = range(0, max(len(x), 1), 8192)
        labels = np.concatenate([np.argmax(x[s : s + 8192] @ centres.T, axis=1) for s in blocks])
        for c in range(k):
            members = x[labels == c]
            if len(members):
                m = members.sum(0)
                centres[c] = m / max(np.linalg.norm(m), 1e-12)
    return labels, centres


def semantic_pairs(embeddings: np.ndarray, cfg: SemanticConfig = SemanticConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) row pairs, i < j, whose embeddings' cosine similarity exceeds ``1 - cfg.eps``."""
    x = normalise(embeddings)
    n = len(x)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    k = cfg.clusters or max(1, int(np.sqrt(n / 4)))
    k = min(k, n)
    labels, _ = kmeans(x, k, cfg.iterations, cfg.seed)
    out_i, out_j = [], []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) < 2:
            continue
        sims = x[rows] @ x[rows].T
        a, b = np.nonzero(np.triu(sims > 1.0 - cfg.eps, k=1))
        out_i.append(rows[a])
        out_j.append(rows[b])
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)
