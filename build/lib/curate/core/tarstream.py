"""Copy tar members between shards without decoding them, and without trusting their names.

:func:`index_tar` reads only the headers of a raw shard and returns where each member's bytes lie;
:class:`TarWriter` writes ustar members from byte strings with fixed metadata (mtime 0, uid 0, mode
0644), so the same members in the same order always give the same bytes. Member names read from a
tar are only ever compared with names we expect; a name is never used as a path, and the names we
write are built from validated uids and a whitelist of extensions.
"""

from __future__ import annotations

import itertools
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core.tarscan import BLOCK, Members, scan, scan_columns, scan_file

__all__ = [
    "BLOCK",
    "IMAGE_EXTS",
    "Members",
    "TarWriter",
    "coalesce",
    "header",
    "headers",
    "index_members",
    "index_tar",
    "scan",
    "scan_columns",
]
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}\.(jpg|jpeg|png|webp|txt|json|cls)$")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")

# ustar header fields we never vary; name, size and checksum are filled in per member.
_TEMPLATE = bytearray(BLOCK)
_TEMPLATE[100:108] = b"0000644\x00"  # mode
_TEMPLATE[108:116] = b"0000000\x00"  # uid
_TEMPLATE[116:124] = b"0000000\x00"  # gid
_TEMPLATE[136:148] = b"00000000000\x00"  # mtime
_TEMPLATE[148:156] = b" " * 8  # checksum placeholder
_TEMPLATE[156:157] = b"0"  # regular file
_TEMPLATE[257:263] = b"ustar\x00"
_TEMPLATE[263:265] = b"00"
# The header around the name (0:100), size (124:136) and checksum (148:156), with its byte sum
# counting the checksum field as eight spaces, as the checksum is defined.
_MODE_IDS = bytes(_TEMPLATE[100:124])
_MTIME = bytes(_TEMPLATE[136:148])
_REST = bytes(_TEMPLATE[156:])
_FIXED_SUM = sum(_MODE_IDS) + sum(_MTIME) + 8 * 32 + sum(_REST)
_NAME_PAD = [bytes(100 - n) for n in range(101)]


def _check_name(name: str) -> None:
    if not SAFE_NAME.match(name) or len(name) > 100:
        raise ValueError(f"refusing unsafe tar member name {name!r}")


# SAFE_NAME for a whole list at once: one regex pass over the names joined by newlines (which no safe
# name holds), instead of one call per member; a list it refuses is checked name by name to say which.
_SAFE_LINES = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}\.(?:jpg|jpeg|png|webp|txt|json|cls)\n)*\Z")


def _check_names(names: list[str]) -> None:
    if names and (max(map(len, names)) > 100 or not _SAFE_LINES.match("\n".join(names) + "\n")):
        for name in names:
            _check_name(name)


def header(name: str, size: int) -> bytes:
    """A ustar header block for a regular file ``name`` of ``size`` bytes."""
    _check_name(name)
    if size >= 8**11:
        raise ValueError(f"member {name!r} too large for ustar ({size} bytes)")
    raw = name.encode("ascii")
    size_field = b"%011o\x00" % size
    chk = b"%06o\x00 " % (_FIXED_SUM + sum(raw) + sum(size_field))
    return b"".join((raw, _NAME_PAD[len(raw)], _MODE_IDS, size_field, _MTIME, chk, _REST))


_TEMPLATE_ROW = np.frombuffer(bytes(_TEMPLATE), np.uint8)  # checksum field still eight spaces
_SIZE_SHIFTS = 3 * np.arange(10, -1, -1)  # the 11 octal digits of a size, most significant first
_SUM_SHIFTS = 3 * np.arange(5, -1, -1)


def headers(names: list[str], sizes) -> np.ndarray:
    """``(n, 512)`` ustar header blocks for many members at once: row i is ``header(names[i], sizes[i])``."""
    _check_names(names)
    sizes = np.asarray(sizes, np.int64).reshape(-1)
    if len(sizes) != len(names):
        raise ValueError(f"{len(names)} names but {len(sizes)} sizes")
    if len(sizes) and (sizes.min() < 0 or sizes.max() >= 8**11):
        i = int(np.flatnonzero((sizes < 0) | (sizes >= 8**11))[0])
        raise ValueError(f"member {names[i]!r} has a size ustar cannot hold ({sizes[i]} bytes)")
    out = np.empty((len(names), BLOCK), np.uint8)
    out[:] = _TEMPLATE_ROW
    out[:, :100] = np.array(names, dtype="S100").view(np.uint8).reshape(-1, 100)  # ASCII, NUL-padded
    out[:, 124:135] = ord("0") + ((sizes[:, None] >> _SIZE_SHIFTS) & 7)
    out[:, 135] = 0
    chk = out.sum(1, dtype=np.uint32).astype(np.int64)
    out[:, 148:154] = ord("0") + ((chk[:, None] >> _SUM_SHIFTS) & 7)
    out[:, 154] = 0
    out[:, 155] = ord(" ")
    return out


class TarWriter:
    """Write ustar members to a file descriptor; :meth:`close` writes the end-of-archive blocks.

    Headers, data and padding are queued as buffers and written with ``writev``, so member data goes
    from the caller's buffer to the kernel without another copy in Python (:meth:`add_columns` joins
    the small ones first). ``digest``, when given, sees every byte written, in order: the file's
    digest without reading it back.
    """

    _MAX_IOV = 1000  # below IOV_MAX (1024 on Linux)

    def __init__(self, fd: int, digest=None):
        self.fd = fd
        self.digest = digest  # fed every byte written, in order (an ``xxhash.xxh3_128()``, say), or None
        self.bytes = 0
        self._iov: list[bytes | memoryview] = []
        self._queued = 0

    def add(self, name: str, data: bytes | memoryview) -> None:
        n = len(data)
        pad = (-n) % BLOCK
        self._iov.append(header(name, n))
        self._iov.append(data)
        if pad:
            self._iov.append(_ZEROS[:pad])
        self._queued += BLOCK + n + pad
        self.bytes += BLOCK + n + pad
        if self._queued >= 8 << 20 or len(self._iov) >= self._MAX_IOV - 3:
            self._flush()

    def add_columns(self, names: list[list[str]], datas: list) -> None:
        """Members in ``n`` rows of ``k`` columns, row by row: row i is ``names[j][i]`` with ``datas[j][i]``
        for each column j, written exactly as :meth:`add` would write them.

        A data column is a list of buffers (views of what was read: they go to ``writev`` as they are) or
        an Arrow binary array (small members: captions, metadata). Headers, paddings and Arrow columns
        between two list columns are joined column-wise into one buffer per row, so a row costs a
        ``writev`` entry per list column and one more, however many members it has.
        """
        n = len(names[0])
        if n == 0:
            return
        parts: list = []
        for column, data in zip(names, datas, strict=True):
            sizes = _lengths(data)
            parts += [_rows_of(headers(column, sizes)), data, _zero_rows(-sizes % BLOCK)]
        big = [i for i, p in enumerate(parts) if not isinstance(p, pa.Array)]
        if not big:
            iov_cols = [_views(_join(parts))]
        else:  # row i's stretch before its first list column is written after row i - 1's last one
            lead = _join(parts[: big[0]])
            nxt = pa.concat_arrays([lead.slice(1), pa.array([b""], pa.binary())])
            iov_cols = [parts[big[0]]]
            for a, b in itertools.pairwise(big):
                iov_cols += [_views(_join(parts[a + 1 : b])), parts[b]]
            iov_cols.append(_views(_join([*parts[big[-1] + 1 :], nxt])))
            self._iov.append(_views(lead)[0])
            self._queued += len(self._iov[-1])
            self.bytes += len(self._iov[-1])
        iov = [x for row in zip(*iov_cols, strict=True) for x in row]
        self._flush()
        for start in range(0, len(iov), self._MAX_IOV):
            self._iov = iov[start : start + self._MAX_IOV]
            self._queued = sum(map(len, self._iov))
            self.bytes += self._queued
            self._flush()

    def _flush(self) -> None:
        iov, want = self._iov, self._queued
        if self.digest is not None:
            for b in iov:
                self.digest.update(b)
        while want:
            done = os.writev(self.fd, iov)
            want -= done
            if want:  # a short write: drop what went out and go on with the rest
                while done >= len(iov[0]):
                    done -= len(iov[0])
                    iov = iov[1:]
                iov = [memoryview(iov[0])[done:], *iov[1:]]
        self._iov, self._queued = [], 0

    def close(self) -> None:
        self._iov.append(_ZEROS[: 2 * BLOCK])
        self._queued += 2 * BLOCK
        self.bytes += 2 * BLOCK
        self._flush()


_ZEROS = bytes(2 * BLOCK)


def _lengths(data) -> np.ndarray:
    if isinstance(data, pa.Array):
        return pc.binary_length(data).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.fromiter(map(len, data), np.int64, len(data))


def _offsets_array(lengths: np.ndarray, data: bytes | np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _rows_of(blocks: np.ndarray) -> pa.Array:
    """The rows of a C-contiguous ``(n, 512)`` array as an Arrow binary array."""
    return _offsets_array(np.full(len(blocks), BLOCK), blocks)


def _zero_rows(lengths: np.ndarray) -> pa.Array:
    return _offsets_array(lengths, bytes(int(lengths.sum())))


def _join(arrays: list[pa.Array]) -> pa.Array:
    """Row i of every array, concatenated (one buffer for all rows)."""
    return arrays[0] if len(arrays) == 1 else pc.binary_join_element_wise(*arrays, b"")


def _views(array: pa.Array) -> list[memoryview]:
    """Each value of a binary array as a view of its data buffer."""
    data = memoryview(array.buffers()[2] or b"")
    ends = np.frombuffer(array.buffers()[1], np.int32, len(array) + 1, array.offset * 4).tolist()
    return [data[a:b] for a, b in itertools.pairwise(ends)]


def coalesce(offsets: np.ndarray, sizes: np.ndarray, max_gap: int, max_block: int):
    """``(blocks, block_of)``: byte ranges ``(start, size)`` covering every ``(offset, size)``, merging
    neighbours less than ``max_gap`` apart into blocks of at most ``max_block`` (a larger item alone),
    and the block each item lies in: which members' bytes to read together.

    Blocks are cut greedily in offset order. Column-wise: a stretch of items each less than ``max_gap``
    past everything before it is one block unless it spans more than ``max_block``; only such stretches
    are cut item by item (a loop per item cost ~1 ms a 1,000-sample band shard, 30,000 members a raw tar).
    """
    offsets, sizes = np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)
    n = len(offsets)
    order = np.argsort(offsets, kind="stable")
    start, end = offsets[order], offsets[order] + sizes[order]
    new = np.ones(n, bool)
    new[1:] = start[1:] - np.maximum.accumulate(end)[:-1] >= max_gap  # a gap from every item before it
    first = np.flatnonzero(new)
    reach = np.maximum.reduceat(end, first) if n else np.zeros(0, np.int64)
    count, local = np.ones(len(first), np.int64), np.zeros(n, np.int64)
    cut = {}
    for g in np.flatnonzero(reach - start[first] > max_block).tolist():
        a, b = first[g], first[g + 1] if g + 1 < len(first) else n
        cut[g], local[a:b] = _greedy(start[a:b], end[a:b], max_gap, max_block)
        count[g] = len(cut[g])
    blocks = list(zip(start[first].tolist(), (reach - start[first]).tolist(), strict=True))
    for g in sorted(cut, reverse=True):
        blocks[g : g + 1] = cut[g]
    block_of = np.empty(n, np.int64)
    block_of[order] = (np.cumsum(count) - count)[np.cumsum(new) - 1] + local
    return blocks, block_of


def _greedy(start: np.ndarray, end: np.ndarray, max_gap: int, max_block: int) -> tuple[list, np.ndarray]:
    """:func:`coalesce`'s rule on items sorted by offset, each less than ``max_gap`` past everything before
    it: (blocks, each item's block). Where no item ends before the one ahead of it (a tar's members)
    a block runs to the last item that ends within ``max_block`` of its start: one search per block."""
    if (np.diff(end) >= 0).all():
        firsts, i = [], 0
        while i < len(start):
            firsts.append(i)
            i = max(i + 1, int(np.searchsorted(end, start[i] + max_block, "right")))
        lasts = [*firsts[1:], len(start)]
        spans = [(int(start[a]), int(end[b - 1] - start[a])) for a, b in zip(firsts, lasts, strict=True)]
        return spans, np.repeat(np.arange(len(firsts)), np.diff([*firsts, len(start)]))
    blocks: list[list[int]] = []
    block_of = np.zeros(len(start), np.int64)
    for i, (o, e) in enumerate(zip(start.tolist(), end.tolist(), strict=True)):
        if blocks and o - blocks[-1][1] < max_gap and max(blocks[-1][1], e) - blocks[-1][0] <= max_block:
            blocks[-1][1] = max(blocks[-1][1], e)
        else:
            blocks.append([o, e])
        block_of[i] = len(blocks) - 1
    return [(a, b - a) for a, b in blocks], block_of


def index_tar(path: str | os.PathLike) -> dict[str, dict[str, tuple[int, int]]]:
    """``{stem: {ext: (offset, size)}}`` for the regular-file members of an uncompressed tar.

    Reads its header blocks only (:func:`~curate.core.tarscan.scan_file`: read, never mapped); a later
    member of the same name wins, as on extraction. A truncated or corrupt tar raises
    ``tarfile.TarError`` naming the file.
    """
    return index_members(scan_file(path).rows())


def index_members(members: list[tuple[str, int, int]]) -> dict[str, dict[str, tuple[int, int]]]:
    """``{stem: {ext: (offset, size)}}`` of ``(name, offset, size)`` members (:func:`scan`), later ones winning."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for name, offset, size in members:
        stem, dot, ext = name.rpartition("/")[2].rpartition(".")
        if dot:
            out.setdefault(stem, {})[ext.lower()] = (offset, size)
    return out
