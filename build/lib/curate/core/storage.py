"""Every path is a URL: plain paths and ``file://`` on local disk, ``s3://``, ``gs://``, ``memory://`` through fsspec.

Thin helpers over fsspec (s3fs, gcsfs), not a storage layer of our own: a URL becomes a filesystem and a
path (:func:`filesystem`), and the few things every stage does are one call each: join, exists, list,
read whole or in ranges, write, and the two ways a unit commits an output:

- on local disk, under a temporary sibling name renamed into place (:func:`atomic_path`): readers never
  see half a file, and the fast paths stay (``pread`` + ``writev`` in the shard writer, ``pread`` in the trainer);
- on an object store one PUT (or a completed multipart upload) is atomic, and a unit writes its outputs
  first and its marker last (:mod:`curate.core.runner`): an object without its marker is not finished.

Credentials and endpoints come the standard way (environment, profiles, ``AWS_ENDPOINT_URL``, roles); the
rest goes in the build config's ``[storage.<protocol>]`` tables (:func:`configure`), which travel with
every unit the runner sends to a Ray worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from curate.core.errors import InputError

_OPTIONS: dict[str, dict] = {}
ENV = "CLIP_TIERS_STORAGE"  # the options as JSON, for processes this one starts


def configure(options: dict[str, dict] | None) -> None:
    """Set per-protocol fsspec options (``{"s3": {"endpoint_url": ...}}``) for this process and its children."""
    _OPTIONS.clear()
    for proto, opts in (options or {}).items():
        if not isinstance(opts, dict):
            raise InputError(f"[storage] {proto} must be a table of options, e.g. [storage.{proto}]")
        _OPTIONS[proto] = dict(opts)
    if _OPTIONS:
        os.environ[ENV] = json.dumps(_OPTIONS, sort_keys=True)
    else:
        os.environ.pop(ENV, None)
    _cache.clear()


def options() -> dict[str, dict]:
    """The options in force (set here, or inherited from the process that started this one)."""
    if not _OPTIONS and os.environ.get(ENV):
        _OPTIONS.update(json.loads(os.environ[ENV]))
    return {k: dict(v) for k, v in _OPTIONS.items()}


def protocol(url: str | os.PathLike) -> str:
    s = os.fspath(url)
    return s.split("://", 1)[0].lower() if "://" in s else "file"


def is_local(url: str | os.PathLike) -> bool:
    return protocol(url) in ("file", "local")


def local_path(url: str | os.PathLike) -> Path:
    """The local path behind a plain path or ``file://`` URL."""
    s = os.fspath(url)
    return Path(s.split("://", 1)[1] if "://" in s else s)


def normalise(url: str | os.PathLike) -> str:
    """A plain string: local paths as given (``file://`` stripped), remote URLs without a trailing slash."""
    if is_local(url):
        return os.fspath(local_path(url))
    return os.fspath(url).rstrip("/")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it over ``final`` (atomic on one filesystem).

    On an exception the temporary file is removed and ``final`` is left as it was. Local paths only:
    :func:`output` is the same for any URL.
    """
    import uuid

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


_cache: dict[str, object] = {}
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def filesystem(url: str | os.PathLike):
    """``(fsspec filesystem, path inside it)`` for ``url``, with the configured options of its protocol."""
    import fsspec

    proto = protocol(url)
    if proto in ("file", "local"):
        return fsspec.filesystem("file"), os.fspath(local_path(url).absolute())
    key = f"{proto}:{os.getpid()}"  # a forked child (a loader worker) must not share its parent's client
    fs = _cache.get(key)
    if fs is None:
        # Workers on other processes and nodes write what this one lists: a cached listing would hide it.
        opts = {**({"use_listings_cache": False} if proto in _OBJECT_STORES else {}), **options().get(proto, {})}
        try:
            fs = _cache[key] = fsspec.filesystem(proto, **opts)
        except (ImportError, ValueError) as e:
            raise InputError(f"cannot open {proto}:// URLs ({e})", path=os.fspath(url)) from None
    return fs, fs._strip_protocol(os.fspath(url))


def join(base: str | os.PathLike, *parts: str) -> str:
    if is_local(base):
        return os.path.join(os.fspath(local_path(base)), *parts)
    return "/".join([normalise(base), *(p.strip("/") for p in parts)])


def name(url: str | os.PathLike) -> str:
    return normalise(url).rstrip("/").rsplit("/", 1)[-1]


def parent(url: str | os.PathLike) -> str:
    if is_local(url):
        return os.path.dirname(os.fspath(local_path(url)))
    return normalise(url).rsplit("/", 1)[0]


def exists(url: str | os.PathLike) -> bool:
    if is_local(url):
        return local_path(url).exists()
    fs, path = filesystem(url)
    return fs.exists(path)


def isfile(url: str | os.PathLike) -> bool:
    if is_local(url):
        return local_path(url).is_file()
    fs, path = filesystem(url)
    return fs.isfile(path)


def isdir(url: str | os.PathLike) -> bool:
    if is_local(url):
        return local_path(url).is_dir()
    fs, path = filesystem(url)
    return fs.isdir(path)


def listdir(url: str | os.PathLike) -> list[str]:
    """Names (not paths) of what ``url`` holds, sorted; [] when it does not exist."""
    if is_local(url):
        p = local_path(url)
        return sorted(x.name for x in p.iterdir()) if p.is_dir() else []
    fs, path = filesystem(url)
    try:
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False, refresh=True))
    except FileNotFoundError:
        return []


def glob(url: str | os.PathLike, pattern: str) -> list[str]:
    """URLs under ``url`` matching ``pattern`` (relative, fsspec glob syntax), sorted."""
    if is_local(url):
        return sorted(os.fspath(p) for p in local_path(url).glob(pattern))
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    proto = protocol(url)
    return sorted(f"{proto}://{p}" for p in fs.glob(f"{path}/{pattern}"))


def stamp(url: str | os.PathLike) -> list:
    """``[size, version]`` of a file: what changes when it is rewritten (mtime locally, ETag or mtime remotely)."""
    if is_local(url):
        st = local_path(url).stat()
        return [st.st_size, st.st_mtime_ns]
    fs, path = filesystem(url)
    info = fs.info(path)
    version = (
        info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or info.get("created")
    )
    return [int(info.get("size") or 0), str(version)]


def size(url: str | os.PathLike) -> int:
    return stamp(url)[0]


def read_bytes(url: str | os.PathLike, start: int | None = None, end: int | None = None) -> bytes:
    """The file's bytes, or those in ``[start, end)`` (a ranged GET on object stores)."""
    if is_local(url):
        with open(local_path(url), "rb") as f:
            if start is None:
                return f.read()
            f.seek(start)
            return f.read(None if end is None else end - start)
    fs, path = filesystem(url)
    return fs.cat_file(path, start=start, end=end)


def read_ranges(url: str | os.PathLike, ranges: list[tuple[int, int]]) -> list[bytes]:
    """Many ``(offset, size)`` ranges of one file; object stores fetch them concurrently."""
    if is_local(url):
        fd = os.open(local_path(url), os.O_RDONLY)
        try:
            return [os.pread(fd, n, off) for off, n in ranges]
        finally:
            os.close(fd)
    fs, path = filesystem(url)
    return fs.cat_ranges([path] * len(ranges), [o for o, _ in ranges], [o + n for o, n in ranges])


def read_text(url: str | os.PathLike) -> str:
    return read_bytes(url).decode("utf-8")


def read_json(url: str | os.PathLike):
    return json.loads(read_bytes(url))


def write_bytes(url: str | os.PathLike, data: bytes) -> None:
    """Write a whole file: locally under a temporary name then renamed; remotely one atomic PUT."""
    if is_local(url):
        with atomic_path(local_path(url)) as tmp:
            tmp.write_bytes(data)
        return
    fs, path = filesystem(url)
    fs.pipe_file(path, data)


def write_text(url: str | os.PathLike, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def write_json(url: str | os.PathLike, data, indent: int | None = 2, sort_keys: bool = False) -> None:
    write_text(url, json.dumps(data, indent=indent, sort_keys=sort_keys, default=str) + "\n")


def read_parquet(url: str | os.PathLike, columns: list[str] | None = None, fix: str | None = None):
    """A table we wrote, its page checksums verified (:mod:`curate.core.integrity`): a flipped byte raises
    :class:`~curate.core.integrity.DamagedFile` naming the file and ``fix``, never a wrong value."""
    import pyarrow as pa

    from curate.core import integrity

    if is_local(url):
        return integrity.read_parquet(local_path(url), columns=columns, fix=fix)
    # One GET of the whole object: these tables are per-shard metadata, small, and read whole anyway.
    return integrity.read_parquet(pa.BufferReader(read_bytes(url)), columns=columns, fix=fix, name=normalise(url))


def write_parquet(table, url: str | os.PathLike) -> None:
    """Write a table with page checksums, committed as :func:`output` commits."""
    from curate.core import integrity

    with output(url) as tmp:
        integrity.write_parquet(table, tmp)


def remove(url: str | os.PathLike) -> None:
    """Remove one file if it is there."""
    if is_local(url):
        local_path(url).unlink(missing_ok=True)
        return
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def remove_tree(url: str | os.PathLike) -> None:
    if is_local(url):
        shutil.rmtree(local_path(url), ignore_errors=True)
        return
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def makedirs(url: str | os.PathLike) -> None:
    """Create a local directory; object stores have no directories (a prefix exists once it holds an object)."""
    if is_local(url):
        local_path(url).mkdir(parents=True, exist_ok=True)


def scratch_dir() -> str:
    """Where units stage files for object stores: ``CLIP_TIERS_SCRATCH``, else the system temporary dir."""
    return os.environ.get("CLIP_TIERS_SCRATCH") or tempfile.gettempdir()


@contextlib.contextmanager
def output(url: str | os.PathLike) -> Iterator[Path]:
    """A local path to write ``url``'s content to; committed when the block ends without an error.

    Locally a temporary sibling renamed into place; remotely a scratch file uploaded in one piece (s3fs
    uses a multipart upload for large files, completed only at the end), then removed.
    """
    if is_local(url):
        with atomic_path(local_path(url)) as tmp:
            yield tmp
        return
    fd, tmp = tempfile.mkstemp(prefix="clip-tiers-", suffix=".part", dir=scratch_dir())
    os.close(fd)
    try:
        yield Path(tmp)
        put(tmp, url)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def put(local: str | os.PathLike, url: str | os.PathLike) -> None:
    """Copy a finished local file to ``url`` (a rename when both are local)."""
    if is_local(url):
        dest = local_path(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, dest)
        return
    fs, path = filesystem(url)
    if protocol(url) not in ("s3", "s3a"):  # s3fs's options below
        fs.put_file(os.fspath(local), path)
        return
    # s3fs reads a file under two parts whole, and a larger one ten 50 MB parts at a time (its
    # max_concurrency): uploading a 320 MB samples.parquet took ~650 MB of the driver's memory.
    part = max(UPLOAD_PART, -(-os.path.getsize(local) // 10_000))  # S3 takes at most 10,000 parts
    fs.put_file(os.fspath(local), path, chunksize=part, max_concurrency=UPLOAD_PARTS_IN_FLIGHT)


UPLOAD_PART = 16 << 20  # bytes of a multipart upload's part (S3's least: 5 MiB)
UPLOAD_PARTS_IN_FLIGHT = 4  # parts read and sent at once: an upload holds about 64 MB


@contextlib.contextmanager
def local_copy(url: str | os.PathLike) -> Iterator[Path]:
    """A local path holding ``url``'s bytes for the block: the file itself when local, else a scratch copy."""
    if is_local(url):
        yield local_path(url)
        return
    fs, path = filesystem(url)
    fd, tmp = tempfile.mkstemp(prefix="clip-tiers-", suffix="." + name(url).rsplit(".", 1)[-1], dir=scratch_dir())
    os.close(fd)
    try:
        fs.get_file(path, tmp)
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
