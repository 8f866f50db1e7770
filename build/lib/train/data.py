"""The training stream: a tier's WebDataset shards, resampled without end, in batches from loader workers.

Compute is fixed in samples seen, so the stream never ends: the step count is
``samples_seen // global batch`` whatever the tier's size, and a small tier is simply read more
often (repetition = samples seen / tier size).

Order. All loader *slots* (one per worker per rank) share one endless shard sequence: pass ``p``
is a seeded permutation of the shard list, and slot ``s`` of ``n`` takes positions ``s, s+n, ...``,
so every shard is read once per pass across slots. A slot reads ``mix_shards`` shards at a time as a
*group* and yields the group's samples in a seeded permutation (the shuffle window). A sample's
place is ``(group, offset)``, and its augmentation draws from generators seeded by
``(seed, slot, group, offset)``: the stream is a pure function of the seed, so a checkpoint need
only store each slot's next ``(group, offset)`` to resume exactly, without replaying anything.

Shards are WebDataset tars (``<key>.<jpg|png|webp>`` + ``<key>.txt``, other members ignored), local
paths or URLs (``s3://...``); they are indexed from their headers and samples are read by offset
(:mod:`train.shardio`: ``pread`` locally, whole-object GETs fetched ahead of the slot's plan from
object storage), which is what lets a slot start in the middle of a group. Undecodable samples
(truncated, HTML, bombs) are skipped and counted; an unreadable shard counts as empty.

Workers. A PyTorch DataLoader hands out batches round-robin over its workers, so global batch
``j`` comes from worker ``j % W``. A run resumed at step ``k`` maps physical worker ``i`` to slot
``(i + k) % W``, so the first batch after resume comes from the slot that would have made it.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from curate.core.tarstream import IMAGE_EXTS
from train.augment import CaptionAugmenter, decode_image, drop_tokens
from train.shardio import UNREADABLE, ShardReader

log = logging.getLogger(__name__)

Ref = tuple[int, int, int, int, int]  # shard, image offset, image size, text offset, text size


def sample_seed(seed: int, slot: int, group: int, offset: int) -> int:
    # Tuples of ints hash the same in every process (PYTHONHASHSEED only salts str and bytes).
    return hash((seed, slot, group, offset, 0x7C11)) & 0xFFFF_FFFF_FFFF


class ShardPlan:
    """The endless seeded shard sequence, cut per slot into shuffled groups of sample references."""

    def __init__(
        self,
        shards: list[str] | tuple[str, ...],
        n_slots: int,
        seed: int,
        mix: int,
        cache: int = 64,
        reader: ShardReader | None = None,
    ):
        if not shards:
            raise ValueError("a tier with no shards cannot be trained on")
        self.shards = list(shards)
        self.reader = reader or ShardReader(self.shards)
        self.n_slots, self.seed, self.mix = n_slots, seed, mix
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()
        self._index: OrderedDict[int, list[Ref]] = OrderedDict()
        self._cache = cache
        self.bad_shards: set[str] = set()

    def shard_at(self, slot: int, j: int) -> int:
        """The shard slot ``slot`` reads ``j``-th."""
        p = j * self.n_slots + slot
        n = len(self.shards)
        pass_, k = divmod(p, n)
        perm = self._perms.get(pass_)
        if perm is None:
            perm = np.random.default_rng([self.seed, pass_, 0x5A]).permutation(n)
            self._perms[pass_] = perm
            if len(self._perms) > 4:
                self._perms.popitem(last=False)
        return int(perm[k])

    def refs(self, shard: int) -> list[Ref]:
        """The shard's complete samples (an image and a caption) in file order; [] if unreadable."""
        if shard in self._index:
            self._index.move_to_end(shard)
            return self._index[shard]
        path = self.shards[shard]
        try:
            index = self.reader.index(shard)
        except UNREADABLE as e:
            if path not in self.bad_shards:
                log.warning("skipping unreadable shard %s: %s", path, e)
                self.bad_shards.add(path)
            index = {}
        out = []
        for members in index.values():
            img = next((members[e] for e in IMAGE_EXTS if e in members), None)
            if img is not None and "txt" in members:
                out.append((shard, img[0], img[1], *members["txt"]))
        self._index[shard] = out
        if len(self._index) > self._cache:
            self._index.popitem(last=False)
        return out

    def group(self, slot: int, g: int) -> list[Ref]:
        # The next group's shards start on their way (object storage) while this one is read.
        ahead = range((g + 1) * self.mix, (g + 1 + max(1, 4 // self.mix)) * self.mix)
        self.reader.prefetch([self.shard_at(slot, j) for j in range(g * self.mix, (g + 1) * self.mix)])
        self.reader.prefetch([self.shard_at(slot, j) for j in ahead])
        refs = [r for j in range(g * self.mix, (g + 1) * self.mix) for r in self.refs(self.shard_at(slot, j))]
        order = np.random.default_rng([self.seed, slot, g, 0x6B]).permutation(len(refs))
        return [refs[i] for i in order]


@dataclass(frozen=True)
class StreamSpec:
    """What a loader slot needs besides the shards (picklable, so workers may be spawned too)."""

    batch_size: int
    seed: int
    mix_shards: int
    rank: int
    workers: int  # per rank, 0 meaning one in-process slot
    world_size: int
    draft: int | None  # decode JPEGs at >= this side

    @property
    def n_slots(self) -> int:
        return self.world_size * max(1, self.workers)


class TierStream(IterableDataset):
    """Endless batches ``{"images": uint8 (B,3,H,W), "texts": long (B,L), "slot", "pos", "skipped"}``.

    ``pos`` is the slot's next ``(group, offset)`` after this batch; ``positions`` maps slots to where
    they start, and ``start_step`` is the global step the first batch will be (see module doc).
    """

    def __init__(
        self,
        shards,
        spec: StreamSpec,
        transform,
        tokenizer,
        caption_aug,
        token_dropout: float,
        positions: dict[int, tuple[int, int]] | None = None,
        start_step: int = 0,
    ):
        super().__init__()
        self.shards = list(shards)
        self.spec = spec
        self.transform = transform
        self.tokenizer = tokenizer
        self.caption_aug: CaptionAugmenter | None = caption_aug
        self.token_dropout = token_dropout
        self.positions = dict(positions or {})
        self.start_step = start_step

    def slot_of(self, worker: int) -> int:
        w = max(1, self.spec.workers)
        return self.spec.rank * w + (worker + self.start_step) % w

    def __iter__(self):
        info = get_worker_info()
        slot = self.slot_of(info.id if info is not None else 0)
        reader = ShardReader(self.shards)
        plan = ShardPlan(self.shards, self.spec.n_slots, self.spec.seed, self.spec.mix_shards, reader=reader)
        g, off = self.positions.get(slot, (0, 0))
        try:
            while True:
                if info is None:
                    # In-process: per-sample reseeding must not disturb the training process's RNG.
                    with torch.random.fork_rng(devices=[]):
                        batch, g, off = self._batch(plan, slot, g, off)
                else:
                    batch, g, off = self._batch(plan, slot, g, off)
                yield batch
        finally:
            reader.close()

    def _batch(self, plan: ShardPlan, slot: int, g: int, off: int):
        spec = self.spec
        images, captions, rngs, skipped, empty_groups = [], [], [], 0, 0
        group = plan.group(slot, g)
        while len(images) < spec.batch_size:
            if off >= len(group):
                g, off = g + 1, 0
                group = plan.group(slot, g)
                empty_groups = empty_groups + 1 if not group else 0
                if empty_groups > len(plan.shards) + 1:
                    raise RuntimeError(f"no readable samples in {len(plan.shards)} shards, e.g. {plan.shards[0]}")
                continue
            shard, io_, is_, to, ts = group[off]
            s = sample_seed(spec.seed, slot, g, off)
            off += 1
            rng = random.Random(s)
            try:
                if self.transform.photometric is not None:
                    # Only the CPU generator the photometric ops draw from: torch.manual_seed also queues
                    # lazy CUDA seeding, which formats a stack trace per call.
                    torch.default_generator.manual_seed(s)
                img = self.transform(decode_image(plan.reader.read(shard, io_, is_), spec.draft), rng)
                text = plan.reader.read(shard, to, ts).decode("utf-8", "replace").strip()
            except Exception:  # hostile bytes of any kind: skip the sample, count it
                skipped += 1
                continue
            if self.caption_aug is not None and self.caption_aug.active:
                text = self.caption_aug(text, rng)
            images.append(img)
            captions.append(text)
            rngs.append(rng)
        tokens = drop_tokens(self.tokenizer(captions), self.token_dropout, rngs)
        batch = {"images": torch.stack(images), "texts": tokens, "slot": slot, "pos": (g, off), "skipped": skipped}
        return batch, g, off


def make_loader(stream: TierStream, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``stream`` with its workers; batches come out in round-robin worker order."""
    w = stream.spec.workers
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=w,
        pin_memory=pin_memory,
        prefetch_factor=4 if w else None,
        persistent_workers=False,
        # Its own generator: creating the iterator must not draw from the training process's RNG.
        generator=torch.Generator().manual_seed(0),
    )
