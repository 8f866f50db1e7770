"""Copy tar members between shards without decoding them, and without trusting their names.

:func:`index_tar` reads only the headers of a raw shard and returns where each member's bytes lie;
:class:`TarWriter` writes ustar members from byte strings with fixed metadata (mtime 0, uid 0, mode
0644), so the same members in the same order always give the same bytes. Member names read from a
tar are only ever compared with names we expect; a name is never used as a path, and the names we
write are built from validated uids and a whitelist of extensions.
"""

from __future__ import annotations

import mmap
import os
import re
import tarfile

import numpy as np

BLOCK = 512
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
    for name in names:
        _check_name(name)
    sizes = np.asarray(sizes, np.int64).reshape(-1)
    if len(sizes) != len(names):
        raise ValueError(f"{len(names)} names but {len(sizes)} sizes")
    if len(sizes) and (sizes.min() < 0 or sizes.max() >= 8**11):
        i = int(np.flatnonzero((sizes < 0) | (sizes >= 8**11))[0])
        raise ValueError(f"member {names[i]!r} has a size ustar cannot hold ({sizes[i]} bytes)")
    out = np.tile(_TEMPLATE_ROW, (len(names), 1))
    raw = b"".join(name.encode("ascii").ljust(100, b"\0") for name in names)
    out[:, :100] = np.frombuffer(raw, np.uint8).reshape(-1, 100)
    out[:, 124:135] = ord("0") + ((sizes[:, None] >> _SIZE_SHIFTS) & 7)
    out[:, 135] = 0
    chk = out.sum(1, dtype=np.int64)
    out[:, 148:154] = ord("0") + ((chk[:, None] >> _SUM_SHIFTS) & 7)
    out[:, 154] = 0
    out[:, 155] = ord(" ")
    return out


class TarWriter:
    """Write ustar members to a file descriptor; :meth:`close` writes the end-of-archive blocks.

    Headers, data and padding are queued as separate buffers and written with ``writev``, so member
    data goes from the caller's buffer to the kernel without another copy in Python.
    """

    _MAX_IOV = 1000  # below IOV_MAX (1024 on Linux)

    def __init__(self, fd: int):
        self.fd = fd
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

    def add_many(self, names: list[str], datas: list[bytes | memoryview]) -> None:
        """Like :meth:`add` for each pair, with every header built in one vectorised pass."""
        sizes = [len(d) for d in datas]
        blocks = memoryview(headers(names, sizes).tobytes())
        pads = [-n % BLOCK for n in sizes]
        self._flush()
        step = (self._MAX_IOV - 3) // 3
        for start in range(0, len(datas), step):
            end = min(start + step, len(datas))
            iov: list[bytes | memoryview] = []
            for i in range(start, end):
                iov += (blocks[i * BLOCK : (i + 1) * BLOCK], datas[i], _PADS[pads[i]])
            self._iov = iov
            self._queued = (end - start) * BLOCK + sum(sizes[start:end]) + sum(pads[start:end])
            self.bytes += self._queued
            self._flush()

    def _flush(self) -> None:
        iov, want = self._iov, self._queued
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
_PADS = [memoryview(_ZEROS)[:k] for k in range(BLOCK)]


def index_tar(path: str | os.PathLike) -> dict[str, dict[str, tuple[int, int]]]:
    """``{stem: {ext: (offset, size)}}`` for the regular-file members of an uncompressed tar.

    Maps the file and reads its header blocks only (:func:`scan`); a later member of the same name
    wins, as on extraction. A truncated or corrupt tar raises ``tarfile.TarError`` naming the file.
    """
    with MappedTar(path) as tar:
        return tar.index()


class MappedTar:
    """A tar file mapped read-only: its members (:func:`scan`), and zero-copy views of their bytes.

    Views (:meth:`view`) point into the page cache, so ``os.writev`` copies member data straight from
    one file's cache to another's, once. Close only after every view has been dropped. The file must
    not shrink while it is mapped (reading past its new end would kill the process with SIGBUS): we
    only map raw shards, which are written once (under a temporary name, then renamed) and never
    truncated in place.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise tarfile.ReadError(f"{path}: empty file, not a tar")
            self._map = mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED | _POPULATE, mmap.PROT_READ)
        self._view = memoryview(self._map)
        try:
            self.members = scan(self._map, self.path)
        except BaseException:
            self.close()
            raise

    def index(self) -> dict[str, dict[str, tuple[int, int]]]:
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for name, offset, size in self.members:
            stem, dot, ext = name.rpartition("/")[2].rpartition(".")
            if dot:
                out.setdefault(stem, {})[ext.lower()] = (offset, size)
        return out

    def view(self, offset: int, size: int) -> memoryview:
        return self._view[offset : offset + size]

    def read(self, offset: int, size: int) -> bytes:
        return self._map[offset : offset + size]

    def close(self) -> None:
        self._view.release()
        try:
            self._map.close()
        except BufferError:  # views still alive (an error's traceback holds some): unmapped when they go
            pass

    def __enter__(self) -> MappedTar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Map every page up front, in one pass, instead of taking a page fault per 64 KiB on first touch.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_REGULAR = frozenset(b"0\x007")  # regular file ('7': contiguous file, read as one)
_NEXT_NAME = frozenset(b"Lx")  # GNU long name, pax extended header: both describe the next member
_META = frozenset(b"Kg")  # GNU long link name, pax global header: nothing we use
_SUM_CHUNK = 1 << 16  # headers checked per vectorised pass
_END = frozenset(b" \0")


def scan(buf, where: str = "tar") -> list[tuple[str, int, int]]:
    """``(name, data offset, size)`` of the regular-file members of an uncompressed tar, in file order.

    ``buf`` is the whole archive as a sliceable bytes-like object (``bytes``, an ``mmap``): only header
    blocks are read, member data is never touched. Reads ustar (with its name prefix), GNU long names,
    GNU base-256 sizes and pax ``path`` records; skips directories, links and devices. Every header's
    checksum is verified (in one vectorised pass at the end) and the archive must end with its
    end-of-archive block; anything else raises ``tarfile.TarError`` naming ``where`` and the byte.
    Names are returned as text to compare with expected names, never to be used as paths.
    """
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
        _check_sums(buf, heads, where)
    return out


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256, for sizes past 8 GiB
        return int.from_bytes(field[1:], "big")
    return int(field.strip(b" \0") or b"0", 8)


def _check_sums(buf, heads: list[int], where: str) -> None:
    # Header blocks are 512-byte aligned: gather them as rows of 64 machine words and sum each row's
    # bytes two at a time in 16-bit lanes (at most 64 * 510 per lane, so lanes never carry over).
    n_blocks = len(buf) // BLOCK
    rows = np.frombuffer(buf, np.uint64, count=n_blocks * (BLOCK // 8)).reshape(n_blocks, BLOCK // 8)
    offsets = np.asarray(heads, np.int64)
    lo = np.uint64(0x00FF00FF00FF00FF)
    for k in range(0, len(offsets), _SUM_CHUNK):
        at = offsets[k : k + _SUM_CHUNK]
        w = rows[at // BLOCK]
        lanes = ((w & lo) + ((w >> np.uint64(8)) & lo)).sum(1, dtype=np.uint64)
        total = sum(((lanes >> np.uint64(s)) & np.uint64(0xFFFF)).astype(np.int64) for s in (0, 16, 32, 48))
        field = w.view(np.uint8).reshape(len(at), BLOCK)[:, 148:156]
        got = total - field.sum(1, dtype=np.int64) + 8 * 32  # the checksum field itself counts as eight spaces
        # The stored checksum: octal digits, then NUL or space (leading spaces allowed).
        digit = (field >= ord("0")) & (field <= ord("7"))
        stored = np.zeros(len(at), np.int64)
        for c in range(8):
            stored = np.where(digit[:, c], stored * 8 + (field[:, c].astype(np.int64) - ord("0")), stored)
        for i in np.flatnonzero(got != stored):
            block = buf[at[i] : at[i] + BLOCK]
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
