"""Text list files (csv, tsv, jsonl, txt; gzipped or not; on disk or in a store) read a block at a time.

Read whole, such a file was held many times over while it was parsed: a 122 MB TSV of 1M URLs and
captions took the process to 1.77 GB (its bytes, the decoded text, polars' frame and Arrow's copy),
where the same list as parquet took 313 MB, and CC12M's list is a 2.6 GB TSV. Here the file is streamed
(and decompressed) as it is read and cut into blocks of about ``BLOCK`` bytes at record boundaries: for
jsonl and txt any newline; for csv and tsv a newline outside quoted fields, quoting as img2dataset's
reader (pyarrow's csv parser, and Python's ``csv``) reads it: a quote opens a quoted field only at the
field's start (``"a, b"``), ``""`` inside one is a quote, and a quote anywhere else is a character (a
caption's inch mark, ``a 5" screen``). Each block is decoded and parsed on its own, and knows the lines
and bytes before it, so an error still names the file's line. Blocks of 1 MB held the least (staging a
1M-row TSV peaked at 229 MB; 246 at 2 MB, 308 at 4, 405 at 8) at the same speed.

A block records whether its quotes are all *plain*: every one opens a field, closes it (followed by the
separator or the line's end) or is doubled inside it. polars reads such a block as pyarrow does, and
faster; a quote anywhere else makes polars refuse the block (``CSV malformed``), so the reader parses
that block with pyarrow's parser instead (:mod:`curate.urllist.delimited`).
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from curate.core import storage
from curate.core.errors import InputError

BLOCK = 1 << 20  # bytes a block holds, about (a block of whole records may hold more): ~8,000 rows
READ_AHEAD = 8 << 20  # bytes read at a time from an object store (s3fs's default: 50 MB)
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Block:
    data: bytes  # whole records (the last block may end without a newline)
    line0: int  # lines of the file before it
    byte0: int  # bytes of the file (decompressed, without a byte-order mark) before it
    plain: bool = True  # every quote opens, closes or is doubled inside a quoted field (see above)


def blocks(path: str, sep: str | None = None, size: int | None = None) -> Iterator[Block]:
    """The file's records in blocks of about ``size`` bytes (default ``BLOCK``), in order; none for an
    empty file. ``sep``: the field separator of a csv or tsv file (whose quoted fields may hold
    newlines); None: every newline ends a record."""
    sep_byte = None if sep is None else sep.encode()[0]
    size = want = size or BLOCK
    with _open(path) as f:
        pending, line0, byte0, start = b"", 0, 0, True
        while True:
            data = _read(path, f, want)
            pending += data
            if start:  # a byte-order mark is no part of the first record
                if data and len(pending) < len(BOM):
                    continue
                pending, start = pending.removeprefix(BOM), False
            if not data:  # the end: what is left is the last block
                if pending:
                    yield Block(pending, line0, byte0, _scan(pending, sep_byte)[1] >= len(pending))
                return
            if len(pending) < want:
                continue
            cut, odd = _scan(pending, sep_byte)
            if cut == 0:  # no record ends in it yet: read on, more at a time
                want *= 2
                continue
            block, pending, want = pending[:cut], pending[cut:], size
            yield Block(block, line0, byte0, odd >= cut)
            line0, byte0 = line0 + block.count(b"\n"), byte0 + len(block)


def _scan(data: bytes, sep: int | None) -> tuple[int, int]:
    """(where the last whole record of ``data`` ends, after its newline, 0 if none does; where its first
    quote that is not plain lies, ``len(data)`` if none)."""
    if sep is None:
        return data.rfind(b"\n") + 1, len(data)
    a = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(a == 0x0A)
    quotes = np.flatnonzero(a == 0x22)
    if _all_plain(a, quotes, sep):
        outside = newlines[outside_plain_quotes(quotes, newlines)]
        return (int(outside[-1]) + 1 if len(outside) else 0), len(data)
    opens, closes, odd = _quoted_fields(data, quotes.tolist(), sep)
    at = np.searchsorted(opens, newlines, side="right") - 1  # the quoted field each newline follows
    outside = newlines[(at < 0) | (newlines > np.append(closes, -1)[at])]
    return (int(outside[-1]) + 1 if len(outside) else 0), odd


def outside_plain_quotes(quotes: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Which offsets ``at`` lie outside quoted fields, where every quote is plain (each opens or closes a
    field, a doubled one closing and reopening it): those after an even number of quotes."""
    return np.searchsorted(quotes, at) % 2 == 0


def without_empty_lines(data: bytes) -> bytes:
    """A plain block of csv or tsv records without its empty lines (outside quoted fields), which
    pyarrow's parser (img2dataset's) skips and polars would read as a row of nulls."""
    a = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(a == 0x0A)
    cr = (newlines >= 1) & (a[np.maximum(newlines - 1, 0)] == 0x0D)
    start = newlines - cr  # where the line's end begins
    empty = (start == 0) | (a[np.maximum(start - 1, 0)] == 0x0A)
    if not empty.any():
        return data
    empty &= outside_plain_quotes(np.flatnonzero(a == 0x22), newlines)
    keep = np.ones(len(a), bool)
    keep[newlines[empty]] = False
    keep[(newlines - 1)[empty & cr]] = False
    return a[keep].tobytes()


def _all_plain(a: np.ndarray, quotes: np.ndarray, sep: int | None) -> bool:
    """Whether taking the quotes in turn as opening and closing ones reads the data as img2dataset's
    parser does: each opening one starts a field (or follows the closing one it is doubled with), each
    closing one ends its field (or is doubled with the next)."""
    if not len(quotes):
        return True
    n, q = len(a), quotes
    opening, closing = q[0::2], q[1::2]
    before = a[np.maximum(opening - 1, 0)]
    doubled_back = np.zeros(len(opening), bool)
    doubled_back[1:] = closing[: len(opening) - 1] == opening[1:] - 1
    starts = (opening == 0) | (before == sep) | (before == 0x0A) | doubled_back
    after = a[np.minimum(closing + 1, n - 1)]
    doubled_on = np.zeros(len(closing), bool)
    nxt = opening[1 : len(closing) + 1]
    doubled_on[: len(nxt)] = nxt == closing[: len(nxt)] + 1
    ends = (closing == n - 1) | (after == sep) | (after == 0x0A) | (after == 0x0D) | doubled_on
    return bool(starts.all() and ends.all())


def _quoted_fields(data: bytes, quotes: list[int], sep: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The quoted fields of ``data`` as pyarrow's csv parser reads them (a quote opens one only at a
    field's start; inside, a doubled quote is a quote and a single one closes it; a field still open at
    the end closes there): their opening and closing quotes' offsets, and the first quote that is not
    plain (in an unquoted field, or closing a field that goes on), ``len(data)`` if none."""
    opens, closes, odd, i, n = [], [], len(data), 0, len(quotes)
    while i < n:
        q = quotes[i]
        if q and data[q - 1] != sep and data[q - 1] != 0x0A:  # inside an unquoted field: a character
            odd = min(odd, q)
            i += 1
            continue
        i += 1
        while i + 1 < n and quotes[i + 1] == quotes[i] + 1:  # a doubled quote inside the field
            i += 2
        end = quotes[i] if i < n else len(data)
        opens.append(q)
        closes.append(end)
        if end + 1 < len(data) and data[end + 1] not in (sep, 0x0A, 0x0D):
            odd = min(odd, end)  # the field goes on after its closing quote
        i += 1
    return np.array(opens, np.int64), np.array(closes, np.int64), odd


@contextlib.contextmanager
def _open(path: str) -> Iterator:
    """The file's bytes as a stream (decompressed when it ends in ``.gz``); closed when the block ends."""
    with contextlib.ExitStack() as stack:
        try:
            if storage.is_local(path):
                raw = stack.enter_context(open(storage.local_path(path), "rb"))
            else:
                fs, inside = storage.filesystem(path)
                raw = stack.enter_context(fs.open(inside, "rb", block_size=READ_AHEAD))
        except OSError as e:
            raise InputError(f"cannot read file: {e}", path=path) from None
        yield stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb")) if path.endswith(".gz") else raw


def read_whole(path: str) -> bytes:
    """The file's bytes, whole (decompressed when it ends in ``.gz``), with :func:`blocks`' errors."""
    with _open(path) as f:
        return _read(path, f, -1)


def _read(path: str, f, size: int) -> bytes:
    try:
        return f.read(size)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # not gzip, cut off, corrupt deflate data
        raise InputError(f"corrupt gzip data ({e}); the file is damaged or not gzip", path=path) from None
    except OSError as e:
        raise InputError(f"cannot read file: {e}", path=path) from None


def decoded(path: str, block: Block, header_lines: int) -> str:
    """The block as text, or an error naming the line (and data row) of its first invalid byte."""
    try:
        return block.data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = block.line0 + block.data.count(b"\n", 0, e.start) + 1
        row = line - header_lines
        where = f"line {line}" + (f" (data row {row})" if header_lines and row >= 1 else "")
        raise InputError(f"invalid UTF-8 at {where}, byte offset {block.byte0 + e.start}", path=path) from None
