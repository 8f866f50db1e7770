"""A run directory in object storage: train in a local mirror, upload what is finished, resume from the bucket.

``tiers train --out s3://bucket/runs/r1`` trains into a local mirror (``CLIP_TIERS_SCRATCH`` or the
system's temporary dir, one folder per run URL) exactly as into a local run directory, and:

- before training, the mirror gets the run's ``config.json``, ``metrics.jsonl`` and its newest complete
  checkpoint from the bucket (a run resumed on another machine picks up where the last one stopped);
- while training, a thread uploads every new checkpoint as it appears (checkpoints appear whole: they
  are renamed into place), its files first and ``state.pt`` last — a checkpoint directory without
  ``state.pt`` is not a checkpoint (:func:`curate.core.rundir.all_steps`) — and drops the bucket's older
  ones beyond ``keep_checkpoints``;
- at the end, ``model/``, ``eval.json`` and ``metrics.jsonl`` go up, and ``summary.json`` last, so a run
  is finished in the bucket exactly when it is finished locally; then the mirror is removed (a run that
  fails or is killed keeps it, for a resume here, until a scratch sweep finds it unheld and a week
  unchanged: :mod:`curate.core.scratch`).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from curate.core import access, rundir, scratch, storage

FILES = (rundir.CONFIG, rundir.METRICS, rundir.SUMMARY, rundir.EVAL)


def mirror_dir(url: str) -> Path:
    return Path(storage.scratch_dir()) / scratch.RUNS / hashlib.blake2b(url.encode(), digest_size=8).hexdigest()


def _upload_dir(local: Path, url: str, last: str | None = None) -> None:
    """Every file under ``local`` to ``url``, the one named ``last`` after all the others."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == last)
    for p in files:
        storage.write_bytes(storage.join(url, *p.relative_to(local).parts), p.read_bytes())


def _remote_steps(url: str) -> list[str]:
    root = storage.join(url, rundir.CHECKPOINTS)
    names = [n for n in storage.listdir(root) if n.startswith("step_")]
    return sorted(n for n in names if storage.exists(storage.join(root, n, rundir.STATE)))


def pull(url: str, local: Path) -> None:
    """The run's files and newest complete checkpoint from ``url`` into ``local`` (what a resume needs)."""
    local.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        src = storage.join(url, name)
        if storage.exists(src) and not (local / name).exists():
            (local / name).write_bytes(storage.read_bytes(src))
    steps = _remote_steps(url)
    if steps and not rundir.all_steps(local / rundir.CHECKPOINTS):
        src = storage.join(url, rundir.CHECKPOINTS, steps[-1])
        dest = local / rundir.CHECKPOINTS / steps[-1]
        for name in storage.listdir(src):
            dest.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(storage.read_bytes(storage.join(src, name)))


def _push_checkpoints(local: Path, url: str, keep: int, sent: set[str]) -> None:
    for _, d in rundir.all_steps(local / rundir.CHECKPOINTS):
        if d.name in sent:
            continue
        with contextlib.suppress(FileNotFoundError):  # rotated away while uploading: a newer one follows
            _upload_dir(d, storage.join(url, rundir.CHECKPOINTS, d.name), last=rundir.STATE)
            sent.add(d.name)
            metrics = local / rundir.METRICS
            if metrics.exists():
                storage.write_bytes(storage.join(url, rundir.METRICS), metrics.read_bytes())
    for old in _remote_steps(url)[: -max(1, keep)]:
        storage.remove(storage.join(url, rundir.CHECKPOINTS, old, rundir.STATE))  # not a checkpoint any more
        storage.remove_tree(storage.join(url, rundir.CHECKPOINTS, old))


@contextlib.contextmanager
def mirrored(url: str, keep: int = 2, every: float = 2.0, upload: bool = True) -> Iterator[Path]:
    """A local run directory mirrored to ``url`` for the block (see the module doc); yields its path.
    ``upload=False`` (DDP ranks but the first) only pulls."""
    access.check_access(url, write=upload)
    scratch.sweep(storage.scratch_dir())  # a killed run's mirror a week old, among others
    with scratch.owned(mirror_dir(url)) as local:  # never swept while a rank of the run holds it
        yield from _mirrored(url, local, keep, every, upload)


def _mirrored(url: str, local: Path, keep: int, every: float, upload: bool) -> Iterator[Path]:
    pull(url, local)
    if not upload:
        yield local
        return
    sent = set(_remote_steps(url))
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            with contextlib.suppress(OSError):
                _push_checkpoints(local, url, keep, sent)

    t = threading.Thread(target=loop, name="clip-tiers-run-upload", daemon=True)
    t.start()
    try:
        yield local
    finally:
        stop.set()
        t.join()
    _push_checkpoints(local, url, keep, sent)
    if (local / rundir.MODEL).is_dir():
        _upload_dir(local / rundir.MODEL, storage.join(url, rundir.MODEL))
    for name in (rundir.METRICS, rundir.EVAL, rundir.CONFIG, rundir.SUMMARY):  # the summary last
        if (local / name).exists():
            storage.write_bytes(storage.join(url, name), (local / name).read_bytes())
    if (local / rundir.SUMMARY).exists():
        # Finished, and all of it in the bucket: the mirror was a working copy. It stayed on the node's
        # scratch disk after every run (its checkpoints and model: a study of 60 runs, 60 of them); a run
        # that is killed or fails keeps it, for a resume on this machine.
        shutil.rmtree(local, ignore_errors=True)
