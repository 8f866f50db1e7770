"""Disjoint quality bands, and tiers as prefixes of them.

Kept samples, ranked by ``(quality desc, uid asc)``, are cut at cumulative fractions ``edges``
(default 10/20/30/40/50/100 %) into bands ``q000-010``, ``q010-020``, ..., ``q050-100``. Samples
that downloaded but failed a filter go into band ``filtered`` (duplicates go nowhere), so tier
``unfiltered`` exists without copying a byte. Tier ``topNN`` is every band up to the NN % edge,
``kept`` is every quality band, ``unfiltered`` adds ``filtered``. The cut is by rank, so band sizes
are exact, and ties in quality are broken by uid, so the same table always gives the same bands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FILTERED = "filtered"


@dataclass(frozen=True)
class BandConfig:
    edges: tuple[float, ...] = (0.10, 0.20, 0.30, 0.40, 0.50, 1.00)
    filtered_band: bool = True  # give filter-dropped downloads a band, for the `unfiltered` tier

    def validate(self) -> None:
        e = list(self.edges)
        if not e or any(not 0 < x <= 1 for x in e) or e != sorted(set(e)):
            raise ValueError(f"band edges must increase strictly within (0, 1]: {self.edges}")
        if e[-1] != 1.0:
            raise ValueError(f"the last band edge must be 1.0 so every kept sample has a band: {self.edges}")


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


def assign(uids: np.ndarray, quality: np.ndarray, cfg: BandConfig = BandConfig()) -> np.ndarray:
    """Band name per kept sample (object array aligned with ``uids``)."""
    names = band_names(cfg)
    n = len(uids)
    q = np.nan_to_num(np.asarray(quality, np.float64), nan=-np.inf)
    order = np.lexsort((np.asarray(uids), -q))  # quality desc, then uid asc
    cuts = np.floor(np.asarray(cfg.edges) * n + 1e-9).astype(np.int64)
    band_of_rank = np.searchsorted(cuts, np.arange(n), side="right")
    out = np.empty(n, dtype=object)
    out[order] = np.asarray(names, dtype=object)[band_of_rank]
    return out
