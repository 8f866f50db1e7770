"""The training loop: a fixed number of steps over an endless tier stream, resumable at any checkpoint.

``run(cfg, tier, out)`` trains ``cfg.samples_seen // global batch`` steps with open_clip's model and
losses (CLIP with optional label smoothing, or SigLIP), AdamW without decay on gains, biases and the
temperature, a linear warm-up then cosine learning rate (a function of the step alone), gradient
clipping, and bf16 autocast on CUDA. Under ``torchrun`` every rank holds a DDP replica and the CLIP
loss gathers features from all ranks (open_clip's ``local_loss`` + ``gather_with_grad``).

Resume is exact: a checkpoint stores weights, optimiser, every rank's RNG and every loader slot's
position; the stream is a pure function of the seed (see :mod:`train.data`), and nothing in this
process draws from the global RNG except the model (patch dropout), so a run killed at step k and
restarted ends with the same weights as one never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from curate import code_version
from curate.core import rundir
from curate.core.errors import InputError
from curate.core.manifest import Tier
from train import augment, checkpoint, loss, models, tracking
from train.config import TrainConfig
from train.data import StreamSpec, TierStream, make_loader
from train.results import TrainSummary

log = logging.getLogger(__name__)

METRICS = rundir.METRICS


def param_groups(model, weight_decay: float) -> list[dict]:
    """open_clip's split: no decay on 1-d parameters (gains, biases), the temperature and the bias."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (no_decay if skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_at(step: int, steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to ``min_lr_frac * lr``."""
    warm = round(cfg.warmup_frac * steps)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    lo = cfg.lr * cfg.min_lr_frac
    return lo + (cfg.lr - lo) * 0.5 * (1 + math.cos(math.pi * t))


class Dist:
    """Rank, world size and device; joins torchrun's process group when WORLD_SIZE > 1."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
        if cuda and not torch.cuda.is_available():
            raise InputError("device cuda asked for, but CUDA is not available")
        self.device = torch.device(f"cuda:{self.local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        self.started = False
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if cuda else "gloo")
            self.started = True

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.started:
            torch.distributed.destroy_process_group()


def _autocast(cfg: TrainConfig, device: torch.device):
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _trim_metrics(path: Path, last_step: int) -> None:
    """Keep the log lines of steps a resumed run will not redo."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


def run(
    cfg: TrainConfig, tier: Tier, out: str | os.PathLike, progress: bool = True, stop_at: int | None = None
) -> TrainSummary | None:
    """Train on ``tier`` into run directory ``out`` (resuming from its newest checkpoint); returns the summary.

    ``stop_at``: leave after that step's checkpoint as if killed (a time slice), returning None.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dist = Dist(cfg.device)
    try:
        return _run(cfg, tier, out, dist, progress, stop_at)
    finally:
        dist.close()


class _Run:
    """One training session of a run: the model, optimiser, loss and stream, set up (or resumed) once.

    The order of the seeded steps in ``__init__`` is part of exact resume: initial weights come from
    ``seed`` on every rank, the training draws (patch dropout) from a per-rank seed set after them.
    """

    def __init__(self, cfg: TrainConfig, tier: Tier, out: Path, dist: Dist):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.tier, self.out, self.dist = cfg, tier, out, dist
        self.device = dist.device
        self.global_batch = cfg.batch_size * dist.world
        self.steps = cfg.samples_seen // self.global_batch
        if self.steps < 1:
            raise InputError(f"samples_seen {cfg.samples_seen} is less than one global batch ({self.global_batch})")
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model, self.model_cfg, self.tokenizer, self.source = models.build(cfg, self.device)
        self.size, mean, std = models.image_stats(self.model)
        self.mean = torch.tensor(mean, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(3, 1, 1)
        # Fused: one kernel for all parameters, 3-4x faster than the per-tensor default on CPU.
        groups = param_groups(self.model, cfg.weight_decay)
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)
        self.loss_fn = loss.make_loss(cfg, dist.rank, dist.world)
        draft = augment.draft_side(self.size, cfg.image_aug)
        self.spec = StreamSpec(cfg.batch_size, cfg.seed, cfg.mix_shards, dist.rank, cfg.workers, dist.world, draft)
        self.ckpt_root = out / rundir.CHECKPOINTS
        if dist.rank == 0:
            checkpoint.remove_stale(self.ckpt_root)
        self.start, self.positions, self.counters = 0, {}, {"skipped": 0, "train_seconds": 0.0}
        torch.manual_seed(cfg.seed * 1_000_003 + 17 + dist.rank)  # the training draws (patch dropout), per rank
        self._resume()
        self.tracker = tracking.Tracker(cfg, out, self.start, dist.rank)  # after resume: it purges later steps
        self.ddp = self.model
        if dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _resume(self) -> None:
        last = rundir.latest(self.ckpt_root)
        if last is None:
            return
        weights, state = checkpoint.load(last, self.device)
        if state["config_hash"] != self.cfg.hash() or state["n_slots"] != self.spec.n_slots:
            raise InputError(
                "this run directory holds a checkpoint of another config or world size x workers; "
                "resume with the same settings or use another --out",
                path=str(last),
            )
        self.model.load_state_dict(weights)
        self.opt.load_state_dict(state["optimizer"])
        checkpoint.set_rng_state(state["rng"][self.dist.rank])
        self.start, self.positions, self.counters = state["step"], dict(state["positions"]), dict(state["counters"])
        log.info(f"resuming {self.out} at step {self.start} of {self.steps}")

    def loader(self):
        cfg = self.cfg
        stream = TierStream(
            self.tier.shards,
            self.spec,
            augment.ImageAugmenter(self.size, cfg.image_aug),
            self.tokenizer,
            augment.CaptionAugmenter(cfg.text_aug),
            cfg.token_dropout,
            positions={s: tuple(p) for s, p in self.positions.items()},
            start_step=self.start,
        )
        return make_loader(stream, pin_memory=self.device.type == "cuda")

    def step(self, batch: dict, step: int) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """One optimiser step on ``batch``; returns (detached loss, lr, grad norm or None)."""
        cfg = self.cfg
        images = augment.normalise(batch["images"].to(self.device, non_blocking=True), self.mean, self.std)
        texts = batch["texts"].to(self.device, non_blocking=True)
        lr = lr_at(step, self.steps, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        with _autocast(cfg, self.device):
            value = loss.compute(self.loss_fn, cfg, self.ddp(images, texts))
        self.opt.zero_grad(set_to_none=True)
        value.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip) if cfg.grad_clip else None
        self.opt.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        self.positions[batch["slot"]] = batch["pos"]
        self.counters["skipped"] += batch["skipped"]
        return value.detach(), lr, grad_norm

    def record(self, done: int, window: dict, lr: float, grad_norm) -> dict:
        """The metrics line of the steps in ``window`` (written by rank 0)."""
        dt = time.perf_counter() - window["t0"]
        rec = {
            "step": done,
            "samples": done * self.global_batch,
            "loss": float(window["loss"]) / window["n"],
            "lr": lr,
            "logit_scale": float(self.model.logit_scale.detach().exp()),
            "grad_norm": float(grad_norm),
            "samples_per_s": window["n"] * self.global_batch / dt,
            "data_wait": window["data"] / dt,
            "repetition": done * self.global_batch / max(1, self.tier.samples),
            "skipped": self.counters["skipped"],
        }
        if self.dist.rank == 0:
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(rec) + "\n")
            self.tracker.log(rec)
        return rec

    def save(self, done: int) -> None:
        _save(self.cfg, self.dist, self.ckpt_root, done, self.model, self.model_cfg, self.opt, self.positions,
              self.counters, self.spec)  # fmt: skip

    def summary(self, loss_val: float) -> TrainSummary:
        n = self.steps * self.global_batch
        return TrainSummary(
            steps=self.steps,
            samples_seen=n,
            global_batch=self.global_batch,
            world_size=self.dist.world,
            tier=self.tier.name,
            tier_samples=self.tier.samples,
            repetition=n / max(1, self.tier.samples),
            train_seconds=self.counters["train_seconds"],
            samples_per_s=n / max(self.counters["train_seconds"], 1e-9),
            final_loss=loss_val,
            skipped=self.counters["skipped"],
            resumed_from=self.start or None,
            config_hash=self.cfg.hash(),
            code_version=code_version(),
        )


def _new_window() -> dict:
    return {"t0": time.perf_counter(), "data": 0.0, "n": 0, "loss": 0.0}


def _run(cfg: TrainConfig, tier: Tier, out: Path, dist: Dist, progress: bool, stop_at) -> TrainSummary | None:
    r = _Run(cfg, tier, out, dist)
    try:
        return _train(r, cfg, out, dist, progress, stop_at)
    finally:
        r.tracker.close()


def _train(r: _Run, cfg: TrainConfig, out: Path, dist: Dist, progress: bool, stop_at) -> TrainSummary | None:
    loader = r.loader()
    if dist.rank == 0:
        _trim_metrics(out / METRICS, r.start)
    bar = tqdm(total=r.steps, initial=r.start, unit="step", disable=not progress or dist.rank != 0, dynamic_ncols=True)
    window = _new_window()
    r.model.train()
    it = iter(loader)
    session_t0 = time.perf_counter()
    loss_val, grad_norm = float("nan"), torch.tensor(0.0)
    try:
        for step in range(r.start, r.steps):
            t0 = time.perf_counter()
            batch = next(it)
            window["data"] += time.perf_counter() - t0
            value, lr, norm = r.step(batch, step)
            grad_norm = grad_norm if norm is None else norm
            window["n"] += 1
            window["loss"] += value
            done = step + 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == r.steps:
                rec = r.record(done, window, lr, grad_norm)
                loss_val = rec["loss"]
                bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{lr:.2e}", sps=f"{rec['samples_per_s']:.0f}")
                window = _new_window()
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == r.steps:
                r.counters["train_seconds"] += time.perf_counter() - session_t0
                session_t0 = time.perf_counter()
                r.save(done)
                window["t0"] = time.perf_counter()
                if stop_at is not None and done >= stop_at and done < r.steps:
                    return None
    finally:
        bar.close()
        del it
    if dist.rank == 0:
        extra = {"step": r.steps, "config_hash": cfg.hash(), **({"started_from": r.source} if r.source else {})}
        models.save_dir(r.model, r.model_cfg, out / rundir.MODEL, extra=extra)
    return r.summary(loss_val)


def _save(cfg, dist: Dist, root: Path, step: int, model, model_cfg, opt, positions, counters, spec) -> None:
    rngs = dist.gather(checkpoint.rng_state())
    slots = dist.gather(dict(positions))
    if dist.rank == 0:
        merged = {}
        for s in slots:
            merged.update({int(k): tuple(int(x) for x in v) for k, v in s.items()})
        state = {
            "step": step,
            "optimizer": opt.state_dict(),
            "rng": rngs,
            "positions": merged,
            "n_slots": spec.n_slots,
            "counters": dict(counters),
            "config_hash": cfg.hash(),
        }
        checkpoint.save(root, step, model, model_cfg, state, keep=cfg.keep_checkpoints)
    if dist.world > 1:
        torch.distributed.barrier()
