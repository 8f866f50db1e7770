"""The ``tiers`` command line: a thin layer over importable functions.

Every command module in :mod:`pipelines.commands` registers its subcommands with ``register(sub)``
and sets ``func``; nothing runs at import. Every command takes ``--quiet``, ``--verbose`` and
``--no-progress``. :class:`~curate.core.errors.InputError` (bad input the user can fix) becomes one
line on stderr and its exit code: 2 for input to fix, 3 when a run kept nothing, 4 when the directory is
in use by another run (the list: :mod:`curate.core.errors`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from curate.core import runtime
from curate.core.errors import InputError
from curate.core.runtime import arrow_allocator, quiet_environment
from pipelines import console
from pipelines.commands import COMMANDS


def _output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    loud = g.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    loud.add_argument("-v", "--verbose", action="store_true", help="print debug lines, and Ray's own output")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _leaves(parser: argparse.ArgumentParser):
    """Every parser that runs a command (the leaves of the subcommand tree)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
        return
    for child in subs[0].choices.values():
        yield from _leaves(child)


def build_parser() -> argparse.ArgumentParser:
    from curate import code_version

    parser = argparse.ArgumentParser(
        prog="tiers", description="Turn web URL lists into quality-tiered CLIP training data, and measure it."
    )
    parser.add_argument("--version", action="version", version=f"clip-tiers {code_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    for leaf in _leaves(parser):
        if leaf is not parser:
            _output_options(leaf)
    return parser


def main(argv: list[str] | None = None) -> int:
    # First: pyarrow must not have loaded when Arrow's allocator is chosen, and parsing some options loads
    # it (--allow-private-hosts checks its entries with curate.download); chosen after, the driver's
    # jemalloc options did not act and a 200,000-URL build's driver peaked at 630-663 MB, not 490.
    arrow_allocator(driver=True)
    runtime.MAIN_GUARDED = True  # the tiers script and `python -m pipelines.cli` call main() under a guard
    args = build_parser().parse_args(argv)
    console.setup(console.QUIET if args.quiet else console.VERBOSE if args.verbose else console.NORMAL)
    quiet_environment()  # after setup: how loud Ray may be depends on --verbose
    if args.quiet:
        args.progress = False
    log = logging.getLogger("tiers")
    try:
        return int(args.func(args) or 0)
    except InputError as e:  # and its kinds: NothingKept (3), DirectoryBusy (4); see curate.core.errors
        log.error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
