"""Annotate a build directory: one resumable unit per raw shard, run by the stage runner on a Ray actor pool.

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

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import code_version
from curate.annotate.raw import iter_samples, list_shards
from curate.annotate.stage import EMBEDDINGS, OUTPUT_SCHEMA, AnnotateConfig, Annotator
from curate.core import access, manifest, runner, schema, storage, tarindex, units
from curate.core.dirlock import hold
from curate.core.errors import InputError
from curate.download.verify import check_raw

EMBEDDINGS_DIR = "embeddings"


def _raw_state(raw_dir: str, shard: str) -> dict:
    return {ext: storage.stamp(storage.join(raw_dir, f"{shard}.{ext}")) for ext in ("parquet", "tar")}


def _unit(raw_dir: str, shard: str, cfg: AnnotateConfig) -> runner.Unit:
    """A shard's unit: fingerprinted by the config and the raw files' sizes and versions."""
    key = json.dumps({"config": cfg.fingerprint(), "raw": _raw_state(raw_dir, shard)}, sort_keys=True, default=str)
    fp = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    outputs = (f"{shard}.parquet",) + ((f"{EMBEDDINGS_DIR}/{shard}.parquet",) if cfg.clip_model else ())
    return runner.Unit(shard, fp, outputs=outputs, args=shard)


def _is_current(out_dir, raw_dir, shard: str, cfg: AnnotateConfig) -> bool:
    return runner.finished(storage.normalise(out_dir), _unit(storage.normalise(raw_dir), shard, cfg))


class ShardAnnotator:
    """The runner's unit function for raw shards, built once per actor (models load once).

    ``__call__(annotations dir, unit)`` annotates raw shard ``unit.args`` and writes its outputs; the
    runner writes the marker after it.
    """

    def __init__(self, build_dir: str, cfg: AnnotateConfig, worker: bool = True):
        if worker:
            # One actor per core: library thread pools would only fight each other.
            import cv2

            cv2.setNumThreads(1)
            if cfg.clip_model:  # torch takes seconds to import; only CLIP needs it
                import torch

                torch.set_num_threads(max(1, cfg.threads))
        self.build_dir = storage.normalise(build_dir)
        self.raw_dir = storage.join(self.build_dir, manifest.RAW)
        self.out_dir = storage.join(self.build_dir, manifest.ANNOTATIONS)
        self.cfg = cfg
        # A model that cannot be loaded is the user's to fix: report it per shard, as a shard error,
        # rather than as a crashed actor.
        self.annotator, self.init_error = None, None
        try:
            self.annotator = Annotator(cfg)
        except InputError as e:
            self.init_error = str(e)

    def __call__(self, root: str, unit: runner.Unit) -> dict:
        if self.annotator is None:
            raise InputError(self.init_error)
        return self.annotate_shard(unit.args)

    def annotate_shard(self, shard: str) -> dict:
        t0, c0 = time.perf_counter(), time.process_time()
        # Where each image lies, recorded as the headers are read: the shard stage's pass 1, for free.
        index = functools.partial(tarindex.record, self.raw_dir, tarindex.unit(self.raw_dir, shard))
        with storage.local_copy(storage.join(self.raw_dir, f"{shard}.tar")) as tar:
            samples = iter_samples(self.raw_dir, shard, self.cfg.batch_size, tar, on_members=index)
            parts = [self.annotator(s) for s in samples]
        table = pa.concat_tables(parts) if parts else _empty(self.annotator)
        # In key order (the URL list's), not the tar's: img2dataset writes members as its threads finish,
        # so two downloads of one list order a shard differently, and dedup's tie-breaks and samples, which
        # follow row order, then decided a few rows differently (10 of 8,000 in two demo builds).
        table = table.sort_by(schema.KEY)
        emb_path = storage.join(self.out_dir, EMBEDDINGS_DIR, f"{shard}.parquet")
        if self.cfg.clip_model:
            storage.write_parquet(table.select([schema.UID, *EMBEDDINGS]), emb_path)
        else:
            storage.remove(emb_path)  # from an earlier run with CLIP: no longer aligned
        table = table.select(OUTPUT_SCHEMA.names)
        storage.write_parquet(table, storage.join(self.out_dir, f"{shard}.parquet"))
        errors = Counter(e for e in table.column(schema.DECODE_ERROR).to_pylist() if e)
        return {
            "config": self.cfg.fingerprint(),
            "raw": _raw_state(self.raw_dir, shard),
            "rows": table.num_rows,
            "decode_errors": dict(sorted(errors.items())),
            "seconds": round(time.perf_counter() - t0, 3),
            "cpu_seconds": round(time.process_time() - c0, 3),  # this actor's process, all threads
            "code_version": code_version(),
        }


def _empty(annotator: Annotator) -> pa.Table:
    table = OUTPUT_SCHEMA.empty_table()
    if annotator.clip is not None:
        for name in EMBEDDINGS:
            table = table.append_column(name, pa.array([], pa.list_(pa.float16(), annotator.clip.dim)))
    return table


def _executor(cfg: AnnotateConfig, kind: str) -> runner.Executor:
    """An actor per core (``cfg.threads`` cores each), or one per GPU when CLIP runs on GPUs."""
    if kind != "actors":
        return runner.Executor(kind, init=())
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = bool(cfg.clip_model) and gpus > 0 and cfg.device != "cpu"
    return runner.Executor(
        "actors",
        workers=cfg.actors or (gpus if use_gpu else 0),
        num_cpus=max(1, cfg.threads),
        num_gpus=1.0 if use_gpu else 0.0,
    )


def annotate(
    build_dir: str | os.PathLike,
    cfg: AnnotateConfig = AnnotateConfig(),
    ray_address: str | None = None,
    progress: bool = True,
    executor: str = "actors",
) -> AnnotateSummary:
    """Annotate every raw shard of ``build_dir`` not already done; return counts over all shards.

    ``executor``: ``actors`` (a Ray actor pool, the default), or ``local`` (this process, for tests and
    notebooks). Raises :class:`InputError` for a missing ``raw/`` or models that cannot be loaded
    (checked here, before Ray starts), and after the run for shards that could not be read, naming them; a
    damaged or missing raw shard of a ``tiers download`` raises before any work, naming the command that
    repairs it. A damaged annotation output (size or digest) is annotated again.
    """
    build_dir = storage.normalise(build_dir)
    access.check_access(build_dir)
    with hold(build_dir, command="tiers annotate"):
        check_raw(build_dir)
        return _annotate(build_dir, cfg, ray_address, progress, executor)


def _annotate(build_dir: str, cfg: AnnotateConfig, ray_address, progress: bool, executor: str) -> AnnotateSummary:
    raw_dir, out_dir = storage.join(build_dir, manifest.RAW), storage.join(build_dir, manifest.ANNOTATIONS)
    shards = list_shards(raw_dir)
    if not shards:
        raise InputError("no raw shards (NNNNN.tar + NNNNN.parquet) here", path=raw_dir)
    storage.makedirs(out_dir)
    units.remove_stale_temporaries(out_dir)
    todo, _ = runner.pending(out_dir, [_unit(raw_dir, s, cfg) for s in shards])
    if todo:
        _check_models(cfg)
        from curate.core.runtime import ray_session

        session = ray_session(ray_address) if executor == "actors" else contextlib.nullcontext()
        with session:
            ex = _executor(cfg, executor)
            if ex.kind == "actors":
                ex = dataclasses.replace(ex, init=(build_dir, cfg))
                fn = ShardAnnotator
            else:
                fn = ShardAnnotator(build_dir, cfg, worker=False)
            report = runner.run(out_dir, todo, fn, ex, desc="annotate", progress=progress)
        report.raise_failures("annotate", noun="shard")
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
    out_dir = storage.join(build_dir, manifest.ANNOTATIONS)
    shards = shards if shards is not None else list_shards(storage.join(build_dir, manifest.RAW))
    marked = units.done_units(out_dir)
    rows, errors, done = 0, Counter(), 0
    for s in shards:
        m = units.read_marker(out_dir, s) if s in marked else None
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


def _done_shards(build_dir: str) -> list[str]:
    raw_dir, out_dir = storage.join(build_dir, manifest.RAW), storage.join(build_dir, manifest.ANNOTATIONS)
    shards = list_shards(raw_dir)
    marked = units.done_units(out_dir)
    missing = [s for s in shards if s not in marked]
    if missing:
        raise InputError(f"annotations missing for raw shard(s) {', '.join(missing[:5])}; run `tiers annotate`")
    return shards


def read_annotations(build_dir: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """The whole annotation table (``columns`` of it), shards in order; raises if a raw shard is not
    annotated yet."""
    parts = list(annotation_tables(build_dir, columns))
    return pa.concat_tables(parts) if parts else OUTPUT_SCHEMA.empty_table()


def annotation_tables(build_dir: str | os.PathLike, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The annotation table's shards (``columns`` of each), in row order, one read at a time."""
    build_dir = storage.normalise(build_dir)
    fix = annotation_fix(build_dir)
    for path in annotation_files(build_dir):
        yield storage.read_parquet(path, columns, fix)


def annotation_files(build_dir: str | os.PathLike) -> list[str]:
    """The annotation table's files, in its row order; raises if a raw shard is not annotated yet."""
    build_dir = storage.normalise(build_dir)
    out_dir = storage.join(build_dir, manifest.ANNOTATIONS)
    return [storage.join(out_dir, f"{s}.parquet") for s in _done_shards(build_dir)]


def annotation_fix(build_dir: str) -> str:
    return f"run `tiers annotate {build_dir}`: it annotates damaged shards again"


def annotation_columns(build_dir: str | os.PathLike) -> list[str]:
    """The columns the stored annotation tables have (older builds lack the newer ones, e.g. ``thumb``)."""
    build_dir = storage.normalise(build_dir)
    shards = _done_shards(build_dir)
    if not shards:
        return list(OUTPUT_SCHEMA.names)
    fs, path = storage.filesystem(storage.join(build_dir, manifest.ANNOTATIONS, f"{shards[0]}.parquet"))
    try:
        return list(pq.read_schema(path, filesystem=fs).names)  # the footer only
    except (OSError, pa.ArrowException):  # damaged: read_annotations names the file and the fix
        return list(OUTPUT_SCHEMA.names)


def load_embeddings(build_dir: str | os.PathLike, which: str = schema.IMAGE_EMBEDDING) -> tuple[list[str], np.ndarray]:
    """``(uids, float16 array (n, dim))`` row-aligned with :func:`read_annotations`; zeros where absent.

    Raises :class:`InputError` when the annotations were made without CLIP.
    """
    build_dir = storage.normalise(build_dir)
    emb_dir = storage.join(build_dir, manifest.ANNOTATIONS, EMBEDDINGS_DIR)
    uids, blocks = [], []
    for s in _done_shards(build_dir):
        path = storage.join(emb_dir, f"{s}.parquet")
        if not storage.exists(path):
            raise InputError("no CLIP embeddings: annotate with --clip-model", path=path)
        t = storage.read_parquet(path, columns=[schema.UID, which], fix=f"run `tiers annotate {build_dir}`")
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
