"""Turn study results into plots, an analysis, and one self-contained ``report.html``.

The report says what it knows before it shows anything: it opens with the verdicts (who beats whom
at which budget, by how much, or "cannot rank" and why), the fit's status (fitted with so many
degrees of freedom and a prediction with its probability, or refused and why), and the caveats.
Then the accuracy of every cell with its interval, the plots, the runs, the tiers and the configs.
It opens offline: plots are embedded as base64 PNG, the style is inline, nothing is fetched.
``analysis.json`` holds the same verdicts, fits and caveats for machines (``fit.json``: the fits).
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from curate import code_version
from curate.core.manifest import SAMPLES, load_manifest, manifest_path
from pipelines import plots
from pipelines.analysis import Analysis, analyse, format_cell

REPORT = "report.html"
STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}img{max-width:100%;margin:.5em 0}
table{border-collapse:collapse;font-size:12px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
li.decided{color:#1a6b1a}li.open{color:#555}.caveat{background:#fff6e0;padding:.2em 1em;border-left:4px solid #e0a000}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:11px}"""
RUN_COLUMNS = (
    "variant",
    "tier",
    "samples_seen",
    "seed",
    "tier_samples",
    "repetition",
    "steps",
    "zeroshot_top1",
    "zeroshot_top1_lo",
    "zeroshot_top1_hi",
    "zeroshot_top5",
    "retrieval_r1_mean",
    "train_seconds",
    "config_hash",
)


def fate_counts(build_dir: Path) -> dict[str, int]:
    p = build_dir / SAMPLES
    if not p.exists():
        return {}
    t = pq.read_table(p, columns=["status", "reason"]).to_pylist()
    return dict(Counter(f"{r['status']}: {r['reason'] or '-'}" for r in t))


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


def cell_table(a: Analysis, variant: str) -> tuple[list[dict], list[str]]:
    """Tier x budget: "mean [lo, hi] (n seeds)", repetition in the tier column's budget header."""
    cells = [c for c in a.cells if c.variant == variant]
    budgets = sorted({c.budget for c in cells})
    rows = []
    for tier in dict.fromkeys(c.tier for c in cells):
        row = {"tier": f"{tier} ({next(c.tier_samples for c in cells if c.tier == tier):,})"}
        for b in budgets:
            c = a.cell(variant, tier, b)
            row[f"{b:,}"] = format_cell(c) if c else ""
        rows.append(row)
    return rows, ["tier", *(f"{b:,}" for b in budgets)]


def _figures(pdir: Path, a: Analysis, pool: int, chance: float | None, build_dir: Path) -> list[Path]:
    out = []
    for variant in dict.fromkeys(c.variant for c in a.cells):
        cells = [c for c in a.cells if c.variant == variant]
        sfx = "" if variant == "default" else f"_{variant}"
        vf = a.fits.get(variant)
        title = f"Zero-shot accuracy vs compute ({variant})"
        out.append(
            plots.metric_vs_samples(cells, pdir / f"accuracy_vs_samples{sfx}.png", title=title, fit=vf, chance=chance)
        )
        out.append(
            plots.accuracy_vs_fraction(cells, pool, pdir / f"accuracy_vs_fraction{sfx}.png", f"({variant})", chance)
        )
        if any(c.retrieval for c in cells):
            out.append(
                plots.metric_vs_samples(
                    cells,
                    pdir / f"retrieval_vs_samples{sfx}.png",
                    metric="retrieval",
                    ylabel="retrieval recall@1 (mean of i2t, t2i)",
                    title=f"Retrieval vs compute ({variant})",
                )
            )
    if a.verdicts:
        out.append(plots.gaps(a.verdicts, pdir / "gaps.png"))
    fates = fate_counts(build_dir)
    if fates:
        out.append(plots.drop_reasons(fates, pdir / "drop_reasons.png"))
    return out


def _knowledge(a: Analysis) -> str:
    """The top of the report: verdicts, the fit's status, caveats."""
    items = []
    for v in a.verdicts:
        items.append(f'<li class="{"decided" if v.decided else "open"}"><b>{v.status}</b>: {html.escape(v.text)}</li>')
    fits = "".join(f"<p><b>{html.escape(k)}</b>: {html.escape(f.status)}</p>" for k, f in a.fits.items())
    caveats = [c for f in a.fits.values() if f.extrapolation for c in f.extrapolation.caveats] + a.caveats
    cav = "".join(f"<li>{html.escape(c)}</li>" for c in caveats)
    return (
        f"<h2>Verdicts</h2><p>{html.escape(a.summary())}.</p><ul>{''.join(items)}</ul>"
        f"<h2>Scaling-law fit</h2>{fits or '<p>No fit.</p>'}"
        f'<h2>Caveats</h2><div class="caveat"><ul>{cav or "<li>none</li>"}</ul></div>'
    )


def write_report(
    out: Path, rows: list[dict], study: dict, tiers_dir: str, extend: float = 10.0, analysis: Analysis | None = None
) -> Path:
    """Plots into ``out/plots/``, the analysis into ``out/analysis.json``, everything into ``out/report.html``."""
    out = Path(out)
    pdir = out / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(tiers_dir)
    a = analysis or analyse(rows, extend=extend)
    pool = max(t.samples for t in manifest.tiers.values())
    figures = _figures(pdir, a, pool, _chance(study), Path(manifest_path(tiers_dir)).parent.parent)
    doc = a.to_dict()
    (out / "analysis.json").write_text(json.dumps(doc, indent=2, default=float))
    (out / "fit.json").write_text(json.dumps(doc["fits"], indent=2, default=float))
    tables = []
    for variant in dict.fromkeys(c.variant for c in a.cells):
        trows, cols = cell_table(a, variant)
        tables.append(f"<h3>{html.escape(variant)}</h3>{_table(trows, cols)}")
    runs = sorted(rows, key=lambda r: (r["variant"], r["tier_samples"], r["samples_seen"], r["seed"]))
    cols = [c for c in RUN_COLUMNS if any(c in r for r in rows)]
    name = html.escape(study.get("name", ""))
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>clip-tiers study: {name}</title>
<style>{STYLE}</style></head><body>
<h1>clip-tiers study: {name}</h1>
<p>{len(rows)} runs over {len({r["tier"] for r in rows})} tiers × {len({r["samples_seen"] for r in rows})} budgets
× {len({r["variant"] for r in rows})} variants. Code version {html.escape(code_version())}.</p>
{_knowledge(a)}
<h2>Zero-shot top-1 per cell</h2><p>Mean and 95% interval over seeds (repetition = samples seen / tier size).
* one seed: the interval is a bootstrap over the eval samples of that one run and leaves out training noise.</p>
{"".join(tables)}
<h2>Plots</h2>{"".join(_img(p) for p in figures)}
<h2>Runs</h2><p>zeroshot_top1_lo/hi: each run's own 95% bootstrap interval over its eval samples.</p>
{_table(runs, cols)}
<h2>Tiers</h2>{_table(_tier_rows(manifest), ["tier", "bands", "samples", "MB", "quality", "shards"])}
<h2>Configs</h2><h3>Study</h3><pre>{html.escape(json.dumps(study, indent=2, default=str))}</pre>
<h3>Tiers build</h3><pre>{html.escape(json.dumps(manifest.config, indent=2, default=str))}</pre>
<p>Tiers built by {html.escape(str(manifest.code_version))}.</p>
</body></html>"""
    path = out / REPORT
    path.write_text(page)
    return path


def _tier_rows(manifest) -> list[dict]:
    return [
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


def _chance(study: dict) -> float | None:
    classes = study.get("classes") or (study.get("eval") or {}).get("classes")
    if classes and Path(classes).exists():
        n = len(json.loads(Path(classes).read_text()).get("classnames", []))
        return 1.0 / n if n else None
    return None
