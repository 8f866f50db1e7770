"""csv and tsv URL lists, a block of records at a time (:mod:`curate.urllist.textblocks`), every column a
string.

They are read as img2dataset reads them (pyarrow's csv parser): a quote opens a quoted field only at
the field's start, so a caption's inch mark (``a 5" screen``) or a title quoted mid-caption is text,
and ``"Hello" poster`` reads as ``Hello poster``. polars parses a block whose quotes are all plain (see
:mod:`~curate.urllist.textblocks`) the same way and faster; it refuses any other quote (``CSV
malformed``), so such a block goes to pyarrow's parser, told to keep polars' nulls: an empty unquoted
field is null, ``""`` the empty string. Empty lines are skipped, as pyarrow's parser skips them.

A row with fewer fields than the header is padded with nulls (polars' rule; pyarrow's parser, and so
img2dataset, refuses it) wherever it lies: first in a block, or in a block pyarrow parses. A row with
more fields is refused, naming its line.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from curate.core.errors import InputError
from curate.urllist import textblocks

_URL_LIKE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


def tables(path: str, sep: str, url_col: str, caption_col: str) -> Iterator[pa.Table]:
    """The file's blocks as tables; the first block's header (or, in a headerless file, names made from
    its first row) names every block's columns."""
    names: list[str] | None = None
    rows = 0  # data rows before the block
    for block in textblocks.blocks(path, sep):
        text = textblocks.decoded(path, block, header_lines=1)
        if not text.strip():
            continue
        if names is None:
            df = _parse(path, text, sep, True, block, rows)
            if url_col not in df.columns:
                # Lists such as CC3M's TSV ship without a header: the first row is data. Recognise that
                # when a header "name" is itself a URL, and name the columns by content.
                url_idx = [i for i, c in enumerate(df.columns) if _URL_LIKE.match(c)]
                if len(url_idx) == 1:
                    df = _parse(path, text, sep, False, block, rows)
                    made = [f"column_{i}" for i in range(df.width)]
                    made[url_idx[0]] = url_col
                    if df.width == 2:
                        made[1 - url_idx[0]] = caption_col
                    df.columns = made
            names = df.columns
        else:
            df = _parse(path, text, sep, False, block, rows, len(names))
            if df.width != len(names):
                _raise_ragged(path, text, sep, False, block, rows, len(names))
            df.columns = names
        rows += df.height
        yield df.to_arrow()
    if names is None:
        yield pa.table({url_col: pa.array([], pa.string())})


def _parse(path: str, text: str, sep: str, has_header: bool, block, rows: int, want: int | None = None):
    try:
        if block.plain:
            data, head = textblocks.without_empty_lines(block.data), has_header
            if want is not None:
                # A later block's width is the header's, not its first row's (which may be short): a header
                # line of that many names says so, as in the first block (polars pads rows short of it).
                data, head = sep.join(f"column_{i}" for i in range(want)).encode() + b"\n" + data, True
            return pl.read_csv(io.BytesIO(data), separator=sep, has_header=head, infer_schema=False, quote_char='"')
        return _parse_quoted(block.data, text, sep, has_header, want)
    except (pl.exceptions.PolarsError, pa.ArrowInvalid, ValueError) as e:
        _raise_ragged(path, text, sep, has_header, block, rows, want)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f" (in the lines from {block.line0 + 1})" if block.line0 else ""
        raise InputError(f"corrupt {_kind(sep)}: {first}{where}", path=path) from None


def _parse_quoted(data: bytes, text: str, sep: str, has_header: bool, want: int | None = None) -> pl.DataFrame:
    """A block with quotes that are not plain, by pyarrow's csv parser, as polars names and types it
    (short rows padded with nulls, as polars pads them)."""
    first = next((r for r in csv.reader(io.StringIO(text), delimiter=sep, quotechar='"') if r), [])
    width = want if want is not None else len(first)
    names = _polars_names(first) if has_header else [f"column_{i}" for i in range(width)]
    # pyarrow reads the header itself (skip_rows would count an empty line before it as a row)
    read = pacsv.ReadOptions(column_names=None if has_header else names, use_threads=False)
    parse = pacsv.ParseOptions(delimiter=sep, quote_char='"', newlines_in_values=True)
    convert = pacsv.ConvertOptions(
        column_types=dict.fromkeys(first if has_header else names, pa.string()),
        strings_can_be_null=True,
        null_values=[""],
        quoted_strings_can_be_null=False,
    )
    try:
        table = pacsv.read_csv(io.BytesIO(data), read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid:
        padded = _pad_short_rows(data, text, sep, width)
        if padded is None:  # a long row (or no short one): the caller names it
            raise
        table = pacsv.read_csv(io.BytesIO(padded), read_options=read, parse_options=parse, convert_options=convert)
    return pl.from_arrow(table.rename_columns(names))


def _pad_short_rows(data: bytes, text: str, sep: str, width: int) -> bytes | None:
    """``data`` with empty unquoted fields (nulls) appended to each row that has fewer than ``width``
    fields, or None where a row has more, or none has fewer. Only after pyarrow refused the block."""
    short: list[tuple[int, int]] = []  # (line the row ends on, fields missing)
    reader = csv.reader(io.StringIO(text), delimiter=sep, quotechar='"')
    try:
        for fields in reader:
            if len(fields) > width:
                return None
            if fields and len(fields) < width:
                short.append((reader.line_num, width - len(fields)))
    except csv.Error:
        return None
    if not short:
        return None
    newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    pieces, at = [], 0
    for line, missing in short:
        end = int(newlines[line - 1]) if line <= len(newlines) else len(data)  # the last line may have none
        end -= end > 0 and data[end - 1 : end] == b"\r"
        pieces += [data[at:end], sep.encode() * missing]
        at = end
    pieces.append(data[at:])
    return b"".join(pieces)


def _polars_names(header: list[str]) -> list[str]:
    """A header's column names as polars makes them unique (``a``, ``a_duplicated_0``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for name in header:
        k = seen.get(name)
        out.append(name if k is None else f"{name}_duplicated_{k}")
        seen[name] = 0 if k is None else k + 1
    return out


def _kind(sep: str) -> str:
    return "tsv" if sep == "\t" else "csv"


def _raise_ragged(path: str, text: str, sep: str, has_header: bool, block, rows: int, want: int | None) -> None:
    """Raise naming the block's first row whose field count is not ``want`` (default: its first row's)."""
    ragged = _ragged_row(text, sep, has_header, want)
    if ragged is not None:
        line, row, got, expected = ragged
        line, row = block.line0 + line, rows + row
        where = f"line {line}" + (f" (data row {row})" if row >= 1 else "")
        raise InputError(f"corrupt {_kind(sep)}: {where} has {got} fields, expected {expected}", path=path) from None


def _ragged_row(text: str, sep: str, has_header: bool, want: int | None = None) -> tuple[int, int, int, int] | None:
    """(line, data row, fields, expected fields) of the first row with more fields than ``want`` (default:
    the first row's); a shorter row is padded, not refused."""
    reader = csv.reader(io.StringIO(text), delimiter=sep, quotechar='"')
    rows = 0
    for fields in reader:
        if not fields:
            continue  # a blank line is no row, for polars either
        if want is None:
            want = len(fields)
            rows += not has_header
            continue
        rows += 1
        if len(fields) > want:
            return reader.line_num, rows, len(fields), want
    return None
