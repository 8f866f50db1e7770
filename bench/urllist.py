"""Benchmark: staging a URL list (``curate.urllist.stage_url_list``) in each format, time and peak memory.

Writes lists of ``--sizes`` rows (URLs made up, captions the real LAION and CC3M alt-texts of
``../shared/data/web_captions`` where present, else made up) as tsv, gzipped tsv, jsonl and parquet, then
stages each in a fresh process and reports its wall time and peak RSS (and the peak of a process that
only imports the code, ``stage_imports_mb``), beside the anchor: polars
reading the same file whole (``pl.read_csv`` / ``pl.read_ndjson`` / ``pl.read_parquet``, what a user
would otherwise do), in a fresh process too. Memory should not grow with the list. Writes
bench/results/urllist.json.

``tsv-raw``: the captions written as they are, unquoted, as CC3M and CC12M ship theirs, and one in
every ``INCH`` given an inch mark (``... 5" frame``, made up: the real captions here hold none, CC3M's
having been normalised), which polars refuses: its anchor is pyarrow's csv reader (img2dataset's)
reading it whole.

``--files K``: each list written as K files of equal rows (a directory, as DataComp ships its metadata),
staged both by worker processes (one per core: what the ``tiers`` CLI does for a list of 64 MB or more in
several files) and in one process, in the same run; ``worker_peak_mb`` is the largest worker's peak.

    .venv/bin/python bench/urllist.py [--sizes 1000000,5000000] [--formats tsv,tsv.gz,jsonl,parquet,tsv-raw]
    .venv/bin/python bench/urllist.py --sizes 2000000 --formats tsv,parquet --files 8
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ROOT.parent / "shared" / "data" / "web_captions"
INCH = 500  # one caption in INCH gets an inch mark in the tsv-raw list

STAGE = """
import os, resource, sys, tempfile, time
sys.path.insert(0, {root!r})
from curate.core import runtime
from curate.urllist import stage_url_list
from curate.urllist.readers import ReadConfig
runtime.MAIN_GUARDED = True  # python -c: spawned workers import no __main__ file
t0 = time.perf_counter()
cfg = ReadConfig(format="tsv") if {path!r}.endswith(".tsv-raw") else ReadConfig()
with tempfile.TemporaryDirectory() as d:
    s = stage_url_list({path!r}, cfg, os.path.join(d, "urls.parquet"), workers={workers})
print(s.rows, time.perf_counter() - t0, {peak}, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""

ANCHOR = """
import time
import polars as pl
t0 = time.perf_counter()
path = {path!r}
if path.endswith(".tsv-raw"):
    import pyarrow as pa, pyarrow.csv as pacsv
    df = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t", newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={{"url": pa.string(), "caption": pa.string()}}))
    df = pl.from_arrow(df)
elif ".parquet" in path:
    df = pl.read_parquet(path)
elif ".jsonl" in path:
    df = pl.read_ndjson(path)
else:
    df = pl.read_csv(path, separator="\\t", infer_schema=False, quote_char='"')
print(df.height, time.perf_counter() - t0, {peak})
"""

# This process's peak RSS in MB (VmHWM: ru_maxrss would carry the parent's across fork and exec).
PEAK = 'next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024'
IMPORTS = "import sys; sys.path.insert(0, {root!r}); import curate.urllist; print(0, 0, {peak}, 0)"


def captions() -> list[str]:
    import pyarrow.parquet as pq

    out: list[str] = []
    for f in sorted(CAPTIONS.glob("*.parquet")) if CAPTIONS.is_dir() else []:
        t = pq.read_table(f)
        col = next(c for c in t.column_names if "caption" in c.lower() or "text" in c.lower())
        out += [c for c in t.column(col).to_pylist() if c]
    return [" ".join(c.split()) for c in out] or [f"a photo of thing {i}" for i in range(1000)]


def write_lists(work: Path, n: int, formats: list[str], files: int = 1) -> dict[str, Path]:
    """A list of ``n`` rows in each format: a file, or with ``files`` > 1 a directory of that many."""
    if files > 1:
        out: dict[str, Path] = {}
        for k in range(files):
            part = work / f"part-{k:03d}"
            part.mkdir()
            for fmt, p in _write_list(part, n // files, formats, start=k * (n // files)).items():
                d = out.setdefault(fmt, work / f"list-{n}-{fmt}")
                d.mkdir(exist_ok=True)
                p.rename(d / f"{k:03d}.{fmt}")
            part.rmdir()
        return out
    return _write_list(work, n, formats)


def _write_list(work: Path, n: int, formats: list[str], start: int = 0) -> dict[str, Path]:
    import gzip
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    caps, rng = captions(), random.Random(start)
    span = range(start, start + n)
    urls = [f"https://img{i % 997}.example.com/p/{i:09d}/{rng.getrandbits(64):016x}.jpg" for i in span]
    texts = [caps[i % len(caps)] for i in span]
    paths = {fmt: work / f"list-{n}.{fmt}" for fmt in formats}
    quoted = ['"' + t.replace('"', '""') + '"' if ('"' in t or "\t" in t) else t for t in texts]
    tsv = "url\tcaption\n" + "".join(f"{u}\t{t}\n" for u, t in zip(urls, quoted, strict=True))
    for fmt, p in paths.items():
        if fmt == "tsv":
            p.write_text(tsv)
        elif fmt == "tsv-raw":
            raw = [t.replace("\t", " ") + (' 5" frame' if i % INCH == 0 else "") for i, t in enumerate(texts)]
            p.write_text("url\tcaption\n" + "".join(f"{u}\t{t}\n" for u, t in zip(urls, raw, strict=True)))
        elif fmt == "tsv.gz":
            with gzip.open(p, "wt", compresslevel=6) as f:
                f.write(tsv)
        elif fmt == "jsonl":
            with open(p, "w") as f:
                for u, t in zip(urls, texts, strict=True):
                    f.write(json.dumps({"url": u, "caption": t}) + "\n")
        elif fmt == "parquet":
            pq.write_table(pa.table({"url": urls, "caption": texts}), p)
    return paths


def run(code: str) -> tuple[int, float, float, float]:
    """(rows, seconds, peak MB, the largest child's peak MB) that ``code`` prints, run in a fresh process."""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    rows, wall, peak, *children = out.stdout.split()
    return int(rows), float(wall), float(peak), float(children[0]) if children else 0.0


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,5000000")
    ap.add_argument("--formats", default="tsv,tsv.gz,jsonl,parquet")
    ap.add_argument("--files", type=int, default=1, help="each list as a directory of this many files")
    args = ap.parse_args()
    formats = args.formats.split(",")
    _, _, base, _ = run(IMPORTS.format(root=str(ROOT), peak=PEAK))
    results = []
    with tempfile.TemporaryDirectory(prefix="clip-tiers-bench-list-") as d:
        for n in (int(s) for s in args.sizes.split(",")):
            for fmt, path in write_lists(Path(d), n, formats, args.files).items():
                r = {"rows": n, "format": fmt, "files": args.files, "file_mb": round(_size(path) / 1e6, 1)}
                stage = functools.partial(STAGE.format, root=str(ROOT), path=str(path), peak=PEAK)
                rows, wall, peak, workers_peak = run(stage(workers=None))
                r.update(stage_s=round(wall, 2), stage_peak_mb=round(peak), stage_imports_mb=round(base))
                if args.files > 1:  # the anchor: the same directory staged in one process
                    _, one, one_peak, _ = run(stage(workers=1))
                    r.update(worker_peak_mb=round(workers_peak), one_process_s=round(one, 2))
                    r.update(one_process_peak_mb=round(one_peak), speedup=round(one / wall, 2))
                else:
                    _, a_wall, a_peak, _ = run(ANCHOR.format(path=str(path), peak=PEAK))
                    r.update(polars_whole_s=round(a_wall, 2), polars_whole_peak_mb=round(a_peak))
                assert rows == n // args.files * args.files, (rows, n)
                results.append(r)
                print(json.dumps(r), flush=True)
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "urllist.json").write_text(json.dumps({"cores": os.cpu_count(), "runs": results}))


if __name__ == "__main__":
    main()
