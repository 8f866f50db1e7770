"""Turn study results into plots, a fit, and one self-contained ``report.html``.

The report opens offline: plots are embedded as base64 PNG, the style is inline, nothing is
fetched. It holds the main plots, the fitted law and its prediction, the results table, the tier
manifest summary (counts, bytes, quality ranges), the build's row fates, and the configs with the
code version that produced them.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from curate import code_version
from curate.core.manifest import SAMPLES, load_manifest, manifest_path
from pipelines import plots
from pipelines.scaling import best_tier, fit

REPORT = "report.html"
STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}img{max-width:100%;margin:.5em 0}
table{border-collapse:collapse;font-size:12px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:11px}"""


def fate_counts(build_dir: Path) -> dict[str, int]:
    p = build_dir / SAMPLES
    if not p.exists():
        return {}
    t = pq.read_table(p, columns=["status", "reason"]).to_pylist()
    return dict(Counter(f"{r['status']}: {r['reason'] or '-'}" for r in t))


def analyse(rows: list[dict], extend: float = 10.0) -> dict:
    """Fit the scaling law per variant and predict the best tier at ``extend`` x the largest budget."""
    out = {}
    for variant in sorted({r["variant"] for r in rows}):
        vr = [r for r in rows if r["variant"] == variant and r.get(plots.ACC) is not None]
        if len({r["tier"] for r in vr}) < 1 or len(vr) < 2:
            continue
        runs = [
            {
                "tier": r["tier"],
                "pool": r["tier_samples"],
                "samples_seen": r["samples_seen"],
                "error": 1 - r[plots.ACC],
            }
            for r in vr
        ]
        f = fit(runs)
        budget = extend * max(r["samples_seen"] for r in vr)
        best, preds = best_tier(f, budget)
        observed = {}
        for b in sorted({r["samples_seen"] for r in vr}):
            accs = {
                t: np.mean([r[plots.ACC] for r in vr if r["tier"] == t and r["samples_seen"] == b])
                for t in {r["tier"] for r in vr}
            }
            accs = {t: a for t, a in accs.items() if np.isfinite(a)}
            observed[int(b)] = max(accs, key=accs.get) if accs else None
        out[variant] = {
            "fit": f,
            "predict_at": budget,
            "best_tier": best,
            "predicted_accuracy": {t: 1 - e for t, e in preds.items()},
            "best_observed": observed,
        }
    return out


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v)) if v is not None else ""

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figures(rows: list[dict], analysis: dict, pdir: Path, pool: int, chance, extend: float) -> list[Path]:
    """The per-variant plots: accuracy vs compute (with the fit), accuracy vs fraction kept, retrieval."""
    figures = []
    for variant in sorted({r["variant"] for r in rows}):
        vr = [r for r in rows if r["variant"] == variant]
        sfx = "" if variant == "default" else f"_{variant}"
        fit_v = analysis.get(variant, {}).get("fit")
        figures.append(
            plots.metric_vs_samples(
                vr,
                plots.ACC,
                "zero-shot top-1",
                f"Zero-shot accuracy vs compute ({variant})",
                pdir / f"accuracy_vs_samples{sfx}.png",
                fit=fit_v,
                extend=extend,
                chance=chance,
            )
        )
        figures.append(plots.accuracy_vs_fraction(vr, pool, pdir / f"accuracy_vs_fraction{sfx}.png", chance=chance))
        if any(r.get("retrieval_r1_mean") is not None for r in vr):
            figures.append(
                plots.metric_vs_samples(
                    vr,
                    "retrieval_r1_mean",
                    "retrieval recall@1 (mean of i2t, t2i)",
                    f"Retrieval vs compute ({variant})",
                    pdir / f"retrieval_vs_samples{sfx}.png",
                )
            )
    return figures


def _run_columns(rows: list[dict]) -> list[str]:
    """The results-table columns that some run has."""
    return [
        c
        for c in (
            "variant",
            "tier",
            "samples_seen",
            "seed",
            "tier_samples",
            "repetition",
            "steps",
            plots.ACC,
            "zeroshot_top5",
            "retrieval_r1_mean",
            "linear_probe_top1",
            "train_seconds",
            "config_hash",
        )
        if any(c in r for r in rows)
    ]


def write_report(out: Path, rows: list[dict], study: dict, tiers_dir: str, extend: float = 10.0) -> Path:
    """Plots into ``out/plots/``, the analysis into ``out/fit.json``, everything into ``out/report.html``."""
    out = Path(out)
    pdir = out / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(tiers_dir)
    build_dir = Path(manifest_path(tiers_dir)).parent.parent
    chance = _chance(study)
    analysis = analyse(rows, extend)
    pool = max(t.samples for t in manifest.tiers.values())

    figures = _figures(rows, analysis, pdir, pool, chance, extend)
    fates = fate_counts(build_dir)
    if fates:
        figures.append(plots.drop_reasons(fates, pdir / "drop_reasons.png"))

    fit_json = {v: {**a, "fit": a["fit"].to_dict()} for v, a in analysis.items()}
    (out / "fit.json").write_text(json.dumps(fit_json, indent=2, default=float))

    cols = _run_columns(rows)
    tier_rows = [
        {
            "tier": k,
            "bands": ", ".join(v.bands),
            "samples": v.samples,
            "MB": v.bytes / 1e6,
            "quality": "–".join(f"{q:.3g}" for q in v.quality if q is not None),
            "shards": len(v.shards),
        }
        for k, v in manifest.tiers.items()
    ]
    summary = []
    for v, a in analysis.items():
        f = a["fit"]
        summary.append(
            f"<p><b>{html.escape(v)}</b>: best tier observed per budget: "
            + ", ".join(f"{b:,} → {t}" for b, t in a["best_observed"].items())
            + f". Predicted best at {a['predict_at']:,.0f} samples seen: <b>{html.escape(a['best_tier'])}</b> "
            + "("
            + ", ".join(f"{t} {acc:.3f}" for t, acc in sorted(a["predicted_accuracy"].items()))
            + "). "
            + f"Fit: d = {f.d:.3f}, τ = {f.tau:.2f}"
            + (f" (fixed: {', '.join(f.fixed)})" if f.fixed else "")
            + f", RMSE of log error {f.rmse:.3f}.</p>"
        )
    name = html.escape(study.get("name", ""))
    ordered = sorted(rows, key=lambda r: (r["variant"], r["tier_samples"], r["samples_seen"], r["seed"]))
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>clip-tiers study: {name}</title>
<style>{STYLE}</style></head><body>
<h1>clip-tiers study: {html.escape(study.get("name", ""))}</h1>
<p>{len(rows)} runs over {len({r["tier"] for r in rows})} tiers × {len({r["samples_seen"] for r in rows})} budgets.
Code version {html.escape(code_version())}.</p>
<h2>Which tier for which compute</h2>{"".join(summary) or "<p>Too few runs to fit.</p>"}
<h2>Plots</h2>{"".join(_img(p) for p in figures)}
<h2>Runs</h2>{_table(ordered, cols)}
<h2>Tiers</h2>{_table(tier_rows, ["tier", "bands", "samples", "MB", "quality", "shards"])}
<h2>Configs</h2><h3>Study</h3><pre>{html.escape(json.dumps(study, indent=2, default=str))}</pre>
<h3>Tiers build</h3><pre>{html.escape(json.dumps(manifest.config, indent=2, default=str))}</pre>
<p>Tiers built by {html.escape(manifest.code_version)}.</p>
</body></html>"""
    path = out / REPORT
    path.write_text(page)
    return path


def _chance(study: dict) -> float | None:
    classes = study.get("classes")
    if classes and Path(classes).exists():
        n = len(json.loads(Path(classes).read_text()).get("classnames", []))
        return 1.0 / n if n else None
    return None
