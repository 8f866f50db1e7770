"""Benchmark: a hostile web and a careless user against clip-tiers. Prints "N/N handled", one line per case.

Every case has an expected outcome and an observed one; a case is handled when they agree. Three groups:

- **fetch** (in this process, no Ray): each hostile behaviour of ``synthweb.hostile`` fetched once,
  with its reason and seconds — trickled status line, headers and body, stalls, endless bodies,
  10 GB Content-Lengths, noai headers (also on a redirect hop), bombs in every image format,
  formats whose size cannot be checked, redirects to private addresses, 23 forms of private
  addresses, and the slow-header shard (the unit a Ray task runs) with its wall time;
- **inputs**: URL lists with an empty URL cell, corrupt gzip, colliding ``status`` columns and a
  ragged row, through the ``tiers`` CLI;
- **build** (``--fast`` skips it): a real ``tiers build`` of all the URLs above against the running
  hostile server — every row's fate checked — then a second build on the same directory while the
  first runs (refused at once), kill -9 and resume (same result), damaged band shards, parquet
  files and manifests (repaired or named), a retier that a rebuild keeps, raw tars with ``../``,
  absolute and link members, empty results (exit 3 with one line), training on an empty tier and a
  rejected training that leaves nothing behind.

Writes bench/results/hostile.json.

    .venv/bin/python bench/hostile.py [--fast] [--deadline 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench.hostile_build import build_cases  # noqa: E402
from bench.hostile_cases import fetch_cases, input_cases  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fast", action="store_true", help="fetch and input cases only (no tiers build)")
    ap.add_argument("--deadline", type=float, default=4.0, help="url_deadline in seconds (default 4)")
    ap.add_argument("--keep", help="work in this directory and keep it (default: a temporary one)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "hostile.json"))
    args = ap.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = fetch_cases(args.deadline, work) + input_cases(work)
    if not args.fast:
        results += build_cases(args.deadline, work)
    handled = sum(r["handled"] for r in results)
    width = max(len(r["case"]) for r in results)
    for r in results:
        mark = "ok  " if r["handled"] else "FAIL"
        print(f"{mark} {r['case']:<{width}}  expected: {r['expected']}  observed: {r['observed']}")
    print(f"{handled}/{len(results)} handled in {time.perf_counter() - t0:.0f} s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"handled": handled, "cases": len(results), "results": results}, indent=2))
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if handled == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
