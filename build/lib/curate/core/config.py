"""One way to read settings: TOML files (or dicts read back from JSON) into frozen dataclasses.

:func:`from_dict` checks every key against the dataclass's fields and converts each value by the
field's declared type — nested dataclasses (a TOML table), ``tuple[...]`` (a TOML array, or a single
string for a tuple of strings), ``float`` (an int, or ``"inf"`` as :func:`to_dict` writes infinity) —
so a stage declares its settings once, as a dataclass, and never parses TOML itself. Unknown keys and
bad values raise :class:`~curate.core.errors.InputError` naming the ``[section]`` and the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from curate.core.errors import InputError

T = TypeVar("T")


def read_toml(path: str | os.PathLike) -> dict:
    """The TOML file at ``path`` as a dict; an unreadable or invalid file raises InputError naming it."""
    try:
        from curate.core import storage

        return tomllib.loads(storage.read_text(path))
    except InputError:
        raise
    except OSError as e:
        raise InputError(f"cannot read config: {e.strerror or e}", path=os.fspath(path)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid TOML: {e}", path=os.fspath(path)) from None


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _convert(tp, value, where: str, source: str | None):
    """``value`` as field type ``tp`` wants it (nested dataclasses built, lists made tuples)."""
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _convert(args[0], value, where, source)
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, Mapping):
            raise InputError(f"[{where}] must be a table, not {value!r}", path=source)
        return from_dict(tp, value, section=where, source=source)
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str) and args[:1] == (str,):
            value = [value]
        if not isinstance(value, list | tuple):
            raise InputError(f"[{where}] must be a list, not {value!r}", path=source)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        return tuple(_convert(item, v, where, source) if item is not None else v for v in value)
    if tp is float and isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "-inf", "nan"):
        return float(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_dict(cls: type[T], data: Mapping, *, section: str, source: str | None = None, base: T | None = None) -> T:
    """A ``cls`` from ``data`` over ``base`` (default: the class defaults). Raises InputError."""
    if not isinstance(data, Mapping):
        raise InputError(f"[{section}] must be a table of settings, not {data!r}", path=source)
    if hasattr(cls, "from_aliases"):  # a settings class that also accepts another tool's names for its fields
        data = cls.from_aliases(dict(data), source)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.compare}  # compare=False: bookkeeping
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(
            f"[{section}] unknown key(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}", path=source
        )
    hints = _hints(cls)
    values = {k: _convert(hints[k], v, f"{section}.{k}" if _nested(hints[k]) else section, source)
              for k, v in data.items()}  # fmt: skip
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except (TypeError, ValueError) as e:
        raise InputError(f"[{section}] {e}", path=source) from None


def _nested(tp) -> bool:
    return dataclasses.is_dataclass(tp)


def load(cls: type[T], path: str | os.PathLike | None, *, section: str, base: T | None = None) -> T:
    """``cls`` from the ``[section]`` table of a TOML file (or its top level when it has no such table)."""
    if path is None:
        return base if base is not None else cls()
    data = read_toml(path)
    if isinstance(data.get(section), Mapping):
        data = data[section]
    return from_dict(cls, data, section=section, source=os.fspath(path), base=base)


def to_dict(obj) -> dict:
    """A dataclass as JSON-ready values: tuples become lists, infinities ``"inf"``; readable by :func:`from_dict`."""

    def plain(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init and f.compare}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, float) and math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v

    return plain(obj)
