"""Read the URL lists users actually have into one canonical Arrow table.

Formats: parquet, csv, tsv, jsonl and txt (one URL a line), each optionally gzipped (``.gz``), at a
path or a URL (``s3://``, ...); a directory, prefix or glob reads every list file in it, by name, as
one list. The result has ``uid``, ``url``, ``caption`` first and every other input column after them
(a column whose name clip-tiers owns gets the ``input_`` prefix).

Everything wrong with the input raises :class:`~curate.core.errors.InputError` with the file, and the
row where one applies: missing url column, unreadable or corrupt file, empty list, invalid UTF-8,
non-string or empty URLs, malformed or duplicate uids.
"""

from __future__ import annotations

import glob
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from curate.core import access, schema, storage
from curate.core.errors import InputError
from curate.urllist import delimited, textblocks

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "txt",
}


@dataclass(frozen=True)
class ReadConfig:
    """Which input columns hold the URL, the caption and (optionally) the uid."""

    url_col: str = "url"
    caption_col: str = "caption"
    uid_col: str = "uid"
    # Force one format for every file instead of inferring it from the suffix.
    format: str | None = None


def list_files(spec: str | os.PathLike | list) -> list[str]:
    """Expand a file, directory or glob (or a list of them) into the files to read, in order."""
    specs = spec if isinstance(spec, list | tuple) else [spec]
    out: list[str] = []
    for s in specs:
        s = os.fspath(s)
        if not storage.is_local(s):
            out.extend(_list_remote(s))
        elif os.path.isdir(s):
            found = sorted(str(p) for p in Path(s).iterdir() if p.is_file() and _format_of(str(p), None, strict=False))
            if not found:
                raise InputError(f"no URL list files in directory (looked for {', '.join(sorted(FORMATS))})", path=s)
            out.extend(found)
        elif any(ch in s for ch in "*?["):
            found = sorted(p for p in glob.glob(s, recursive=True) if os.path.isfile(p))
            if not found:
                raise InputError("glob matches no files", path=s)
            out.extend(found)
        elif os.path.isfile(s):
            out.append(s)
        else:
            raise InputError("no such file or directory", path=s)
    return out


def _list_remote(s: str) -> list[str]:
    """The list files a URL names: an object, a prefix holding list files, or a glob."""
    access.check_access(s, write=False)  # an unreachable store, a missing bucket, refused credentials
    if any(ch in s for ch in "*?["):
        fs, path = storage.filesystem(s)
        if found := sorted(f"{storage.protocol(s)}://{p}" for p in fs.glob(path) if fs.isfile(p)):
            return found
        raise InputError("glob matches no files", path=s)
    if storage.isfile(s):
        return [s]
    if names := [n for n in storage.listdir(s) if _format_of(n, None, strict=False)]:
        return [storage.join(s, n) for n in names]
    raise InputError("no URL list files in directory" if storage.isdir(s) else "no such file or directory", path=s)


def _format_of(path: str, forced: str | None, strict: bool = True) -> str | None:
    if forced:
        if forced not in set(FORMATS.values()):
            raise InputError(f"unknown format {forced!r}; choose one of {sorted(set(FORMATS.values()))}", path=path)
        return forced
    name = path[:-3] if path.endswith(".gz") else path
    fmt = FORMATS.get(Path(name).suffix.lower())
    if fmt is None and strict:
        raise InputError(
            f"cannot tell the format from the file name; expected one of {', '.join(sorted(FORMATS))} "
            "(optionally .gz), or pass --format",
            path=path,
        )
    return fmt


def _jsonl_tables(path: str) -> Iterator[pa.Table]:
    """A jsonl file a block of lines at a time, each block's column types as it infers them (the stage
    unifies them, as it unifies files)."""
    rows = 0  # objects before the block
    for block in textblocks.blocks(path):
        textblocks.decoded(path, block, header_lines=0)
        if not block.data.strip():
            continue
        try:
            table = pajson.read_json(io.BytesIO(block.data))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            # Arrow counts the block's objects from 0: name the file's data row instead.
            first = re.sub(r" in row (\d+)", lambda m, r0=rows: f" at data row {r0 + int(m[1]) + 1}", str(e).strip())
            raise InputError(f"corrupt jsonl: {first.splitlines()[0]}", path=path) from None
        rows += table.num_rows
        yield table
    if not rows:
        yield pa.table({})


def _txt_tables(path: str, cfg: ReadConfig) -> Iterator[pa.Table]:
    """A txt file (one URL a line; blank lines skipped) a block of lines at a time."""
    for block in textblocks.blocks(path):
        urls = [line.strip() for line in textblocks.decoded(path, block, header_lines=0).splitlines()]
        yield pa.table({cfg.url_col: pa.array([u for u in urls if u], pa.string())})
    yield pa.table({cfg.url_col: pa.array([], pa.string())})  # so a file with no lines has its column


def _text_tables(path: str, fmt: str, cfg: ReadConfig) -> Iterator[pa.Table]:
    """One csv, tsv, jsonl or txt list file, a block at a time, as it is (its own column names)."""
    if fmt in ("csv", "tsv"):
        return delimited.tables(path, "," if fmt == "csv" else "\t", cfg.url_col, cfg.caption_col)
    if fmt == "jsonl":
        return _jsonl_tables(path)
    return _txt_tables(path, cfg)


def file_batches(
    path: str, cfg: ReadConfig = ReadConfig(), rows: int = 1 << 16, row_groups: tuple[int, int] | None = None
) -> Iterator[pa.Table]:
    """One list file as tables of at most ``rows`` rows, in order, string types normalised; a file with
    no rows gives one empty table with its columns. Parquet is read a batch at a time (one in a store
    by ranged reads, a gzipped one from its bytes), only its row groups ``[a, b)`` where ``row_groups`` is
    given; the text formats a block of records at a time (:mod:`curate.urllist.textblocks`)."""
    fmt = _format_of(path, cfg.format)
    if fmt != "parquet":
        empty = True
        for table in _text_tables(path, fmt, cfg):
            if table.num_rows or empty:  # every block's rows; a file without any gives one empty table
                table = _normalise_strings(table)
                yield from (table.slice(at, rows) for at in range(0, max(1, table.num_rows), rows))
                empty = False
        return
    try:
        if path.endswith(".gz"):
            f = pq.ParquetFile(io.BytesIO(textblocks.read_whole(path)))
        elif storage.is_local(path):
            f = pq.ParquetFile(path, pre_buffer=False)
        else:  # ranged reads of the footer and each row group
            fs, inside = storage.filesystem(path)
            f = pq.ParquetFile(fs.open(inside, "rb"), pre_buffer=False)
        groups = None if row_groups is None else list(range(*row_groups))
        it = f.iter_batches(rows, row_groups=groups, use_threads=False)
        empty = True
        for b in it:
            empty = False
            yield _normalise_strings(pa.Table.from_batches([b]))
        if empty:
            yield _normalise_strings(f.schema_arrow.empty_table())
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"corrupt or unreadable parquet: {str(e).strip().splitlines()[0]}", path=path) from None


def _normalise_strings(table: pa.Table) -> pa.Table:
    cols = []
    for col in table.columns:
        t = col.type
        if pa.types.is_dictionary(t) and _is_stringish(t.value_type):
            col = col.cast(pa.string())
        elif _is_stringish(t) and not pa.types.is_string(t):
            col = col.cast(pa.string())
        cols.append(col)
    return pa.table(cols, names=table.column_names)


def _is_stringish(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or t == pa.string_view()


def _first_index(mask: pa.ChunkedArray | pa.Array) -> int | None:
    idx = np.flatnonzero(np.asarray(pc.fill_null(mask, True).to_numpy(zero_copy_only=False), dtype=bool))
    return int(idx[0]) if len(idx) else None


def _check_utf8(path: str, name: str, col: pa.ChunkedArray, row0: int = 0) -> None:
    # Parquet does not validate string bytes on read; Arrow's full validation does.
    offset = row0
    for chunk in col.chunks:
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid:
            for i, v in enumerate(chunk.cast(pa.binary()).to_pylist()):
                if v is not None:
                    try:
                        v.decode("utf-8")
                    except UnicodeDecodeError:
                        raise InputError(f"invalid UTF-8 in column {name!r}", path=path, row=offset + i + 1) from None
        offset += len(chunk)


def _canonical(path: str, raw: pa.Table, cfg: ReadConfig, row0: int = 0) -> tuple[pa.Table, bool]:
    """Rename to uid/url/caption, validate, and keep the rest. Returns (table, had_uid). ``raw``: rows of
    the file from its ``row0``-th (0-based), which messages count in."""
    if cfg.url_col not in raw.column_names:
        cols = ", ".join(raw.column_names) or "none"
        raise InputError(f"no {cfg.url_col!r} column (columns: {cols}); name it with --url-col", path=path)
    url = raw.column(cfg.url_col)
    if pa.types.is_null(url.type) and len(url):
        raise InputError(f"column {cfg.url_col!r} holds no URLs", path=path, row=row0 + 1)
    if not (pa.types.is_string(url.type) or pa.types.is_null(url.type)):
        raise InputError(f"column {cfg.url_col!r} has type {url.type}; URLs must be strings", path=path)
    url = url.cast(pa.string())
    _check_utf8(path, cfg.url_col, url, row0)
    # Kleene logic: null OR anything is true here, so a null URL is found, not skipped as "unknown".
    bad = _first_index(pc.or_kleene(pc.is_null(url), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(url)), 0)))
    if bad is not None:
        raise InputError("empty URL", path=path, row=row0 + bad + 1)

    if cfg.caption_col in raw.column_names:
        cap = raw.column(cfg.caption_col)
        if pa.types.is_null(cap.type):
            cap = cap.cast(pa.string())
        if not pa.types.is_string(cap.type):
            raise InputError(f"column {cfg.caption_col!r} has type {cap.type}; captions must be strings", path=path)
        _check_utf8(path, cfg.caption_col, cap, row0)
    else:
        cap = pa.nulls(len(raw), pa.string())

    had_uid = cfg.uid_col in raw.column_names
    cols = {schema.URL: url, schema.CAPTION: cap}
    if had_uid:
        cols[schema.UID] = _checked_uids(path, raw.column(cfg.uid_col), cfg.uid_col, row0)
    taken = {cfg.url_col, cfg.caption_col, cfg.uid_col}
    rest = [n for n in raw.column_names if n not in taken]
    for name, out in zip(rest, prefixed_names(rest), strict=True):
        cols[out] = raw.column(name)
    return pa.table(cols), had_uid


def prefixed_names(names: list[str], owned=schema.RESERVED) -> list[str]:
    """Input column names as stored: a name in ``owned`` gets the ``input_`` prefix, repeated until the
    name is free, so ``status`` and ``input_status`` become ``input_input_status`` and ``input_status``
    (both kept, nothing overwritten)."""
    used = {n for n in names if n not in owned} | set(owned)
    out = []
    for name in names:
        if name in owned:
            new = schema.INPUT_PREFIX + name
            while new in used:
                new = schema.INPUT_PREFIX + new
            used.add(new)
            name = new
        out.append(name)
    return out


def _checked_uids(path: str, col: pa.ChunkedArray, name: str, row0: int = 0) -> pa.ChunkedArray:
    if pa.types.is_integer(col.type):
        col = col.cast(pa.string())
    if not pa.types.is_string(col.type):
        raise InputError(f"column {name!r} has type {col.type}; uids must be strings or integers", path=path)
    _check_utf8(path, name, col, row0)
    # RE2's ``$`` is the end of the text (Python's ``re`` also lets a trailing newline through).
    bad = _first_index(pc.invert(pc.match_substring_regex(col, schema.UID_PATTERN.pattern)))
    if bad is not None:
        raise InputError(
            f"uid {col[bad].as_py()!r} is not a plain token (letters, digits, '_', '.', '-'; at most 128; "
            "no leading dot)",
            path=path,
            row=row0 + bad + 1,
        )
    return col


def plain_parquet(path: str, forced: str | None = None) -> bool:
    """Whether a list file is read as parquet and not gzipped: one whose row groups can be read apart."""
    return _format_of(path, forced, strict=False) == "parquet" and not path.endswith(".gz")


def row_group_rows(path: str, forced: str | None = None) -> list[int] | None:
    """The rows of each row group of a parquet list file (local or in a store: its footer only); None for
    a file of another format, a gzipped one, or one whose footer cannot be read (its staging says why)."""
    if not plain_parquet(path, forced):
        return None
    try:
        if storage.is_local(path):
            meta = pq.read_metadata(path)
        else:
            fs, inside = storage.filesystem(path)
            with fs.open(inside, "rb") as f:
                meta = pq.read_metadata(f)
        return [meta.row_group(k).num_rows for k in range(meta.num_row_groups)]
    except (pa.ArrowException, OSError):
        return None
