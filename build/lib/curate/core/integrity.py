"""Damage detection for what a build writes: file checksums recorded at write time, checked parquet.

- :func:`file_digest` / :func:`check_file`: a shard's size and XXH3-128 digest go into its
  completion marker when it is written; a rerun compares both and rewrites a shard that is
  truncated, grown or has flipped bytes, instead of trusting that it exists. XXH3 runs at memory
  speed (several GB/s), so verifying every band shard costs a fraction of writing them.
- :func:`write_parquet` / :func:`read_parquet`: every table we write carries parquet page checksums
  (CRC32 per data page), and every read verifies them, so flipped bytes in a stored table (a
  width of -16,777,115) are an error naming the file, never a value. :class:`DamagedFile` says
  which file and what fixes it; callers that can recompute the file catch it and do so.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from curate.core.errors import InputError

DIGEST = "xxh3_128"


class DamagedFile(InputError):
    """A stored file cannot be read back as it was written. ``fix``: the command that repairs it."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str | None = None):
        self.file = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"damaged ({problem})" + (f"; {fix}" if fix else ""), path=str(path))


def file_digest(path: str | os.PathLike) -> str:
    """XXH3-128 of the file's bytes, hex."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                h.update(m)
    return h.hexdigest()


def stamp(path: str | os.PathLike) -> dict:
    """What a completion marker records about an output file: its size and digest."""
    return {"size": os.path.getsize(path), DIGEST: file_digest(path)}


def check_file(path: str | os.PathLike, marker: dict | None, digest: bool = True) -> str | None:
    """None when ``path`` matches what ``marker`` recorded (size, and digest unless ``digest=False``);
    otherwise what is wrong. A marker without a size (an older build) checks existence only."""
    p = Path(path)
    if not p.is_file():
        return "missing"
    if not marker or "size" not in marker:
        return None
    size = p.stat().st_size
    if size != marker["size"]:
        return f"{size} bytes, {marker['size']} written"
    if digest and DIGEST in marker and file_digest(p) != marker[DIGEST]:
        return f"content differs from what was written ({DIGEST} mismatch)"
    return None


def write_parquet(table: pa.Table, where, **kw) -> None:
    """``pq.write_table`` with page checksums, for everything a build stores."""
    pq.write_table(table, where, write_page_checksum=True, **kw)


def read_parquet(path, columns=None, fix: str | None = None, name: str | None = None, **kw) -> pa.Table:
    """``pq.read_table`` verifying page checksums; :class:`DamagedFile` (naming ``fix``) if it cannot.
    ``path`` may be a buffer (a fetched object), then ``name`` is what errors call it."""
    try:
        return pq.read_table(path, columns=columns, page_checksum_verification=True, **kw)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DamagedFile(name or path, f"unreadable parquet: {first}", fix) from None
