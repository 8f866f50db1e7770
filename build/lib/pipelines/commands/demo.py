"""``tiers demo``: the whole chain on a generated synthetic web, no network (see :mod:`pipelines.demo`)."""

from __future__ import annotations

import argparse

from pipelines.demo import DemoConfig


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def register(sub) -> None:
    d = DemoConfig()
    p = sub.add_parser("demo", help="run the whole chain on a generated synthetic web (no network needed)")
    p.add_argument("--out", default=d.out, help=f"output directory (default: ./{d.out})")
    p.add_argument("--n", type=int, default=d.n, help=f"URLs in the synthetic web (default {d.n})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the synthetic web")
    p.add_argument(
        "--seeds",
        type=_ints,
        default=d.seeds,
        help="training seeds per study cell, comma separated (default 0,1,2: intervals and verdicts)",
    )
    p.add_argument("--model", default=d.model, help="the CLIP of the study and of the filter")
    p.add_argument("--budgets", type=_ints, default=d.budgets, help="samples seen per run, comma separated")
    p.add_argument("--filter-samples", type=int, default=d.filter_samples, help="samples seen by the filter CLIP")
    p.add_argument(
        "--port", type=int, default=d.port, help="port for the synthetic web (fixed, so a rerun resumes the same list)"
    )
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    fields = ("out", "n", "seed", "seeds", "model", "budgets", "filter_samples", "port", "progress")
    return run_demo(DemoConfig(**{f: getattr(args, f) for f in fields}))
