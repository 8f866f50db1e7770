"""Text list files (csv, tsv, jsonl, txt; gzipped or not; on disk or in a store) read a block at a time.

Read whole, such a file was held many times over while it was parsed: a 122 MB TSV of 1M URLs and
captions took the process to 1.77 GB (its bytes, the decoded text, polars' frame and Arrow's copy),
where the same list as parquet took 313 MB, and CC12M's list is a 2.6 GB TSV. Here the file is streamed
(and decompressed) as it is read and cut into blocks of about ``BLOCK`` bytes at record boundaries: for
csv and tsv a newline with an even number of quote characters before it in the block (a newline inside
a quoted field has an odd number; polars splits a file for its own threads by the same rule, and
refuses a file where a stray quote breaks it), for jsonl and txt any newline. Each block is decoded and
parsed on its own, and knows the lines and bytes before it, so an error still names the file's line.
Blocks of 1 MB held the least (staging a 1M-row TSV peaked at 229 MB; 246 at 2 MB, 308 at 4, 405 at 8)
at the same speed.
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


def blocks(path: str, quoted: bool, size: int | None = None) -> Iterator[Block]:
    """The file's records in blocks of about ``size`` bytes (default ``BLOCK``), in order; none for an
    empty file."""
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
                    yield Block(pending, line0, byte0)
                return
            if len(pending) < want:
                continue
            cut = _cut(pending, quoted)
            if cut == 0:  # no record ends in it yet: read on, more at a time
                want *= 2
                continue
            block, pending, want = pending[:cut], pending[cut:], size
            yield Block(block, line0, byte0)
            line0, byte0 = line0 + block.count(b"\n"), byte0 + len(block)


def _cut(data: bytes, quoted: bool) -> int:
    """Where the last whole record of ``data`` ends (after its newline); 0 if none does."""
    if not quoted:
        return data.rfind(b"\n") + 1
    a = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(a == 0x0A)
    quotes = np.flatnonzero(a == 0x22)
    outside = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
    return int(outside[-1]) + 1 if len(outside) else 0


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
