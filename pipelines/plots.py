"""Study plots (matplotlib PNG), each readable on its own, without the report around it.

- ``accuracy_vs_samples.png``: zero-shot top-1 against samples seen (log x), one line per tier,
  each point labelled with its repetition (samples seen / tier size); the fitted law drawn
  solid over the data and dashed beyond it;
- ``accuracy_vs_fraction.png``: zero-shot top-1 against the fraction of the pool kept, one line
  per budget: the inverted U of "Scaling (Down) CLIP";
- ``retrieval_vs_samples.png``: mean recall@1 of both retrieval directions, as the first plot;
- ``drop_reasons.png``: how the build spent its input rows, by status and reason.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display here or in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipelines.scaling import Fit  # noqa: E402

ACC = "zeroshot_top1"


def _mean_by(rows: list[dict], keys: tuple[str, ...], value: str) -> dict[tuple, tuple[float, float, float]]:
    """(keys) -> (mean, std, repetition) over seeds; rows without the value are skipped."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get(value) is not None and np.isfinite(r[value]):
            groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return {
        k: (float(np.mean([r[value] for r in g])), float(np.std([r[value] for r in g])), float(g[0]["repetition"]))
        for k, g in groups.items()
    }


def _tier_order(rows: list[dict]) -> list[str]:
    sizes = {r["tier"]: r["tier_samples"] for r in rows}
    return sorted(sizes, key=sizes.get)


def metric_vs_samples(rows, value, ylabel, title, path, fit: Fit | None = None, extend: float = 10.0, chance=None):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    stats = _mean_by(rows, ("tier", "samples_seen"), value)
    top = max((n for _, n in stats), default=1)
    for tier in _tier_order(rows):
        pts = sorted((n, m, s, rep) for (t, n), (m, s, rep) in stats.items() if t == tier)
        if not pts:
            continue
        n, m, s, rep = (np.array(x) for x in zip(*pts, strict=True))
        line = ax.errorbar(n, m, yerr=s, marker="o", capsize=3, label=f"{tier} ({_size(rows, tier)})")
        for x, y, r in zip(n, m, rep, strict=True):
            ax.annotate(f"{r:.1f}x", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if fit is not None and tier in fit.tiers and value == ACC:
            colour = line[0].get_color()
            inside = np.geomspace(n.min(), n.max(), 50)
            beyond = np.geomspace(n.max(), top * extend, 50)
            ax.plot(inside, 1 - fit.predict(tier, inside), color=colour, alpha=0.5, lw=1)
            ax.plot(beyond, 1 - fit.predict(tier, beyond), color=colour, ls="--", alpha=0.7, lw=1)
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.0%})")
    ax.set_xscale("log")
    ax.set_xlabel("samples seen (compute)")
    ax.set_ylabel(ylabel)
    ax.set_title(title + ("\n(dashed: fitted law beyond the largest run; labels: repetition)" if fit else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _size(rows, tier) -> str:
    n = next(r["tier_samples"] for r in rows if r["tier"] == tier)
    return f"{n:,} samples"


def accuracy_vs_fraction(rows: list[dict], pool: int, path: Path, chance=None) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    stats = _mean_by(rows, ("samples_seen", "tier"), ACC)
    sizes = {r["tier"]: r["tier_samples"] for r in rows}
    for budget in sorted({b for b, _ in stats}):
        pts = sorted((sizes[t] / pool, m, s, rep) for (b, t), (m, s, rep) in stats.items() if b == budget)
        f, m, s, rep = (np.array(x) for x in zip(*pts, strict=True))
        ax.errorbar(f, m, yerr=s, marker="o", capsize=3, label=f"{budget:,} samples seen")
        for x, y, r in zip(f, m, rep, strict=True):
            ax.annotate(f"{r:.1f}x", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.0%})")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the downloaded pool in the tier")
    ax.set_ylabel("zero-shot top-1")
    ax.set_title("Accuracy vs filter strength, per compute budget\n(labels: repetition = samples seen / tier size)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def drop_reasons(counts: dict[str, int], path: Path, title: str = "What happened to every input row") -> Path:
    """``counts``: ``"status: reason"`` -> rows (e.g. ``"dropped: lang"``, ``"kept: -"``)."""
    items = sorted(counts.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(items) + 1)))
    colours = {"kept": "tab:green", "dropped": "tab:orange", "failed": "tab:red"}
    ax.barh(
        [k for k, _ in items], [v for _, v in items], color=[colours.get(k.split(":")[0], "grey") for k, _ in items]
    )
    for y, (_, v) in enumerate(items):
        ax.annotate(f"{v:,}", (v, y), textcoords="offset points", xytext=(3, -3), fontsize=7)
    ax.set_xlabel("input rows")
    ax.set_title(f"{title} ({sum(counts.values()):,} rows)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
