"""``tiers demo``: the whole chain on the embedded synthetic web, with no network.

Today the chain is: build a synthetic web, serve it on 127.0.0.1, probe one URL of every kind
through a real HTTP client, and print the ground-truth summary. Each stage that lands joins here.
"""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole chain on a generated synthetic web (no network needed)")
    p.add_argument("--out", default="demo_out", help="output directory (default: ./demo_out)")
    p.add_argument("--n", type=int, default=2000, help="URLs in the synthetic web (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def probe(url: str, timeout: float = 2.0) -> str:
    """What a plain HTTP client sees at ``url``, in a few words."""
    if "[fd00:" in url:
        return "not fetched: private address"

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, timeout=timeout) as r:
            body = r.read()
            robots = r.headers.get("X-Robots-Tag")
            return f"{r.status} {r.headers.get('Content-Type')} {len(body)} B" + (
                f" X-Robots-Tag: {robots}" if robots else ""
            )
    except urllib.error.HTTPError as e:
        loc = e.headers.get("Location")
        return f"{e.code}" + (f" -> {loc}" if loc else "")
    except TimeoutError:
        return f"timed out after {timeout:.0f} s"
    except urllib.error.URLError as e:
        return f"error: {e.reason}"


def run(args: argparse.Namespace) -> int:
    from curate.synthweb import WebConfig, WebServer, build

    out = Path(args.out)
    t0 = time.perf_counter()
    web_dir = out / "web"
    if not (web_dir / "web.json").exists():
        summary = build(web_dir, WebConfig(n=args.n, seed=args.seed))
        print(
            f"[1/2] built a synthetic web of {summary['rows']} URLs in {time.perf_counter() - t0:.1f} s -> {web_dir}"
        )
    else:
        print(f"[1/2] reusing the synthetic web in {web_dir}")

    truth = pq.read_table(web_dir / "truth.parquet").to_pylist()
    with WebServer(web_dir) as web:
        urls = pq.read_table(web.urls_path).to_pylist()
        print(f"[2/2] serving on {web.base_url}; one URL of each kind through a real HTTP client:")
        seen = set()
        for t, u in zip(truth, urls, strict=True):
            if t["kind"] in seen:
                continue
            seen.add(t["kind"])
            print(f"  {t['kind']:<16} {probe(u['url'])}")

    counts: dict[str, int] = {}
    for t in truth:
        counts[t["kind"]] = counts.get(t["kind"], 0) + 1
    noisy = sum(n for k, n in counts.items() if k != "clean")
    print(f"ground truth: {len(truth)} URLs, {noisy} noisy ({100 * noisy / len(truth):.0f}%):")
    for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<16} {n:>6}")
    print(f"done in {time.perf_counter() - t0:.1f} s; truth: {web_dir / 'truth.parquet'}")
    return 0
