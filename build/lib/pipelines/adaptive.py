"""``tiers study ... --until-decided --max-runs N``: add seeds where a comparison is still undecided.

Rounds: decide every planned comparison (:func:`pipelines.decide.decide`); take the undecided ones
that more seeds can decide, most informative first (the fewest seeds to a verdict); give both cells
of each the seeds its estimate asks for, at most doubling a cell per round (the estimate rests on a
noisy gap) and never past the run budget; train them; decide again. It stops when every comparison
is decided, when no undecided one can be helped by seeds (one whose gap is hidden by the eval set's
own noise needs a larger eval set, not seeds), or when the study holds ``max_runs`` runs.

Looking again after adding seeds and stopping when a comparison looks decided would, left alone,
raise the error rate far above 5%; so every look is recorded (``looks.json``: comparison -> the
seed counts it was judged at) and the p-value is spent over the looks (:func:`pipelines.stats.spend`).
Seeds come from one sequence (the planned seeds, then the next integers), so the cells of a
comparison always share their first seeds and the comparison stays paired.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from curate.core import units
from pipelines.decide import Cell, Comparison, Verdict, cells_of, decide, order_undecided

log = logging.getLogger(__name__)

LOOKS = "looks.json"


def seed_sequence(planned: tuple[int, ...], n: int) -> list[int]:
    """The first ``n`` seeds a cell gets: the planned ones, then the integers after the largest."""
    seq = list(dict.fromkeys(planned))
    nxt = max(seq, default=-1) + 1
    while len(seq) < n:
        seq.append(nxt)
        nxt += 1
    return seq[:n]


def read_looks(out: Path) -> dict[str, list[int]] | None:
    p = Path(out) / LOOKS
    return json.loads(p.read_text()) if p.is_file() else None


def write_looks(out: Path, looks: dict[str, list[int]]) -> None:
    with units.atomic_path(Path(out) / LOOKS) as tmp:
        tmp.write_text(json.dumps(looks, indent=1, sort_keys=True))


def record_look(looks: dict[str, list[int]], verdicts: list[Verdict]) -> None:
    for v in verdicts:
        seen = looks.setdefault(v.comparison.key, [])
        if not seen or seen[-1] != v.gap.seeds:
            seen.append(v.gap.seeds)


def plan_round(
    verdicts: list[Verdict], have: dict[Cell, int], planned: tuple[int, ...], room: int
) -> list[tuple[Cell, int]]:
    """(cell, seed) runs to add this round, most informative comparison first, at most ``room`` of them."""
    count = dict(have)  # seeds per cell, this round's additions included
    out: list[tuple[Cell, int]] = []
    for v in order_undecided(verdicts):
        n = v.gap.seeds
        target = max(n + 1, min(v.seeds_needed, 2 * n))
        seq = seed_sequence(planned, target)
        adds = [(cell, s) for cell in v.comparison.cells() for s in seq[count.get(cell, 0) :]]
        if not adds or len(out) + len(adds) > room:
            continue  # a comparison that does not fit this round's budget leaves room for smaller ones
        out += adds
        for cell in v.comparison.cells():
            count[cell] = max(count.get(cell, 0), target)
    return out


def until_decided(
    rows: list[dict],
    comparisons: list[Comparison],
    run_cells: Callable[[list[tuple[Cell, int]]], list[dict]],
    max_runs: int,
    planned_seeds: tuple[int, ...],
    looks: dict[str, list[int]] | None = None,
    alpha: float = 0.05,
    save: Callable[[dict[str, list[int]]], None] | None = None,
) -> tuple[list[dict], list[Verdict]]:
    """Add runs until every comparison is decided or the study holds ``max_runs`` runs.

    ``run_cells([(cell, seed), ...])`` trains (or simulates) a round's runs, in any order or at once, and
    returns their result rows; ``save``, if
    given, persists the looks after each round (a killed study resumes with its looks intact)."""
    looks = {} if looks is None else looks
    rows = list(rows)
    while True:
        verdicts = decide(rows, comparisons, alpha, looks=looks)
        record_look(looks, verdicts)
        if save is not None:
            save(looks)
        cells = cells_of(rows)
        have = {cell: len(seeds) for cell, seeds in cells.items()}
        todo = plan_round(verdicts, have, planned_seeds, max_runs - len(rows))
        undecided = sum(not v.decided for v in verdicts)
        if not todo:
            why = (
                "all decided"
                if not undecided
                else f"{undecided} undecided, none that the run budget and more seeds can decide"
            )
            log.info(f"until-decided: stop ({why}; {len(rows)} runs)")
            return rows, verdicts
        log.info(
            f"until-decided: {undecided} undecided; adding {len(todo)} runs ({len(rows)} so far, at most {max_runs})"
        )
        rows += run_cells(todo)
