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
from typing import BinaryIO

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
    """Write members to an open binary file; :meth:`close` writes the end-of-archive blocks."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.bytes = 0

    def add(self, name: str, data: bytes | memoryview) -> None:
        n = len(data)
        pad = (-n) % BLOCK
        self.f.write(header(name, n))
        self.f.write(data)
        if pad:
            self.f.write(b"\x00" * pad)
        self.bytes += BLOCK + n + pad

    def close(self) -> None:
        self.f.write(b"\x00" * (2 * BLOCK))
        self.bytes += 2 * BLOCK


def index_tar(path: str | os.PathLike) -> dict[str, dict[str, tuple[int, int]]]:
    """``{stem: {ext: (offset, size)}}`` for the regular-file members of an uncompressed tar.

    Members that are not regular files (links, devices, directories) are ignored; nothing is
    extracted. A truncated or corrupt tar raises ``tarfile.TarError`` naming nothing but itself.
    """
    out: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            if not m.isreg():
                continue
            base = m.name.rsplit("/", 1)[-1]
            stem, dot, ext = base.rpartition(".")
            if not dot:
                continue
            out.setdefault(stem, {})[ext.lower()] = (m.offset_data, m.size)
    return out


def read_at(fd: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(f"short read: wanted {size} bytes at {offset}, got {len(data)}")
    return data
