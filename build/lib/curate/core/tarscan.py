"""Reading a tar's member headers (never its data): where each regular file's bytes lie.

:func:`scan` is the one tar reader of the project (raw shards, band shards, the trainer's shards). A tar
as img2dataset, webdataset, Python's ``tarfile`` or :class:`~curate.core.tarstream.TarWriter` write it
(plain ustar headers, names under 100 bytes) is read column-wise: the blocks whose size field could
belong to a header are found in one vectorised pass, the chain of headers from the first block is
followed through them (a data block that merely looks like a header is never on that chain), and
names, sizes and checksums are read for all headers at once. Any other tar (GNU long names, pax
records, name prefixes, directories, base-256 sizes) or a damaged one is walked header by header,
which reads every format listed in :func:`scan` and names the byte where a bad tar goes wrong.
"""

from __future__ import annotations

import os
import tarfile
from typing import NamedTuple

import numpy as np
import pyarrow as pa

BLOCK = 512
_WINDOW = 8192  # bytes read at a header: it and, after small members, the next few headers

_REGULAR = frozenset(b"0\x007")  # regular file ('7': contiguous file, read as one)
_NEXT_NAME = frozenset(b"Lx")  # GNU long name, pax extended header: both describe the next member
_META = frozenset(b"Kg")  # GNU long link name, pax global header: nothing we use
_SUM_CHUNK = 1 << 16  # headers checked per vectorised pass
_END = frozenset(b" \0")
_OCTAL = 8 ** np.arange(10, -1, -1, dtype=np.int64)
_REGULAR_KINDS = np.frombuffer(bytes(sorted(_REGULAR)), np.uint8)
_USTAR = np.frombuffer(b"ustar", np.uint8)


class Members(NamedTuple):
    """A tar's regular files, in file order: ``names`` (Arrow strings), data ``offsets`` and ``sizes``."""

    names: pa.Array
    offsets: np.ndarray
    sizes: np.ndarray

    def rows(self) -> list[tuple[str, int, int]]:
        return list(zip(self.names.to_pylist(), self.offsets.tolist(), self.sizes.tolist(), strict=True))


def scan(buf, where: str = "tar") -> list[tuple[str, int, int]]:
    """``(name, data offset, size)`` of the regular-file members of an uncompressed tar, in file order.

    ``buf`` is the whole archive as a sliceable bytes-like object (``bytes``, an ``mmap``): only header
    blocks are read, member data is never touched. Reads ustar (with its name prefix), GNU long names,
    GNU base-256 sizes and pax ``path`` records; skips directories, links and devices. Every header's
    checksum is verified and the archive must end with its end-of-archive block; anything else raises
    ``tarfile.TarError`` naming ``where`` and the byte. Names are returned as text (bytes that are not
    UTF-8 replaced) to compare with expected names, never to be used as paths.
    """
    fast = _scan_plain(buf, where)
    return fast.rows() if fast is not None else _walk(buf, where)


def scan_columns(buf, where: str = "tar") -> Members:
    """:func:`scan` as columns."""
    fast = _scan_plain(buf, where)
    if fast is not None:
        return fast
    rows = _walk(buf, where)
    return Members(
        pa.array([r[0] for r in rows], pa.string()),
        np.array([r[1] for r in rows], np.int64),
        np.array([r[2] for r in rows], np.int64),
    )


def _chain(buf) -> tuple[list[int], int]:
    """(offsets of the headers from the first block on whose size fields are all octal digits, the offset
    where that chain stops). Touches nothing but those fields: the rest is checked column-wise."""
    heads: list[int] = []
    append, pos = heads.append, 0
    while (field := buf[pos + 124 : pos + 135]).isdigit():  # no sign, no space: the walk never goes back
        try:
            size = int(field, 8)
        except ValueError:  # an 8 or a 9
            break
        append(pos)
        pos += BLOCK + size + (-size % BLOCK)
    return heads, pos


def _scan_plain(buf, where: str) -> Members | None:
    """The members of a tar of plain headers only (regular files, names in the name field), or None when
    the tar has anything else — or is damaged — for :func:`_walk` to read or reject."""
    n = len(buf) // BLOCK
    heads, end = _chain(buf)
    if end + BLOCK > len(buf) or buf[end : end + BLOCK] != _ZERO_BLOCK:  # cut off, or a header to walk
        return None
    offsets = np.asarray(heads, np.int64)
    return _plain(np.frombuffer(buf, np.uint8, count=n * BLOCK).reshape(n, BLOCK)[offsets // BLOCK], offsets, where)


def _plain(h: np.ndarray, offsets: np.ndarray, where: str) -> Members | None:
    """The members whose header blocks ``h`` lie at ``offsets``, if every one is a plain header (else None)."""
    if not ((h[:, 135] == 0) | (h[:, 135] == 32)).all() or not np.isin(h[:, 156], _REGULAR_KINDS).all():
        return None
    if ((h[:, 257:262] == _USTAR).all(1) & (h[:, 345] != 0)).any():  # a name prefix
        return None
    sizes = (h[:, 124:135].astype(np.int64) - 48) @ _OCTAL
    for k in range(0, len(h), _SUM_CHUNK):
        _check_sums(h[k : k + _SUM_CHUNK], offsets[k : k + _SUM_CHUNK], where)
    return Members(_names(h[:, :100]), offsets + BLOCK, sizes)


def scan_file(path: str | os.PathLike, where: str | None = None) -> Members:
    """:func:`scan_columns` of the tar file at ``path``, its header blocks read with ``pread`` (a few KB
    at a time), the file never mapped: a mapped file's pages count as the reader's memory, and on this
    kernel reading one header maps the page-cache folio around it, so scanning a 251 MB tar's headers
    through a map held all 251 MB. Tars with anything but plain headers, and damaged ones, are read
    whole and walked (or rejected) as :func:`scan_columns` does."""
    where = str(path) if where is None else where
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        heads, blocks, win, at, pos = [], bytearray(), b"", 0, 0  # blocks: the headers, end to end
        while True:
            if not at <= pos <= at + len(win) - BLOCK:
                win, at = os.pread(fd, _WINDOW, pos), pos
            block = win[pos - at : pos - at + BLOCK]
            field = block[124:135]
            if not field.isdigit():  # no sign, no space, as :func:`_chain`
                break
            try:
                size = int(field, 8)
            except ValueError:
                break
            heads.append(pos)
            blocks += block
            pos += BLOCK + size + (-size % BLOCK)
        if block == _ZERO_BLOCK:
            offsets = np.asarray(heads, np.int64)
            fast = _plain(np.frombuffer(blocks, np.uint8).reshape(-1, BLOCK), offsets, where)
            if fast is not None:
                return fast
        return scan_columns(f.readall(), where)  # the rare tar: read whole, as the walk reads it


def _names(fields: np.ndarray) -> pa.Array:
    """The NUL-terminated names in ``fields`` (rows of 100 bytes) as Arrow strings."""
    nul = fields == 0
    length = np.where(nul.any(1), nul.argmax(1), fields.shape[1])
    data = fields[np.arange(fields.shape[1]) < length[:, None]]
    offsets = np.zeros(len(fields) + 1, np.int32)
    np.cumsum(length, out=offsets[1:])
    raw = pa.Array.from_buffers(pa.binary(), len(fields), [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])
    try:
        return raw.cast(pa.string())  # checks the bytes are UTF-8
    except pa.ArrowInvalid:
        return pa.array([b.decode("utf-8", "replace") for b in raw.to_pylist()], pa.string())


def _walk(buf, where: str) -> list[tuple[str, int, int]]:
    """:func:`scan`, header by header: every format it reads, every error it names."""
    total = len(buf)
    out: list[tuple[str, int, int]] = []
    heads: list[int] = []
    long_name: bytes | None = None
    pos = 0
    while True:
        if pos + BLOCK > total:
            raise tarfile.ReadError(f"{where}: cut off at byte {pos} (no end-of-archive block)")
        h = buf[pos : pos + BLOCK]
        if h == _ZERO_BLOCK:
            break
        try:
            size = int(h[124:135], 8) if h[135] in _END else _octal(h[124:136])  # 11 digits and a NUL, mostly
        except ValueError:
            try:
                size = _octal(h[124:136])
            except ValueError:
                raise tarfile.ReadError(f"{where}: corrupt tar header at byte {pos}") from None
        if size < 0:  # int() takes a sign; a negative size would walk backwards forever
            raise tarfile.ReadError(f"{where}: corrupt tar header at byte {pos}")
        heads.append(pos)
        data = pos + BLOCK
        if data + size > total:
            raise tarfile.ReadError(f"{where}: cut off inside the member at byte {pos}")
        kind = h[156]
        if kind in _NEXT_NAME:
            raw = buf[data : data + size]
            if kind == ord("L"):
                long_name = raw.rstrip(b"\0")
            else:
                paths = [r[5:].rstrip(b"\n") for r in _pax(raw, where, pos) if r.startswith(b"path=")]
                long_name = paths[-1] if paths else long_name
        elif kind not in _META:
            if kind in _REGULAR:
                name = long_name
                if name is None:
                    name = h[:100].split(b"\0", 1)[0]
                    if h[345] and h[257:262] == b"ustar":
                        name = h[345:500].split(b"\0", 1)[0] + b"/" + name
                out.append((name.decode("utf-8", "replace"), data, size))
            long_name = None
        pos = data + size + (-size % BLOCK)
    if heads:
        n_blocks = len(buf) // BLOCK
        rows = np.frombuffer(buf, np.uint8, count=n_blocks * BLOCK).reshape(n_blocks, BLOCK)
        offsets = np.asarray(heads, np.int64)
        for k in range(0, len(offsets), _SUM_CHUNK):
            at = offsets[k : k + _SUM_CHUNK]
            _check_sums(rows[at // BLOCK], at, where)
    return out


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256, for sizes past 8 GiB
        return int.from_bytes(field[1:], "big")
    return int(field.strip(b" \0") or b"0", 8)


def _check_sums(h: np.ndarray, at: np.ndarray, where: str) -> None:
    """Verify the checksums of the header blocks ``h`` (rows of 512 bytes) found at byte offsets ``at``."""
    field = h[:, 148:156]
    got = h.sum(1, dtype=np.uint32).astype(np.int64) - field.sum(1, dtype=np.int64) + 8 * 32  # the field as spaces
    # The stored checksum: octal digits, then NUL or space (leading spaces allowed).
    digit = (field >= ord("0")) & (field <= ord("7"))
    stored = np.zeros(len(at), np.int64)
    for c in range(8):
        stored = np.where(digit[:, c], stored * 8 + (field[:, c].astype(np.int64) - ord("0")), stored)
    for i in np.flatnonzero(got != stored):
        block = h[i].tobytes()
        if _stored_sum(block) not in (sum(block[:148]) + sum(block[156:]) + 256, _signed_sum(block)):
            raise tarfile.ReadError(f"{where}: tar header checksum mismatch at byte {at[i]}")


def _stored_sum(block: bytes) -> int | None:
    try:
        return _octal(block[148:156])
    except ValueError:
        return None


def _signed_sum(block: bytes) -> int:
    """The checksum as some old tars compute it, over signed bytes (``tarfile`` accepts both)."""
    return sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 256


def _pax(data: bytes, where: str, pos: int) -> list[bytes]:
    """The ``key=value`` records of a pax extended header (``<len> key=value\\n`` each)."""
    out, i = [], 0
    while i < len(data):
        sp = data.find(b" ", i)
        if sp <= i or not data[i:sp].isdigit():
            raise tarfile.ReadError(f"{where}: corrupt pax header at byte {pos}")
        n = int(data[i:sp])
        if n <= sp - i or i + n > len(data):
            raise tarfile.ReadError(f"{where}: corrupt pax header at byte {pos}")
        out.append(data[sp + 1 : i + n])
        i += n
    return out


_ZERO_BLOCK = bytes(BLOCK)
