"""Pre-flight: everything a study can get wrong is checked before the first run trains.

A typo in an eval path used to show up after the first run had trained; a study without an eval
set trained every run and then said "too few runs to fit". :func:`check_study` looks at the tiers
(they exist and hold samples, their shards are on disk), the budgets (each at least one batch, so
no run trains zero steps), the eval sets (they open, with the columns their task needs, and the
zero-shot class names resolve) and the output directory (writable, and not made yet if it does
not exist), and raises one :class:`InputError` naming every problem, on one line, having written
nothing. The CLI turns it into exit code 2.
"""

from __future__ import annotations

import os
from pathlib import Path

from curate.core import storage
from curate.core.errors import InputError
from curate.core.manifest import load_manifest, manifest_path


def _nonempty(url: str) -> bool:
    return storage.isfile(url) and storage.size(url) > 0


def _tiers(tiers_dir: str, tiers: tuple[str, ...]) -> list[str]:
    try:
        manifest = load_manifest(tiers_dir)
        root = storage.parent(manifest_path(tiers_dir))  # a local dir or a bucket prefix
    except InputError as e:
        return [str(e)]
    known = manifest.tiers
    out = []
    for t in tiers:
        if t not in known:
            out.append(f"{tiers_dir}: no tier {t!r}; the manifest has {', '.join(known) or 'none'}")
        elif known[t].samples <= 0 or not known[t].shards:
            out.append(f"{tiers_dir}: tier {t!r} is empty (0 samples): nothing to train on")
        else:
            gone = [s for s in known[t].shards if not _nonempty(storage.join(root, s))]
            if gone:
                total = len(known[t].shards)
                out.append(
                    f"{storage.join(root, gone[0])}: shard of tier {t!r} missing or empty ({len(gone)} of {total})"
                )
    return out


def _budgets(budgets: tuple[int, ...], variants) -> list[str]:
    out = []
    for v in variants:
        small = [b for b in budgets if b < v.train.batch_size]
        if small:
            out.append(
                f"budget {small[0]:,} samples seen is less than one batch ({v.train.batch_size} samples, "
                f"variant {v.name}): the run would train 0 steps"
            )
    return out


def _eval(ev) -> list[str]:
    from train.evaluation import check_eval_set  # torch comes with it; only a study that will train gets here

    if not ev.any():
        return ["no [eval] zeroshot or retrieval set: every run would train and none could be compared"]
    out = []
    for task, path in (("zeroshot", ev.zeroshot), ("retrieval", ev.retrieval)):
        if path:
            try:
                check_eval_set(path, task, ev.classes if task == "zeroshot" else None)
            except InputError as e:
                out.append(f"[eval] {task}: {e}")
    if ev.classes and not ev.zeroshot:
        out.append(f"[eval] classes = {ev.classes} without a zeroshot set to name")
    return out


def _out_dir(out: Path) -> list[str]:
    if out.exists():
        if not out.is_dir():
            return [f"{out}: the study's output is not a directory"]
        if not os.access(out, os.W_OK | os.X_OK):
            return [f"{out}: output directory not writable"]
        return []
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return [f"{out}: cannot create the output directory ({parent} is not writable)"]
    return []


def check_study(cfg, out: str | os.PathLike, planned: int | None = None, max_runs: int | None = None) -> None:
    """Raise :class:`InputError` naming every problem of study ``cfg`` writing to ``out``; touch nothing."""
    problems = _tiers(cfg.tiers_dir, cfg.tiers) + _budgets(cfg.budgets, cfg.variants) + _eval(cfg.eval)
    problems += _out_dir(Path(out))
    if max_runs is not None and planned is not None and max_runs < planned:
        problems.append(f"--max-runs {max_runs} is fewer than the {planned} runs the study plans")
    if problems:
        where = f"{cfg.source}: " if cfg.source else ""
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise InputError(f"{where}{count}{'; '.join(problems)}; nothing was trained")
