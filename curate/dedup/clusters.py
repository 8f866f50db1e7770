"""Duplicate links -> clusters -> one keeper per cluster, deterministically.

Links come in kinds, applied in order of strength: ``exact`` (same bytes), ``pixels`` (same decoded
pixels), ``near`` (pHash within k), ``semantic`` (CLIP embeddings within 1 - eps), ``caption``
(same normalised caption). Clusters are the connected components of all links together, so
duplication is transitive (a ~ b and b ~ c put a, b, c in one cluster). The keeper of a cluster is
its best member by ``(prefer desc, quality desc, uid asc)``; every other member records the kind
of the strongest link chain that joins it to the keeper and the keeper's uid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from curate.dedup.near import unique_ints

KINDS = ("exact", "pixels", "near", "semantic", "caption")


@dataclass
class Links:
    """Undirected links between row indices, grouped by kind."""

    n: int
    by_kind: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def add(self, kind: str, i: np.ndarray, j: np.ndarray) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown duplicate kind {kind!r}")
        i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
        if kind in self.by_kind:
            a, b = self.by_kind[kind]
            i, j = np.concatenate([a, i]), np.concatenate([b, j])
        self.by_kind[kind] = (i, j)

    def add_groups(self, kind: str, group: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Link rows that share a group id (e.g. equal sha256); ids < 0 mean "no group". ``rows`` names
        the row of each entry of ``group`` (default: its position), for a partition of the pool."""
        group = np.asarray(group, np.int64)
        at = np.flatnonzero(group >= 0)
        order = at[np.argsort(group[at], kind="stable")]
        g = group[order]
        if rows is not None:
            order = np.asarray(rows, np.int64)[order]
        # Link each member to the previous one in its group: a chain is enough for components.
        same = np.flatnonzero(g[1:] == g[:-1])
        self.add(kind, order[same], order[same + 1])

    def compact(self) -> tuple[np.ndarray, Links]:
        """(nodes, links between positions in ``nodes``): the rows that have a link, sorted, and the same
        links over them. Unlinked rows are singletons, so the components of the rest are unchanged. This
        Links is emptied as the other fills, a kind at a time, and positions are int32 where they fit:
        the two are never held whole at once (at 1B rows, ~190M links)."""
        ends = [unique_ints(np.concatenate([i, j])) for i, j in self.by_kind.values()]
        nodes = unique_ints(np.concatenate(ends)) if ends else np.empty(0, np.int64)
        del ends
        small = Links(len(nodes))
        small_type = _index_type(len(nodes))
        for kind in list(self.by_kind):
            i, j = self.by_kind.pop(kind)
            small.by_kind[kind] = (
                np.searchsorted(nodes, i).astype(small_type),
                np.searchsorted(nodes, j).astype(small_type),
            )
        return nodes, small


def _index_type(n: int) -> type:
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


class Forest:
    """Union-find over rows ``0..n-1`` in NumPy: each row's parent is itself or a smaller row, so a root is
    its tree's smallest row. ``union`` hooks the larger of two roots under the smaller, for every pair at
    once, until each pair shares a root; ``roots`` halves every path until each row points at its root.
    One int32 a row where scipy's ``connected_components`` built a sparse graph of every link (~30 B a
    link) and was run once for every prefix of the kinds."""

    CHUNK = 1 << 22  # pairs joined at a time: what they hold besides the parents is ~20 B a pair

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=_index_type(n))

    def roots(self) -> np.ndarray:
        p = self.parent
        while True:
            up = p[p]
            if np.array_equal(up, p):
                self.parent = p
                return p
            p = up

    def union(self, i: np.ndarray, j: np.ndarray) -> None:
        for a in range(0, len(i), self.CHUNK):
            si, sj = i[a : a + self.CHUNK], j[a : a + self.CHUNK]
            while len(si):
                p = self.roots()
                ri, rj = p[si], p[sj]
                apart = ri != rj
                si, sj, ri, rj = si[apart], sj[apart], ri[apart], rj[apart]
                # A root may be hooked by several pairs at once: it takes the smallest, the rest retry.
                np.minimum.at(p, np.maximum(ri, rj), np.minimum(ri, rj))


def preference_order(uids: np.ndarray, quality: np.ndarray | None, prefer: np.ndarray | None) -> np.ndarray:
    """The rows in keeper preference, best first: ``(prefer desc, quality desc, uid asc)``."""
    keys = [np.asarray(uids)]
    if quality is not None:
        q = np.nan_to_num(np.asarray(quality, np.float64), nan=-np.inf)
        keys.append(-q)
    if prefer is not None:
        keys.append(~np.asarray(prefer, bool))
    return np.lexsort(keys)  # the last key is primary


def resolve(
    links: Links, uids: np.ndarray, quality: np.ndarray | None = None, prefer: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Cluster all links and pick keepers.

    Returns arrays of length n: ``cluster`` (component id, the keeper's row index), ``keeper``
    (bool), ``dup_of`` (keeper's uid or None), ``dup_kind`` (None for keepers and singletons).
    """
    uids = np.asarray(uids, dtype=object)
    out = keepers(links, uids, quality, prefer)
    out["dup_of"] = np.where(out["keeper"], None, uids[out["cluster"]])
    return out


def keepers(
    links: Links,
    uids: np.ndarray,
    quality: np.ndarray | None = None,
    prefer: np.ndarray | None = None,
    kind_codes: bool = False,
) -> dict[str, np.ndarray]:
    """:func:`resolve` without ``dup_of``; ``uids`` may be anything that sorts as the uids do (their
    ranks, say), so a caller with many rows needs no Python string per row. ``kind_codes``: ``dup_kind``
    as int8 positions in :data:`KINDS` (-1: none) instead of strings."""
    n = links.n
    forest = Forest(n)
    for k in KINDS:
        if k in links.by_kind:
            forest.union(*links.by_kind[k])
    root = forest.roots()
    del forest
    order = preference_order(uids, quality, prefer)
    rank = np.empty(n, _index_type(n))
    rank[order] = np.arange(n, dtype=rank.dtype)
    # The keeper of each component: its member with the lowest rank.
    best = np.full(n, n, rank.dtype)
    np.minimum.at(best, root, rank)
    del rank
    keeper_row = order[best[root]]
    del order, best, root
    keeper = keeper_row == np.arange(n)

    kind = np.full(n, -1, np.int8)
    pending = ~keeper
    joined_by = Forest(n)
    for code, k in enumerate(KINDS):
        if k not in links.by_kind or not pending.any():
            continue
        # The strongest kinds that already join a row to its keeper name the link: the links are added a
        # kind at a time, so after kind k the forest's components are those of the kinds up to k.
        joined_by.union(*links.by_kind[k])
        p = joined_by.roots()
        joined = pending & (p == p[keeper_row])
        kind[joined] = code
        pending &= ~joined
    if not kind_codes:
        kind = np.array([None, *KINDS], dtype=object)[kind + 1]
    return {"cluster": keeper_row, "keeper": keeper, "dup_kind": kind}
