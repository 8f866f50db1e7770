"""Errors a person can act on, and the exit codes the ``tiers`` command line gives them.

The CLI turns an :class:`InputError` into one line on stderr and its ``exit_code``; anything else
that escapes is a bug in clip-tiers and keeps its traceback (exit 1). The codes:

- 0: done;
- 1: a bug (with a traceback), or work left incomplete that a rerun of the same command finishes
  (e.g. download shards that ran out of retries; the output names them);
- 2: the input cannot be used (a URL list, a config, a damaged file): the line names it, and the row
  or the command that fixes it;
- 3: the run finished but kept nothing (:class:`NothingKept`): the line gives the dominant reasons
  and what to change;
- 4: the directory is in use by another run (``curate.core.dirlock.DirectoryBusy``): the line names it;
- 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_NOTHING_KEPT, EXIT_BUSY, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


class InputError(Exception):
    """The user's input cannot be used: the message names the file, and the row where it applies."""

    exit_code = EXIT_INPUT

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None):
        self.path = path
        self.row = row
        where = ""
        if path is not None:
            where = f"{path}"
            if row is not None:
                where += f": row {row}"
            where += ": "
        super().__init__(where + message)


class NothingKept(InputError):
    """The run finished and wrote its outputs, but kept no sample: the message says why and what to change."""

    exit_code = EXIT_NOTHING_KEPT
