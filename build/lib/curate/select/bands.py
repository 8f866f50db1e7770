"""Disjoint quality bands, and tiers as prefixes of them.

Kept samples, ranked by ``(quality desc, uid asc)``, are cut at cumulative fractions ``edges``
(default 10/20/30/40/50/100 %) into bands ``q000-010``, ``q010-020``, ..., ``q050-100``. Samples
that downloaded but failed a filter go into band ``filtered`` (duplicates go nowhere), so tier
``unfiltered`` exists without copying a byte. Tier ``topNN`` is every band up to the NN % edge,
``kept`` is every quality band, ``unfiltered`` adds ``filtered``. The cut is by rank, so band sizes
are exact, and ties in quality are broken by uid, so the same table always gives the same bands.

``balance = "clusters"`` cuts every band across concepts rather than across the whole pool. A
CLIP score is not comparable between concepts: a filter model scores the concepts it knows best
highest, and a plain top-20% tier can lose whole concepts (the demo's filter CLIP kept 18 of 25).
So kept samples are clustered by their CLIP image embeddings (spherical k-means, seeded, on rows in
uid order), each sample is ranked within its cluster, and the bands are cut by that within-cluster
rank: ``top20`` then holds about the best 20% of every cluster (MetaCLIP balances its pool over
concepts for the same reason). Quality ranges of balanced bands overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FILTERED = "filtered"


BALANCE = ("none", "clusters")
MAX_AUTO_CLUSTERS = 256
FIT_SAMPLE = 100_000  # k-means is fitted on at most this many rows; every row is then assigned


@dataclass(frozen=True)
class BandConfig:
    edges: tuple[float, ...] = (0.10, 0.20, 0.30, 0.40, 0.50, 1.00)
    filtered_band: bool = True  # give filter-dropped downloads a band, for the `unfiltered` tier
    balance: str = "none"  # "clusters": cut each band across image-embedding clusters (needs CLIP)
    clusters: int = 0  # for balance = "clusters"; 0: about sqrt(kept / 2), at most 256
    seed: int = 0

    def validate(self) -> None:
        e = list(self.edges)
        if not e or any(not 0 < x <= 1 for x in e) or e != sorted(set(e)):
            raise ValueError(f"band edges must increase strictly within (0, 1]: {self.edges}")
        if e[-1] != 1.0:
            raise ValueError(f"the last band edge must be 1.0 so every kept sample has a band: {self.edges}")
        if self.balance not in BALANCE:
            raise ValueError(f"balance must be one of {', '.join(BALANCE)}, not {self.balance!r}")
        if self.clusters < 0:
            raise ValueError(f"clusters must be >= 0 (0: automatic), not {self.clusters}")


def _pct(x: float) -> str:
    return f"{round(x * 100):03d}"


def band_names(cfg: BandConfig) -> list[str]:
    cfg.validate()
    lows = (0.0,) + tuple(cfg.edges[:-1])
    return [f"q{_pct(lo)}-{_pct(hi)}" for lo, hi in zip(lows, cfg.edges, strict=True)]


def tiers(cfg: BandConfig) -> dict[str, list[str]]:
    """Tier name -> the bands it is made of, best band first; smaller tiers come first."""
    names = band_names(cfg)
    out = {}
    for k, edge in enumerate(cfg.edges):
        name = "kept" if edge == 1.0 else f"top{round(edge * 100)}"
        out[name] = names[: k + 1]
    if cfg.filtered_band:
        out["unfiltered"] = names + [FILTERED]
    return out


def assign(
    uids: np.ndarray, quality: np.ndarray, cfg: BandConfig = BandConfig(), embeddings: np.ndarray | None = None
) -> np.ndarray:
    """Band name per kept sample (object array aligned with ``uids``).

    ``embeddings`` (CLIP image embeddings, rows aligned with ``uids``) are needed for
    ``balance = "clusters"`` and ignored otherwise.
    """
    names = band_names(cfg)
    n = len(uids)
    uids = np.asarray(uids)
    q = np.nan_to_num(np.asarray(quality, np.float64), nan=-np.inf)
    if cfg.balance == "clusters" and n:
        if embeddings is None:
            raise ValueError("balance = 'clusters' needs CLIP image embeddings: annotate with a CLIP model")
        rank = within_cluster_rank(uids, q, cluster_labels(uids, embeddings, cfg))
        order = np.lexsort((uids, -q, rank))  # within-cluster rank, then quality desc, then uid asc
    else:
        order = np.lexsort((uids, -q))  # quality desc, then uid asc
    cuts = np.floor(np.asarray(cfg.edges) * n + 1e-9).astype(np.int64)
    band_of_rank = np.searchsorted(cuts, np.arange(n), side="right")
    out = np.empty(n, dtype=object)
    out[order] = np.asarray(names, dtype=object)[band_of_rank]
    return out


def cluster_labels(uids: np.ndarray, embeddings: np.ndarray, cfg: BandConfig) -> np.ndarray:
    """Spherical k-means cluster per row, independent of row order (rows are clustered in uid order)."""
    from curate.dedup.semantic import kmeans, normalise

    n = len(uids)
    by_uid = np.argsort(uids, kind="stable")
    x = normalise(np.asarray(embeddings)[by_uid])
    k = min(n, cfg.clusters or max(1, min(MAX_AUTO_CLUSTERS, round(np.sqrt(n / 2)))))
    rng = np.random.default_rng(cfg.seed)
    fit = x if n <= FIT_SAMPLE else x[np.sort(rng.choice(n, FIT_SAMPLE, replace=False))]
    _, centres = kmeans(fit, min(k, len(fit)), iterations=20, seed=cfg.seed)
    labels = np.empty(n, np.int64)
    for start in range(0, n, 65_536):
        labels[by_uid[start : start + 65_536]] = np.argmax(x[start : start + 65_536] @ centres.T, axis=1)
    return labels


def within_cluster_rank(uids: np.ndarray, quality: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's place in its cluster, best first, as a fraction of the cluster's size (0 = its best)."""
    order = np.lexsort((uids, -quality, labels))  # by cluster, then quality desc, then uid asc
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    group = np.repeat(np.arange(len(starts)), sizes)
    rank = np.empty(len(order), np.float64)
    rank[order] = (np.arange(len(order)) - starts[group]) / sizes[group]
    return rank
