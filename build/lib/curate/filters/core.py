"""A filter is a pure function of the annotation table: a keep mask, and its name as the reason.

:func:`apply_filters` runs a list of filters over one table and records, per row, the first filter
that failed (``reason``, null when the row is kept) and every filter that failed (``reasons``, in
list order), and counts: ``kept``, ``dropped_<reason>`` by first reason (these add up to the input
rows) and ``failing_<name>`` (each filter's own failures, overlapping). No filter decodes an image
or loads a model, so a change of threshold costs a pass over columns.

A row the filter cannot judge (a null in a column it reads, e.g. the size of an image that did not
decode) fails it: nothing unmeasured is kept by accident.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from curate.core import schema
from curate.core.errors import InputError

KEEP = "keep"


@dataclass(frozen=True)
class Filter:
    """``name`` is the reason recorded for rows it drops; ``fn(table)`` returns a bool keep mask."""

    name: str
    fn: Callable[[pa.Table], np.ndarray]
    columns: tuple[str, ...] = ()
    params: dict = field(default_factory=dict)

    def __call__(self, table: pa.Table) -> tuple[np.ndarray, str]:
        missing = [c for c in self.columns if c not in table.column_names]
        if missing:
            raise InputError(f"filter {self.name!r} needs column(s) {', '.join(missing)}, absent from the annotations")
        mask = np.asarray(self.fn(table), dtype=bool)
        if mask.shape != (table.num_rows,):
            raise ValueError(f"filter {self.name!r} returned a mask of shape {mask.shape} for {table.num_rows} rows")
        return mask, self.name


@dataclass(frozen=True)
class FilterResult:
    table: pa.Table  # uid, keep, reason, reasons
    counts: dict[str, int]

    @property
    def keep(self) -> np.ndarray:
        return self.table.column(KEEP).to_numpy(zero_copy_only=False)


def apply_filters(table: pa.Table, filters: Sequence[Filter]) -> FilterResult:
    """Run ``filters`` over ``table``; see the module docstring for what is recorded."""
    names = [f.name for f in filters]
    if len(set(names)) != len(names):
        raise InputError(f"filter names must be unique (they are the drop reasons): {names}")
    n = table.num_rows
    fails = np.zeros((len(filters), n), bool)
    for k, f in enumerate(filters):
        mask, _ = f(table)
        fails[k] = ~mask
    keep = ~fails.any(axis=0)
    first = np.argmax(fails, axis=0) if filters else np.zeros(n, np.int64)
    name_arr = np.array(names + [""], dtype=object)
    reason = pa.array(np.where(keep, None, name_arr[first]), pa.string())

    # Every failing filter per row, in filter order: row-major nonzero of the (row, filter) matrix.
    rows, which = np.nonzero(fails.T)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    values = pa.array(name_arr[which].tolist() if len(which) else [], pa.string())
    reasons = pa.ListArray.from_arrays(pa.array(offsets), values)

    counts = {"input": n, "kept": int(keep.sum())}
    for k, name in enumerate(names):
        counts[f"dropped_{name}"] = int((~keep & (first == k)).sum())
    for k, name in enumerate(names):
        counts[f"failing_{name}"] = int(fails[k].sum())
    out = pa.table(
        {
            schema.UID: table.column(schema.UID) if schema.UID in table.column_names else pa.nulls(n, pa.string()),
            KEEP: pa.array(keep),
            schema.REASON: reason,
            schema.REASONS: reasons,
        }
    )
    return FilterResult(out, counts)


def column(table: pa.Table, name: str, fill: float | bool = np.nan) -> np.ndarray:
    """A numeric column as float64 numpy (a boolean one as bool), nulls replaced by ``fill``."""
    col = table.column(name)
    if pa.types.is_boolean(col.type):
        return np.asarray(col.fill_null(bool(fill)).to_numpy(zero_copy_only=False), bool)
    return np.asarray(col.cast(pa.float64()).fill_null(float(fill)).to_numpy(zero_copy_only=False), np.float64)
