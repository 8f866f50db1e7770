"""DataComp's 128-bit uids: the one mapping from our uids to them, and the uid-list files both sides write.

DataComp names a sample by a 128-bit hash written as 32 lower-case hex digits (the ``uid`` column of
its metadata parquets), and a subset as a ``.npy`` of dtype ``u8,u8`` (a structured array of pairs of
unsigned 64-bit integers: the high and the low half of the uid), sorted, as its resharder expects.

The mapping (:func:`to_pairs`), the same in ``tiers export`` and ``tiers subset``:

- a uid of exactly 32 lower-case hex digits (a DataComp uid, kept as the input's own ``uid``) is that
  number: ``(int(uid[:16], 16), int(uid[16:], 16))``;
- any other uid (ours: 24 hex digits of url + caption; or a list's own token) is the BLAKE2b-128 digest
  of its UTF-8 bytes, read as a big-endian 128-bit number and split the same way.

So a DataComp pool downloaded with its own uids maps to exactly the uids DataComp publishes, and a
round trip (export, then subset) always selects the same samples.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.core.errors import InputError

DTYPE = np.dtype("u8,u8")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_NPY_MAGIC = b"\x93NUMPY"


def uid_to_int(uid: str) -> int:
    """The 128-bit number of one uid (see the module doc)."""
    if _HEX32.match(uid):
        return int(uid, 16)
    return int.from_bytes(hashlib.blake2b(uid.encode("utf-8"), digest_size=16).digest(), "big")


def to_pairs(uids: Iterable[str]) -> np.ndarray:
    """The ``u8,u8`` array of ``uids``, in their order."""
    nums = [uid_to_int(u) for u in uids]
    out = np.empty(len(nums), DTYPE)
    out["f0"] = np.array([n >> 64 for n in nums], dtype=np.uint64)
    out["f1"] = np.array([n & 0xFFFF_FFFF_FFFF_FFFF for n in nums], dtype=np.uint64)
    return out


def to_hex(pairs: np.ndarray) -> list[str]:
    """32-hex-digit strings, as DataComp's metadata writes its ``uid`` column."""
    return [f"{int(a):016x}{int(b):016x}" for a, b in zip(pairs["f0"], pairs["f1"], strict=True)]


def sort_pairs(pairs: np.ndarray) -> np.ndarray:
    """Lexicographic order over (high, low): what DataComp's resharder expects."""
    return pairs[np.lexsort((pairs["f1"], pairs["f0"]))]


def as_table(pairs: np.ndarray) -> pa.Table:
    """Pairs as two uint64 columns (``hi``, ``lo``), for joins."""
    return pa.table({"hi": pa.array(pairs["f0"]), "lo": pa.array(pairs["f1"])})


def write_npy(path: str | os.PathLike, pairs: np.ndarray) -> None:
    """Write ``pairs`` sorted, as a plain ``.npy`` (no pickle)."""
    from curate.core import units

    with units.atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        np.save(f, sort_pairs(np.ascontiguousarray(pairs, dtype=DTYPE)), allow_pickle=False)


def read_uid_file(path: str | os.PathLike) -> np.ndarray:
    """The uids a file names, as ``u8,u8`` pairs (duplicates kept).

    ``.npy`` (DataComp's subset format; also a ``(N, 2)`` uint64 array), a raw memory-mapped array of
    ``u8,u8`` (DataComp's other format: no header, 16 bytes a uid), a parquet with a ``uid`` column, or
    a text file of one uid per line. Parquet and text uids go through :func:`to_pairs`.
    """
    p = Path(path)
    try:
        head = p.open("rb").read(len(_NPY_MAGIC))
    except OSError as e:
        raise InputError(f"cannot read the uid file: {e.strerror or e}", path=str(p)) from None
    if head == _NPY_MAGIC:
        return _read_npy(p)
    if p.suffix == ".parquet" or head.startswith(b"PAR1"):
        return _read_parquet(p)
    if p.suffix in (".npy", ".bin", ".mmap", ".memmap"):
        size = p.stat().st_size
        if size % DTYPE.itemsize:
            raise InputError(f"not a .npy, and {size} bytes is not a whole number of u8,u8 uids", path=str(p))
        return np.fromfile(p, dtype=DTYPE)
    return _read_text(p)


def _read_npy(p: Path) -> np.ndarray:
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"unreadable .npy: {e}", path=str(p)) from None
    if arr.dtype.names and len(arr.dtype.names) == 2 and all(arr.dtype[i] == np.uint64 for i in range(2)):
        out = np.empty(arr.shape[0] if arr.ndim else 0, DTYPE)
        out["f0"], out["f1"] = arr[arr.dtype.names[0]], arr[arr.dtype.names[1]]
        return out
    if arr.ndim == 2 and arr.shape[1] == 2 and arr.dtype == np.uint64:
        out = np.empty(len(arr), DTYPE)
        out["f0"], out["f1"] = arr[:, 0], arr[:, 1]
        return out
    raise InputError(
        f"expected a DataComp uid array of dtype u8,u8, found dtype {arr.dtype} shape {arr.shape}", path=str(p)
    )


def _read_parquet(p: Path) -> np.ndarray:
    try:
        schema = pq.read_schema(p)
        if "uid" not in schema.names:
            raise InputError(f"no uid column; columns: {schema.names}", path=str(p))
        uids = pq.read_table(p, columns=["uid"]).column("uid")
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"unreadable parquet: {e}", path=str(p)) from None
    if uids.null_count:
        raise InputError(f"{uids.null_count} empty uid(s) in column uid", path=str(p))
    return to_pairs(str(u) for u in uids.to_pylist())


def _read_text(p: Path) -> np.ndarray:
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError("neither a .npy, a parquet nor a UTF-8 text list of uids", path=str(p)) from None
    return to_pairs(s for s in (line.strip() for line in lines) if s and not s.startswith("#"))
