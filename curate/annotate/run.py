"""Annotate a build directory: one resumable unit per raw shard, run by a Ray Data actor pool.

``annotate(DIR, cfg)`` reads ``DIR/raw/`` and writes, per raw shard ``NNNNN``:

- ``DIR/annotations/NNNNN.parquet`` — one row per successfully downloaded uid (``OUTPUT_SCHEMA``);
- ``DIR/annotations/embeddings/NNNNN.parquet`` — with CLIP only: uid, ``image_embedding``,
  ``text_embedding`` (unit-norm float16, null where the image did not decode), row-aligned with
  the annotation file;
- ``DIR/annotations/_done/NNNNN.json`` — the completion marker: the config fingerprint, the raw
  files' sizes and mtimes, row and error counts.

Outputs are written under temporary names and renamed before the marker, so a killed run leaves
nothing that looks finished. A rerun skips shards whose marker matches the config and the raw
files; a changed config (say, ``--clip-model`` added) or a re-downloaded shard is annotated again.
Shard-level failures (an unreadable tar, a model the actors cannot load) are collected and raised
as one :class:`InputError` after the other shards finish.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import code_version
from curate.annotate.raw import iter_samples, list_shards
from curate.annotate.stage import EMBEDDINGS, OUTPUT_SCHEMA, AnnotateConfig, Annotator
from curate.core import manifest, schema, units
from curate.core.dirlock import hold
from curate.core.errors import InputError
from curate.core.integrity import check_file, read_parquet, stamp, write_parquet
from curate.download.verify import check_raw

log = logging.getLogger(__name__)

EMBEDDINGS_DIR = "embeddings"
SUMMARY = pa.schema([("shard", pa.string()), ("rows", pa.int64()), ("seconds", pa.float64()), ("error", pa.string())])


def _raw_state(raw_dir: Path, shard: str) -> dict:
    out = {}
    for ext in ("parquet", "tar"):
        st = (raw_dir / f"{shard}.{ext}").stat()
        out[ext] = [st.st_size, st.st_mtime_ns]
    return out


def _is_current(out_dir: Path, raw_dir: Path, shard: str, cfg: AnnotateConfig) -> bool:
    marker = units.read_marker(out_dir, shard)
    return bool(
        marker
        and marker.get("fingerprint") == cfg.fingerprint()
        and marker.get("raw") == _raw_state(raw_dir, shard)
        and _outputs_intact(out_dir, shard, marker)
    )


def _outputs_intact(out_dir: Path, shard: str, marker: dict) -> bool:
    """The shard's annotation (and embedding) parquet are the bytes written then: a damaged one is
    annotated again (derived from the raw shard). Markers of older runs record no stamps: existence only."""
    stamps = marker.get("files", {"annotations": None})
    paths = {"annotations": out_dir / f"{shard}.parquet", "embeddings": out_dir / EMBEDDINGS_DIR / f"{shard}.parquet"}
    for name, recorded in stamps.items():
        problem = check_file(paths[name], recorded)
        if problem is not None:
            log.warning(f"{paths[name]}: {problem}; annotating shard {shard} again")
            return False
    return True


class ShardAnnotator:
    """A Ray Data actor over shard names: annotate each shard and write it as a unit.

    ``__call__`` takes a table with a ``shard`` column and returns one ``SUMMARY`` row per shard.
    """

    def __init__(self, build_dir: str, cfg: AnnotateConfig, worker: bool = True):
        if worker:
            # One actor per core: library thread pools would only fight each other.
            import cv2

            cv2.setNumThreads(1)
            if cfg.clip_model:  # torch takes seconds to import; only CLIP needs it
                import torch

                torch.set_num_threads(max(1, cfg.threads))
        self.build_dir = Path(build_dir)
        self.raw_dir = self.build_dir / manifest.RAW
        self.out_dir = self.build_dir / manifest.ANNOTATIONS
        self.cfg = cfg
        # A model that cannot be loaded is the user's to fix: report it per shard, as a shard error,
        # rather than as a crashed actor.
        self.annotator, self.init_error = None, None
        try:
            self.annotator = Annotator(cfg)
        except InputError as e:
            self.init_error = str(e)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for shard in batch.column("shard").to_pylist():
            t0 = time.perf_counter()
            try:
                if self.annotator is None:
                    raise InputError(self.init_error)
                n = self.annotate_shard(shard)
                rows.append({"shard": shard, "rows": n, "seconds": time.perf_counter() - t0, "error": None})
            except InputError as e:
                rows.append({"shard": shard, "rows": 0, "seconds": time.perf_counter() - t0, "error": str(e)})
        return pa.Table.from_pylist(rows, schema=SUMMARY)

    def annotate_shard(self, shard: str) -> int:
        t0, c0 = time.perf_counter(), time.process_time()
        units.clear_marker(self.out_dir, shard)
        parts = [self.annotator(s) for s in iter_samples(self.raw_dir, shard, self.cfg.batch_size)]
        table = pa.concat_tables(parts) if parts else _empty(self.annotator)
        emb_path = self.out_dir / EMBEDDINGS_DIR / f"{shard}.parquet"
        if self.cfg.clip_model:
            emb = table.select([schema.UID, *EMBEDDINGS])
            with units.atomic_path(emb_path) as tmp:
                write_parquet(emb, tmp)
        else:
            emb_path.unlink(missing_ok=True)  # from an earlier run with CLIP: no longer aligned
        table = table.select(OUTPUT_SCHEMA.names)
        with units.atomic_path(self.out_dir / f"{shard}.parquet") as tmp:
            write_parquet(table, tmp)
        files = {"annotations": stamp(self.out_dir / f"{shard}.parquet")}
        if self.cfg.clip_model:
            files["embeddings"] = stamp(emb_path)
        errors = Counter(e for e in table.column(schema.DECODE_ERROR).to_pylist() if e)
        units.mark_done(
            self.out_dir,
            shard,
            {
                "fingerprint": self.cfg.fingerprint(),
                "raw": _raw_state(self.raw_dir, shard),
                "files": files,
                "rows": table.num_rows,
                "decode_errors": dict(sorted(errors.items())),
                "seconds": round(time.perf_counter() - t0, 3),
                "cpu_seconds": round(time.process_time() - c0, 3),  # this actor's process, all threads
                "code_version": code_version(),
            },
        )
        return table.num_rows


def _empty(annotator: Annotator) -> pa.Table:
    table = OUTPUT_SCHEMA.empty_table()
    if annotator.clip is not None:
        for name in EMBEDDINGS:
            table = table.append_column(name, pa.array([], pa.list_(pa.float16(), annotator.clip.dim)))
    return table


def _actors(cfg: AnnotateConfig, todo: int) -> tuple[int, float]:
    """(actors, GPUs per actor) for this cluster."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    use_gpu = bool(cfg.clip_model) and gpus > 0 and cfg.device != "cpu"
    default = gpus if use_gpu else max(1, int(res.get("CPU", 1)) // max(1, cfg.threads))
    return max(1, min(todo, cfg.actors or default)), (1.0 if use_gpu else 0.0)


def annotate(
    build_dir: str | os.PathLike,
    cfg: AnnotateConfig = AnnotateConfig(),
    ray_address: str | None = None,
    progress: bool = True,
) -> AnnotateSummary:
    """Annotate every raw shard of ``build_dir`` not already done; return counts over all shards.

    Raises :class:`InputError` for a missing ``raw/`` or models that cannot be loaded (checked here,
    before Ray starts), and after the run for shards that could not be read, naming them; a damaged or
    missing raw shard of a ``tiers download`` raises before any work, naming the command that repairs it.
    """
    build_dir = Path(build_dir)
    with hold(build_dir, command="tiers annotate"):
        check_raw(build_dir)
        return _annotate(build_dir, cfg, ray_address, progress)


def _annotate(build_dir: Path, cfg: AnnotateConfig, ray_address: str | None, progress: bool) -> AnnotateSummary:
    raw_dir, out_dir = build_dir / manifest.RAW, build_dir / manifest.ANNOTATIONS
    shards = list_shards(raw_dir)
    if not shards:
        raise InputError("no raw shards (NNNNN.tar + NNNNN.parquet) here", path=str(raw_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    units.remove_stale_temporaries(out_dir)
    todo = [s for s in shards if not _is_current(out_dir, raw_dir, s, cfg)]
    failures = []
    if todo:
        _check_models(cfg)
        from curate.core.runtime import ray_session

        with ray_session(ray_address):
            failures = _run_ray(build_dir, cfg, todo, progress)
    if failures:
        raise InputError("annotate: " + "; ".join(f"shard {s}: {e}" for s, e in failures))
    return summarise(build_dir, shards, annotated=len(todo))


def _check_models(cfg: AnnotateConfig) -> None:
    """Fail before starting Ray on what is cheap to check: the LID model loads, the CLIP spec parses and
    names files that exist. Weights are loaded in the actors only."""
    from curate.annotate.clip import parse_spec
    from curate.annotate.language import LanguageID

    LanguageID(cfg.lid_model, cfg.lid_top_k)
    if cfg.clip_model:
        spec = parse_spec(cfg.clip_model)
        for path in (spec.arch if spec.arch.endswith(".json") else None, spec.weights, spec.trainer_run):
            if path and ("/" in path or os.sep in path) and not os.path.exists(path):
                raise InputError("no such file for --clip-model", path=path)


def _run_ray(build_dir: Path, cfg: AnnotateConfig, todo: list[str], progress: bool) -> list[tuple[str, str]]:
    import ray
    from tqdm import tqdm

    actors, gpus = _actors(cfg, len(todo))
    ds = ray.data.from_items([{"shard": s} for s in todo], override_num_blocks=len(todo))
    out = ds.map_batches(
        ShardAnnotator,
        fn_constructor_kwargs={"build_dir": str(build_dir), "cfg": cfg},
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=max(1, cfg.threads),
        num_gpus=gpus,
    )
    failures = []
    with tqdm(total=len(todo), desc="annotate", unit="shard", disable=not progress) as bar:
        for batch in out.iter_batches(batch_size=None, batch_format="pyarrow"):
            for r in batch.to_pylist():
                if r["error"]:
                    failures.append((r["shard"], r["error"]))
                bar.update(1)
                bar.set_postfix(rows=r["rows"])
    return failures


@dataclass(frozen=True)
class AnnotateSummary:
    """Counts over every raw shard's completion marker: ``decoded + sum(decode_errors) == rows``."""

    shards: int  # raw shards in the build
    done: int  # of them annotated (now or before)
    annotated: int  # of them annotated by this call
    rows: int  # downloaded samples annotated
    decoded: int
    decode_errors: dict[str, int]


def summarise(build_dir: str | os.PathLike, shards: list[str] | None = None, annotated: int = 0) -> AnnotateSummary:
    """Counts from the completion markers: rows, decode errors by reason, shards done."""
    out_dir = Path(build_dir) / manifest.ANNOTATIONS
    shards = shards if shards is not None else list_shards(Path(build_dir) / manifest.RAW)
    rows, errors, done = 0, Counter(), 0
    for s in shards:
        m = units.read_marker(out_dir, s)
        if m:
            done += 1
            rows += m["rows"]
            errors.update(m["decode_errors"])
    return AnnotateSummary(
        shards=len(shards),
        done=done,
        annotated=annotated,
        rows=rows,
        decoded=rows - sum(errors.values()),
        decode_errors=dict(sorted(errors.items())),
    )


def _done_shards(build_dir: Path) -> list[str]:
    raw_dir, out_dir = build_dir / manifest.RAW, build_dir / manifest.ANNOTATIONS
    shards = list_shards(raw_dir)
    missing = [s for s in shards if not units.is_done(out_dir, s)]
    if missing:
        raise InputError(f"annotations missing for raw shard(s) {', '.join(missing[:5])}; run `tiers annotate`")
    return shards


def read_annotations(build_dir: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """The whole annotation table, shards in order; raises if a raw shard is not annotated yet."""
    build_dir = Path(build_dir)
    out_dir = build_dir / manifest.ANNOTATIONS
    fix = f"run `tiers annotate {build_dir}`: it annotates damaged shards again"
    parts = [read_parquet(out_dir / f"{s}.parquet", columns=columns, fix=fix) for s in _done_shards(build_dir)]
    return pa.concat_tables(parts) if parts else OUTPUT_SCHEMA.empty_table()


def load_embeddings(build_dir: str | os.PathLike, which: str = schema.IMAGE_EMBEDDING) -> tuple[list[str], np.ndarray]:
    """``(uids, float16 array (n, dim))`` row-aligned with :func:`read_annotations`; zeros where absent.

    Raises :class:`InputError` when the annotations were made without CLIP.
    """
    build_dir = Path(build_dir)
    emb_dir = build_dir / manifest.ANNOTATIONS / EMBEDDINGS_DIR
    uids, blocks = [], []
    for s in _done_shards(build_dir):
        path = emb_dir / f"{s}.parquet"
        if not path.exists():
            raise InputError("no CLIP embeddings: annotate with --clip-model", path=str(path))
        t = read_parquet(path, columns=[schema.UID, which], fix=f"run `tiers annotate {build_dir}`")
        col = t.column(which).combine_chunks()
        arr = np.zeros((len(col), col.type.list_size), np.float16)
        valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
        # flatten() skips null rows, so the values fill exactly the valid rows.
        arr[valid] = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size)
        uids.extend(t.column(schema.UID).to_pylist())
        blocks.append(arr)
    if not blocks:
        return [], np.zeros((0, 0), np.float16)
    return uids, np.concatenate(blocks)
