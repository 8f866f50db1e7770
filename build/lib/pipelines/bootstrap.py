"""The bootstrapped filter: a filter CLIP trained on the pool itself, each sample scored by a model
that never saw it.

``run_bootstrap(DIR, BootstrapConfig(...))`` works on a finished ``tiers build`` (``samples.parquet`` and
the raw tars). Its kept samples are split into ``folds`` folds by a seeded hash of their uid. Each
round, for every fold f, a small CLIP is trained with ``tiers train`` (``train.api.train``) on the
round's training pool minus fold f, and scores fold f: so a sample's score never comes from a model
trained on it, and ``scores.parquet`` records which fold and model scored each row. Five folds (each
model learns from 80% of the pool) and a conv tower (``ct-rn-micro-32``) trained for a few passes
over its pool are the defaults ``bench/bootstrap_filter.py`` measured best. The training
pool of round 1 is all of ``kept``; of round r > 1, the top ``top`` share of round r - 1's ranking
(the consistent pairs a model learns first, so the next model learns from cleaner data). With
``trusted`` (a tier of trusted data, ``DIR:TIER``), round 1 is today's Data Filtering Network path
instead: one model trained on that tier scores every kept sample, since none of them trained it.

Raw cosines of different fold models are not on one scale, so the score is the sample's rank within
its fold (0 worst, 1 best; the folds are random halves of one pool, so equal ranks mean equal
standing). Everything lands in ``DIR/bootstrap/``: per round and fold a training tier
(``rR/fF/tiers``, shards copied from the raw tars), a run (``rR/fF/run``) and ``rR/scores.parquet``;
``DIR/bootstrap/scores.parquet`` is the last round's. Finished runs are skipped on a rerun (the trainer
resumes), as are finished rounds. ``tiers bootstrap DIR`` then re-cuts the bands with
``[quality] score = "bootstrap"`` (``pipelines/commands/bootstrap.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.core import schema, storage, units
from curate.core.errors import InputError
from curate.core.integrity import DamagedFile, read_parquet, write_parquet
from curate.core.manifest import SAMPLES, read_tier
from curate.select.bands import BandConfig
from curate.select.quality import BOOTSTRAP_SCORE
from curate.shard import ShardConfig, write_tiers

log = logging.getLogger(__name__)

BOOTSTRAP = "bootstrap"
SCORES = "scores.parquet"
TRAIN_TIER = "kept"  # the one tier of a training directory


@dataclass(frozen=True)
class BootstrapConfig:
    rounds: int = 1
    folds: int = 5
    top: float = 0.5  # rounds after the first train on this top share of the previous ranking
    # A small conv tower learns from a few thousand noisy pairs where a ViT of the same cost does not
    # (README, "Which quality score"); more folds give each filter CLIP more of the pool to learn from.
    model: str = "ct-rn-micro-32"
    # Each filter CLIP's budget: ``epochs`` passes over its own training pool, unless ``samples_seen``
    # fixes it. Noisy pairs are learnt last: past ~8 passes the filters memorise them and rank worse.
    samples_seen: int = 0
    epochs: float = 6.0
    train: dict = field(default_factory=dict)  # TrainConfig overrides (preset, batch_size, lr, ...)
    trusted: str | None = None  # a tiers dir of trusted data: round 1 trains on its tier trusted_tier instead
    trusted_tier: str = "kept"
    seed: int = 0
    device: str = "auto"
    shard_size: int = 1000
    # Samples sharing a value of this samples.parquet column share a fold: with dedup off, "sha256"
    # keeps one image's captions out of each other's training; an input column can name a group too.
    fold_by: str = schema.UID

    def validate(self) -> None:
        if self.rounds < 1 or self.folds < 2:
            raise InputError(f"bootstrap needs rounds >= 1 and folds >= 2 (got {self.rounds}, {self.folds})")
        if not 0 < self.top <= 1:
            raise InputError(f"bootstrap top share must be in (0, 1], not {self.top}")
        if self.samples_seen < 0 or (not self.samples_seen and not self.epochs > 0):
            raise InputError("bootstrap needs samples_seen > 0 or epochs > 0")

    def budget(self, rows: int) -> int:
        """Samples seen by a filter CLIP that trains on ``rows`` samples."""
        return self.samples_seen or max(1, round(self.epochs * rows))


def fold_of(uids: list[str], folds: int, seed: int = 0) -> np.ndarray:
    """A fold per uid from a seeded hash: the same uid always lands in the same fold."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{seed}:{u}".encode(), digest_size=8).digest(), "little") % folds
            for u in uids
        ],
        np.int64,
    )


def within_fold_rank(raw: np.ndarray, fold: np.ndarray, uids: np.ndarray) -> np.ndarray:
    """Each row's rank within its fold as a fraction in [0, 1] (1 = the fold's best; ties by uid);
    NaN scores rank last."""
    out = np.zeros(len(raw), np.float64)
    q = np.nan_to_num(raw.astype(np.float64), nan=-np.inf)
    for f in np.unique(fold):
        rows = np.flatnonzero(fold == f)
        order = rows[np.lexsort((uids[rows], q[rows]))]  # worst first
        out[order] = np.arange(len(rows)) / max(len(rows) - 1, 1)
    return out


def _training_tier(build_dir: Path, kept: pa.Table, rows: np.ndarray, dest: Path, shard_size: int) -> Path:
    """A tiers directory holding only ``kept[rows]`` as tier ``kept``: raw tars linked, not copied."""
    dest.mkdir(parents=True, exist_ok=True)
    raw = dest / "raw"
    if not raw.exists():
        raw.symlink_to((build_dir / "raw").resolve(), target_is_directory=True)
    band = np.full(kept.num_rows, None, dtype=object)
    band[rows] = "q000-100"
    table = kept.select([schema.UID, schema.URL, schema.CAPTION, schema.SHARD, schema.KEY])
    table = table.append_column(schema.QUALITY, pa.nulls(kept.num_rows, pa.float32()))
    table = table.append_column(schema.BAND, pa.array(band.tolist(), pa.string()))
    write_tiers(dest, table, BandConfig(edges=(1.0,), filtered_band=False), ShardConfig(shard_size), progress=False)
    return dest


def _train(cfg: BootstrapConfig, tiers_dir: Path, out: Path, seed: int) -> str:
    """Train a filter CLIP on ``tiers_dir``'s tier (``trusted_tier`` for trusted data, else the training
    tier written for the fold); returns its ``--clip-model`` spec."""
    from train.api import train
    from train.config import make_config

    tier = cfg.trusted_tier if cfg.trusted and Path(tiers_dir) == Path(cfg.trusted) else TRAIN_TIER
    rows = read_tier(tiers_dir, tier).samples
    tcfg = make_config({**cfg.train, "model": cfg.model, "samples_seen": cfg.budget(rows), "seed": seed})
    train(tcfg, tiers_dir, tier, out, progress=False)
    return f"local-dir:{(out / 'model').resolve()}"


def _score(build_dir: Path, kept: pa.Table, model_of: np.ndarray, specs: list[str], device: str) -> np.ndarray:
    from curate.annotate.rescore import clip_scores

    return clip_scores(build_dir, kept, model_of, specs, device)


Trainer = Callable[[BootstrapConfig, Path, Path, int], str]
Scorer = Callable[[Path, pa.Table, np.ndarray, list[str], str], np.ndarray]


def read_kept(build_dir: Path, fold_by: str = schema.UID) -> pa.Table:
    path = build_dir / SAMPLES
    if not path.exists():
        raise InputError("not a finished build (no samples.parquet); run `tiers build` first", path=str(build_dir))
    cols = [schema.UID, schema.URL, schema.CAPTION, schema.SHARD, schema.KEY, schema.STATUS]
    if fold_by not in pq.read_schema(path).names:
        raise InputError(f"bootstrap fold_by: samples.parquet has no column {fold_by!r}", path=str(path))
    samples = read_parquet(path, columns=list(dict.fromkeys(cols + [fold_by])), fix="run `tiers build` again")
    kept = samples.filter(pa.compute.equal(samples.column(schema.STATUS), schema.STATUS_KEPT))
    if kept.num_rows < 2:
        raise InputError(f"bootstrap needs kept samples to train on; this build keeps {kept.num_rows}", path=str(path))
    return kept


def run_bootstrap(
    build_dir: str | os.PathLike,
    cfg: BootstrapConfig = BootstrapConfig(),
    trainer: Trainer = _train,
    scorer: Scorer = _score,
) -> pa.Table:
    """Run every round (finished ones are read back) and return the last round's scores: uid,
    ``bootstrap_score``, ``bootstrap_raw`` (cosine), ``bootstrap_fold``, ``bootstrap_round``, ``bootstrap_model``."""
    cfg.validate()
    build_dir = _local(build_dir)
    kept = read_kept(build_dir, cfg.fold_by)
    uids = np.asarray(kept.column(schema.UID).to_pylist(), dtype=object)
    fold = fold_of([str(v) for v in kept.column(cfg.fold_by).to_pylist()], cfg.folds, cfg.seed)
    pool = np.ones(len(uids), bool)  # round 1 trains on all of kept
    root = build_dir / BOOTSTRAP
    scores = None
    for r in range(1, cfg.rounds + 1):
        scores = _round(build_dir, root / f"r{r}", kept, uids, fold, pool, r, cfg, trainer, scorer)
        rank = scores.column(BOOTSTRAP_SCORE).to_numpy()
        pool = rank >= 1 - cfg.top
    with units.atomic_path(root / SCORES) as tmp:
        write_parquet(scores, tmp)
    return scores


def _round(build_dir, out, kept, uids, fold, pool, r, cfg, trainer, scorer) -> pa.Table:
    key = {"config": asdict(cfg), "round": r, "pool": hashlib.sha256(np.packbits(pool).tobytes()).hexdigest()[:16]}
    done = out / "round.json"
    if done.exists() and (out / SCORES).exists() and _same_round(json.loads(done.read_text()), key):
        try:
            return read_parquet(out / SCORES)
        except DamagedFile as e:
            log.warning(f"{out / SCORES}: {e.problem}; scoring round {r} again")
    trusted = r == 1 and cfg.trusted is not None
    specs, model_of = [], np.full(len(uids), -1, np.int64)
    if trusted:
        log.info(f"bootstrap round {r}: a filter CLIP on trusted data ({cfg.trusted}) scores all {len(uids):,} kept")
        specs.append(trainer(cfg, Path(cfg.trusted), out / "trusted" / "run", cfg.seed))
        model_of[:] = 0
    else:
        for f in range(cfg.folds):
            train_rows = np.flatnonzero(pool & (fold != f))
            log.info(f"bootstrap round {r}, fold {f}: train on {len(train_rows):,}, score {(fold == f).sum():,}")
            tiers_dir = _training_tier(build_dir, kept, train_rows, out / f"f{f}", cfg.shard_size)
            specs.append(trainer(cfg, tiers_dir, out / f"f{f}" / "run", cfg.seed + f))
            model_of[fold == f] = f
    raw = scorer(build_dir, kept, model_of, specs, cfg.device)
    scored_by = np.zeros(len(uids), np.int64) if trusted else fold
    table = pa.table(
        {
            schema.UID: kept.column(schema.UID),
            BOOTSTRAP_SCORE: pa.array(within_fold_rank(raw, scored_by, uids), pa.float32()),
            "bootstrap_raw": pa.array(raw, pa.float32()),
            "bootstrap_fold": pa.array(np.where(trusted, -1, fold), pa.int32()),
            "bootstrap_round": pa.array(np.full(len(uids), r), pa.int32()),
            "bootstrap_model": pa.array([specs[m] for m in model_of], pa.string()),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    with units.atomic_path(out / SCORES) as tmp:
        write_parquet(table, tmp)
    with units.atomic_path(done) as tmp:
        tmp.write_text(json.dumps(key, indent=2, sort_keys=True))
    return table


def _same_round(stored: dict, key: dict) -> bool:
    """Did ``stored`` (a finished round's key) come from this round? The number of rounds asked for
    does not change a round, so asking for more rounds later reuses the finished ones."""

    def strip(k: dict) -> dict:
        return {**k, "config": {n: v for n, v in k.get("config", {}).items() if n != "rounds"}}

    return strip(stored) == strip(key)


def _local(build_dir: str | os.PathLike) -> Path:
    if not storage.is_local(build_dir):
        raise InputError(
            "the bootstrapped filter needs a build directory on local disk, not in object storage", path=str(build_dir)
        )
    return storage.local_path(build_dir)


def read_scores(build_dir: str | os.PathLike) -> pa.Table:
    path = _local(build_dir) / BOOTSTRAP / SCORES
    if not path.exists():
        raise InputError("no bootstrap scores yet; run `tiers bootstrap DIR`", path=str(path))
    return read_parquet(path, fix="run `tiers bootstrap DIR` again")
