"""Annotate speed: samples/s/core at 64 px and 256 px, CLIP off and on, against a plain per-sample loop.

Three ways to do the same work on the same samples (synthetic-web images in its format mix, 70% JPEG,
15% PNG, 15% WebP, with English captions):

- ``stage``: our :class:`~curate.annotate.Annotator` in this process on batches of 256, one thread
  (OpenCV and torch pinned to one), so samples/s is per core;
- ``loop``: a plain per-sample Python loop computing the same signals the obvious way (PIL for every
  step, NumPy/SciPy for the maths, fastText and CLIP called once per sample);
- ``ray``: ``annotate()`` end to end on raw shards (tar + parquet in, parquet out) with one actor per
  core of a local Ray started beforehand. Two figures: end to end (wall clock of the call, actor
  start-up included, / cores) and in the workers (rows / seconds the shard units took, from their
  completion markers: the steady state a long run approaches), with the rate per CPU-second the
  actors' processes used beside it (what a core does without the neighbours this machine has).

Each figure is the best of ``--repeats`` runs by wall clock (other processes share this machine), with
the CPU-time rate (samples per CPU-second of this process) beside it. Writes bench/results/annotate.json.

    .venv/bin/python bench/annotate.py [--n64 3000] [--n256 800] [--clip-n 400] [--repeats 3] [--no-ray]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from curate.core.runtime import quiet_environment  # noqa: E402

quiet_environment()


def make_samples(n: int, side: int, seed: int = 0) -> pa.Table:
    from curate.annotate.raw import SAMPLE_SCHEMA
    from synthweb import captions
    from synthweb.build import FORMAT_SHARES
    from synthweb.render import all_concepts, encode, render

    concepts = all_concepts()
    rng = np.random.default_rng(seed)
    fmts = rng.choice(list(FORMAT_SHARES), size=n, p=list(FORMAT_SHARES.values()))
    images, caps = [], []
    for i in range(n):
        c = concepts[i % len(concepts)]
        r = np.random.default_rng([seed, i])
        images.append(encode(render(c, r, (side, side)), str(fmts[i]), 85))
        caps.append(captions.english(c, r))
    return pa.table(
        {
            "uid": [f"{side}-{i:07d}" for i in range(n)],
            "url": [f"http://127.0.0.1/{i}.jpg" for i in range(n)],
            "caption": caps,
            "shard": ["00000"] * n,
            "key": [f"{i:09d}" for i in range(n)],
            "original_width": pa.array([side] * n, pa.int32()),
            "original_height": pa.array([side] * n, pa.int32()),
            "image": pa.array(images, pa.binary()),
        },
        schema=SAMPLE_SCHEMA,
    )


def timed(fn, repeats: int) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that run)."""
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        w, c = time.perf_counter() - w0, time.process_time() - c0
        best = min(best, (w, c))
    return best


# --- the plain loop ------------------------------------------------------------------------------


class PlainLoop:
    """The same measurements, one sample at a time, written the obvious way."""

    def __init__(self, clip_spec: str | None):
        import fasttext

        from curate.annotate.language import default_model_path

        self.lid = fasttext.load_model(default_model_path())
        self.clip = None
        if clip_spec:
            from curate.annotate.clip import load, parse_spec

            self.clip = load(parse_spec(clip_spec), "cpu")

    def sample(self, data: bytes, caption: str) -> dict:
        import scipy.fft
        import scipy.ndimage
        from PIL import Image

        from curate.annotate.caption import caption_signals

        im = Image.open(io.BytesIO(data))
        fmt = im.format
        rgb = im.convert("RGB")
        a = np.asarray(rgb)
        grey = np.asarray(rgb.convert("L"), np.float64)
        q = (a // 16).astype(np.int32)
        mode = int(np.bincount((q[..., 0] * 256 + q[..., 1] * 16 + q[..., 2]).ravel()).argmax())
        centre = np.array([mode // 256, (mode // 16) % 16, mode % 16], np.int16) * 16 + 8
        blank = float((np.abs(a.astype(np.int16) - centre).max(axis=2) <= 12).mean())
        sharp = float(scipy.ndimage.laplace(grey).var())
        hist, _ = np.histogram(grey, bins=256, range=(0, 256))
        p = hist[hist > 0] / grey.size
        ent = float(-(p * np.log2(p)).sum())
        small = np.asarray(rgb.convert("L").resize((32, 32), Image.BOX), np.float64)
        low = scipy.fft.dctn(small, norm="ortho")[:8, :8]
        bits = (low > np.median(low)).ravel()
        phash = sum(1 << (63 - i) for i, b in enumerate(bits) if b)
        out = {
            "width": rgb.width,
            "height": rgb.height,
            "format": fmt,
            "blank": blank,
            "sharpness": sharp,
            "entropy": ent,
            "phash": phash,
            "sha256": hashlib.sha256(data).hexdigest(),
            "pixel_hash": hashlib.sha1(a.tobytes()).hexdigest(),
        }
        out.update({k: v[0].as_py() for k, v in caption_signals([caption]).items()})
        labels, probs = self.lid.predict(caption.replace("\n", " "), k=5)
        out["lang"] = labels[0]
        if self.clip is not None:
            import torch

            model, preprocess, tokenizer = self.clip
            with torch.inference_mode():
                fi = model.encode_image(preprocess(rgb)[None])
                ft = model.encode_text(tokenizer([caption]))
            out["clip_score"] = float(torch.nn.functional.cosine_similarity(fi, ft)[0])
        return out

    def __call__(self, table: pa.Table) -> list[dict]:
        return [
            self.sample(d, c) for d, c in zip(table["image"].to_pylist(), table["caption"].to_pylist(), strict=True)
        ]


# --- Ray end to end ------------------------------------------------------------------------------


def write_raw(table: pa.Table, build_dir: Path, per_shard: int) -> None:
    raw = build_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for s, k in enumerate(range(0, table.num_rows, per_shard)):
        part = table.slice(k, per_shard)
        with tarfile.open(raw / f"{s:05d}.tar", "w") as tf:
            cols = (part["key"].to_pylist(), part["image"].to_pylist(), part["caption"].to_pylist())
            for key, data, cap in zip(*cols, strict=True):
                for name, payload in ((f"{key}.jpg", data), (f"{key}.txt", cap.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
        meta = part.drop_columns(["image", "shard"]).append_column("status", pa.array(["success"] * part.num_rows))
        pq.write_table(meta, raw / f"{s:05d}.parquet")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n64", type=int, default=3000)
    ap.add_argument("--n256", type=int, default=800)
    ap.add_argument("--clip-n", type=int, default=400, help="samples for the CLIP-on runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ray-n", type=int, default=12000, help="samples for the Ray runs (CLIP on: --clip-n x 2)")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args(argv)

    import cv2
    import torch

    from curate.annotate import AnnotateConfig, Annotator, annotate
    from curate.annotate.clip import save_random_model

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_annotate_"))
    clip_spec = save_random_model(tmp / "tiny_clip")
    cores = os.cpu_count() or 1
    results = {"cores": cores, "load_avg_before": os.getloadavg(), "runs": []}

    def row(name: str, n: int, wall: float, cpu: float, per: int = 1) -> dict:
        r = {"run": name, "samples": n, "wall_s": round(wall, 3), "per_s_core": n / wall / per, "per_cpu_s": n / cpu}
        results["runs"].append(r)
        print(f"  {name:<28} {n:>6} samples  {r['per_s_core']:>8.0f} /s/core  ({r['per_cpu_s']:.0f} per CPU-second)")
        return r

    print(f"annotate speed on {cores} cores (load average {os.getloadavg()[0]:.2f})")
    for side, n in ((64, args.n64), (256, args.n256)):
        table = make_samples(n, side)
        clip_table = table.slice(0, min(n, args.clip_n))
        for clip in (None, clip_spec):
            tag = f"{side}px clip={'on' if clip else 'off'}"
            t = clip_table if clip else table
            ann = Annotator(AnnotateConfig(clip_model=clip, device="cpu"))
            ann(t.slice(0, 32))  # warm
            w, c = timed(lambda ann=ann, t=t: [ann(t.slice(k, 256)) for k in range(0, t.num_rows, 256)], args.repeats)
            ours = row(f"stage  {tag}", t.num_rows, w, c)
            loop = PlainLoop(clip)
            loop(t.slice(0, 8))
            w, c = timed(lambda loop=loop, t=t: loop(t), max(1, args.repeats - 1))
            plain = row(f"loop   {tag}", t.num_rows, w, c)
            print(f"  {'speed-up':<28} {ours['per_s_core'] / plain['per_s_core']:>22.1f}x")

    if not args.no_ray:
        from curate.core import units
        from curate.core.runtime import ray_session

        with ray_session(num_cpus=cores):
            for side in (64, 256):
                for clip in (None, clip_spec):
                    n = 2 * args.clip_n if clip else (args.ray_n if side == 64 else args.ray_n // 4)
                    t = make_samples(n, side, seed=1)
                    build = tmp / f"ray_{side}_{'clip' if clip else 'noclip'}"
                    write_raw(t, build, per_shard=max(1, n // (4 * cores)))
                    w0 = time.perf_counter()
                    s = annotate(build, AnnotateConfig(clip_model=clip, device="cpu"), progress=False)
                    w = time.perf_counter() - w0
                    tag = f"{side}px clip={'on' if clip else 'off'}"
                    row(f"ray    {tag} end to end", n, w, float("nan"), per=cores)
                    marks = [units.read_marker(build / "annotations", f"{k:05d}") for k in range(s.shards)]
                    busy = sum(m["seconds"] for m in marks)
                    row(f"ray    {tag} in workers", n, busy, sum(m["cpu_seconds"] for m in marks))

    results["load_avg_after"] = os.getloadavg()
    out = ROOT / "bench" / "results" / "annotate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
