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
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

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
        links over them. Unlinked rows are singletons, so the components of the rest are unchanged."""
        ends = [a for i, j in self.by_kind.values() for a in (i, j)]
        nodes = unique_ints(np.concatenate(ends)) if ends else np.empty(0, np.int64)
        small = Links(len(nodes))
        for kind, (i, j) in self.by_kind.items():
            small.by_kind[kind] = (np.searchsorted(nodes, i), np.searchsorted(nodes, j))
        return nodes, small

    def components(self, kinds: tuple[str, ...]) -> np.ndarray:
        i = [self.by_kind[k][0] for k in kinds if k in self.by_kind]
        j = [self.by_kind[k][1] for k in kinds if k in self.by_kind]
        if not i:
            return np.arange(self.n)
        i, j = np.concatenate(i), np.concatenate(j)
        graph = sp.coo_matrix((np.ones(i.size, np.int8), (i, j)), shape=(self.n, self.n))
        return connected_components(graph, directed=False)[1]


def rank_order(uids: np.ndarray, quality: np.ndarray | None, prefer: np.ndarray | None) -> np.ndarray:
    """Position of each row in keeper preference: 0 is the best row overall."""
    keys = [np.asarray(uids)]
    if quality is not None:
        q = np.nan_to_num(np.asarray(quality, np.float64), nan=-np.inf)
        keys.append(-q)
    if prefer is not None:
        keys.append(~np.asarray(prefer, bool))
    order = np.lexsort(keys)  # the last key is primary
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


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
    links: Links, uids: np.ndarray, quality: np.ndarray | None = None, prefer: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """:func:`resolve` without ``dup_of``; ``uids`` may be anything that sorts as the uids do (their
    ranks, say), so a caller with many rows needs no Python string per row."""
    labels = links.components(KINDS)
    rank = rank_order(uids, quality, prefer)
    # The keeper of each component: its member with the lowest rank.
    order = np.lexsort((rank, labels))
    first = np.ones(len(order), bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    keeper_of_label = np.empty(labels.max() + 1 if len(labels) else 0, np.int64)
    keeper_of_label[labels[order[first]]] = order[first]
    keeper_row = keeper_of_label[labels]
    keeper = keeper_row == np.arange(len(labels))

    kind = np.full(len(labels), None, dtype=object)
    pending = ~keeper
    used: list[str] = []
    for k in KINDS:
        if k not in links.by_kind or not pending.any():
            continue
        used.append(k)
        # The strongest kinds that already join a row to its keeper name the link.
        lab = links.components(tuple(used))
        joined = pending & (lab == lab[keeper_row])
        kind[joined] = k
        pending &= ~joined
    return {"cluster": keeper_row, "keeper": keeper, "dup_kind": kind}
