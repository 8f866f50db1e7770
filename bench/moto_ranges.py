"""Benchmark: what one ranged GET costs on moto's S3 server as the object grows — the S3 benches' yardstick.

`bench/scale.py --s3` builds into moto's server; its shard stage reads raw tars by ranged GETs. On S3 a
ranged GET's cost does not depend on the object's size; this measures whether moto's does, by timing
64 KB ranges of objects of growing size (through s3fs, as the build reads them). Prints milliseconds per
GET per object size and writes bench/results/moto_ranges.json.

    .venv/bin/python bench/moto_ranges.py [--sizes-mb 1,32,128] [--gets 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.scale import s3_endpoint  # noqa: E402

BUCKET = "scale"  # the bucket s3_endpoint makes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", default="1,32,128")
    ap.add_argument("--gets", type=int, default=20)
    args = ap.parse_args()
    server = s3_endpoint()  # moto in a process of its own, with the bucket the S3 benches use
    import s3fs

    results = []
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        for mb in [int(v) for v in args.sizes_mb.split(",")]:
            path = f"{BUCKET}/object-{mb}mb"
            fs.pipe_file(path, os.urandom(mb << 20))
            t0 = time.perf_counter()
            for k in range(args.gets):
                fs.cat_file(path, start=k * 4096, end=k * 4096 + 65536)
            ms = (time.perf_counter() - t0) / args.gets * 1e3
            results.append({"object_mb": mb, "ms_per_64kb_get": round(ms, 1)})
            print(f"  {mb:5d} MB object: {ms:6.1f} ms a 64 KB ranged GET", flush=True)
            fs.rm_file(path)
    finally:
        server.terminate()
        server.wait()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "moto_ranges.json").write_text(json.dumps({"runs": results, "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
