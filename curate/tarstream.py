"""Copy tar members between shards without decoding them, and without trusting their names.

:func:`index_tar` reads only the headers of a raw shard and returns where each member's bytes lie;
:class:`TarWriter` writes ustar members from byte strings with fixed metadata (mtime 0, uid 0, mode
0644), so the same members in the same order always give the same bytes. Member names read from a
tar are only ever compared with names we expect; a name is never used as a path, and the names we
write are built from validated uids and a whitelist of extensions.
"""

from __future__ import annotations

import os
import re
import tarfile

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
_TEMPLATE_SUM = sum(_TEMPLATE)


def header(name: str, size: int) -> bytes:
    """A ustar header block for a regular file ``name`` of ``size`` bytes."""
    raw = name.encode("ascii")
    if not SAFE_NAME.match(name) or len(raw) > 100:
        raise ValueError(f"refusing unsafe tar member name {name!r}")
    if size >= 8**11:
        raise ValueError(f"member {name!r} too large for ustar ({size} bytes)")
    h = bytearray(_TEMPLATE)
    h[0 : len(raw)] = raw
    size_field = b"%011o\x00" % size
    h[124:136] = size_field
    chk = _TEMPLATE_SUM + sum(raw) + sum(size_field) - sum(_TEMPLATE[124:136])
    h[148:156] = b"%06o\x00 " % chk
    return bytes(h)


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


def index_tar(path: str | os.PathLike) -> dict[str, dict[str, tuple[int, int]]]:
    """``{stem: {ext: (offset, size)}}`` for the regular-file members of an uncompressed tar.

    Reads header blocks only (checksums verified), never extracts anything, and ignores members
    that are not regular files. Archives using GNU or pax extensions are handed to ``tarfile``.
    A truncated or corrupt tar raises ``tarfile.TarError``.
    """
    try:
        return _index_ustar(path)
    except _NeedsTarfile:
        pass
    out: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            if m.isreg():
                _add(out, m.name, m.offset_data, m.size)
    return out


class _NeedsTarfile(Exception):
    pass


def _add(out: dict, name: str, offset: int, size: int) -> None:
    base = name.rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if dot:
        out.setdefault(stem, {})[ext.lower()] = (offset, size)


def _index_ustar(path: str | os.PathLike) -> dict[str, dict[str, tuple[int, int]]]:
    out: dict[str, dict[str, tuple[int, int]]] = {}
    with open(path, "rb") as f:
        total = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + BLOCK <= total:
            f.seek(pos)
            h = f.read(BLOCK)
            if h == _ZERO_BLOCK:
                return out
            try:
                size = int(h[124:136].rstrip(b"\x00 ") or b"0", 8)
                chk = int(h[148:156].rstrip(b"\x00 ") or b"0", 8)
            except ValueError:
                raise _NeedsTarfile from None  # base-256 sizes and other extensions
            if chk != sum(h) - sum(h[148:156]) + 256:
                raise tarfile.TarError(f"{path}: bad header checksum at byte {pos}")
            kind = h[156:157]
            if kind in (b"L", b"K", b"x", b"g"):
                raise _NeedsTarfile
            data = pos + BLOCK
            if data + size > total:
                raise tarfile.TarError(f"{path}: truncated member at byte {pos}")
            if kind in (b"0", b"\x00"):
                name = h[0:100].split(b"\x00", 1)[0]
                prefix = h[345:500].split(b"\x00", 1)[0] if h[257:262] == b"ustar" else b""
                full = (prefix + b"/" + name if prefix else name).decode("utf-8", "replace")
                _add(out, full, data, size)
            pos = data + size + ((-size) % BLOCK)
    if pos < total or not out:
        raise tarfile.TarError(f"{path}: no end-of-archive marker (truncated?)")
    return out


_ZERO_BLOCK = bytes(BLOCK)


def read_at(fd: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(f"short read: wanted {size} bytes at {offset}, got {len(data)}")
    return data
