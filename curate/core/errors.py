"""Errors a person can act on.

The CLI turns :class:`InputError` into one line on stderr and exit code 2; anything else that
escapes is a bug in clip-tiers and keeps its traceback.
"""

from __future__ import annotations


class InputError(Exception):
    """The user's input cannot be used: the message names the file, and the row where it applies."""

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
