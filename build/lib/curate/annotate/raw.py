"""The raw layout the annotate stage reads, and a plain img2dataset call that writes it.

``DIR/raw/`` as img2dataset writes it with ``output_format="webdataset"``: per shard ``NNNNN.tar``
(members ``<key>.<image ext>``, ``<key>.txt``, ``<key>.json``), ``NNNNN.parquet`` (one row per URL of
the shard: key, url, caption, status, error_message, width, height, original_width, original_height,
and the saved extra columns, ``uid`` among them) and ``NNNNN_stats.json``. Rows with
``status == "success"`` (``download_status``, where ``tiers download`` added it) have an image in
the tar. We rely on nothing else: the image member's extension is not trusted to name its format
(with re-encoding disabled img2dataset stores a PNG as ``<key>.jpg``), and member names are only
compared with the keys the parquet lists, never used as paths.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import schema, storage
from curate.core.errors import InputError
from curate.core.integrity import DamagedFile
from curate.core.tarscan import scan_file
from curate.core.tarstream import Members, coalesce

IMAGE = "image"  # the encoded bytes, in the sample batches handed to the annotator
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"})
SUCCESS = "success"
SHARD_STEM = re.compile(r"^\d+$")

# What the annotator receives per sample: identity, location, img2dataset's original size, bytes.
SAMPLE_SCHEMA = pa.schema(
    [
        pa.field(schema.UID, pa.string()),
        pa.field(schema.URL, pa.string()),
        pa.field(schema.CAPTION, pa.string()),
        pa.field(schema.SHARD, pa.string()),
        pa.field(schema.KEY, pa.string()),
        pa.field(schema.ORIGINAL_WIDTH, pa.int32()),
        pa.field(schema.ORIGINAL_HEIGHT, pa.int32()),
        pa.field(IMAGE, pa.binary()),
    ]
)


def list_shards(raw_dir: str | os.PathLike) -> list[str]:
    """Shard names (``"00000"``, ...) that have both a tar and a parquet, in order."""
    names = set(storage.listdir(raw_dir))
    if not names and not storage.isdir(raw_dir):
        raise InputError("no raw shards here (expected DIR/raw/ from `tiers download`)", path=os.fspath(raw_dir))
    stems = [n[: -len(".parquet")] for n in names if n.endswith(".parquet")]
    return sorted(s for s in stems if SHARD_STEM.match(s) and f"{s}.tar" in names)


def read_successes(raw_dir: str | os.PathLike, shard: str) -> pa.Table:
    """The shard's successfully downloaded rows: uid, url, caption, key, original size."""
    path = storage.join(raw_dir, f"{shard}.parquet")
    try:
        table = storage.read_parquet(path)  # page checksums: a flipped byte is an error, not a wrong width
    except DamagedFile:
        raise
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"unreadable raw shard parquet: {e}", path=str(path)) from None
    # tiers download adds download_status (success | failed); plain img2dataset has only its status.
    status = schema.DOWNLOAD_STATUS if schema.DOWNLOAD_STATUS in table.column_names else "status"
    missing = [c for c in (schema.UID, schema.URL, schema.KEY, status) if c not in table.column_names]
    if missing:
        hint = " (save the input's uid: save_additional_columns=['uid'])" if schema.UID in missing else ""
        raise InputError(f"raw shard parquet lacks column(s) {', '.join(missing)}{hint}", path=str(path))
    table = table.filter(pc.equal(table.column(status), SUCCESS))

    def col(name: str, typ: pa.DataType) -> pa.ChunkedArray | pa.Array:
        if name in table.column_names:
            return table.column(name).cast(typ)
        return pa.nulls(table.num_rows, typ)

    return pa.table(
        {
            schema.UID: col(schema.UID, pa.string()),
            schema.URL: col(schema.URL, pa.string()),
            schema.CAPTION: col(schema.CAPTION, pa.string()),
            schema.KEY: col(schema.KEY, pa.string()),
            schema.ORIGINAL_WIDTH: col(schema.ORIGINAL_WIDTH, pa.int32()),
            schema.ORIGINAL_HEIGHT: col(schema.ORIGINAL_HEIGHT, pa.int32()),
        }
    )


def iter_samples(
    raw_dir: str | os.PathLike,
    shard: str,
    batch_size: int = 512,
    tar_path: str | os.PathLike | None = None,
    on_members: Callable[[Members], None] | None = None,
) -> Iterator[pa.Table]:
    """Batches of ``SAMPLE_SCHEMA`` rows for every success of ``shard``, reading its tar once.

    Batches follow the tar's order; a success whose image is not in the tar comes last with a null
    image (the annotator records it as ``missing_in_tar``). A tar that cannot be read raises
    :class:`InputError` naming it. ``on_members`` gets the tar's members once its headers are read (a
    shard without successes is not read).
    """
    raw_dir = storage.normalise(raw_dir)
    ok = read_successes(raw_dir, shard)
    index = {k: i for i, k in enumerate(ok.column(schema.KEY).to_pylist())}
    seen: set[str] = set()
    order: list[int] = []

    def batch(idx: list[int], data: list) -> pa.Table:
        t = ok.take(pa.array(idx, pa.int64()))
        t = t.append_column(schema.SHARD, pa.array([shard] * len(idx), pa.string()))
        return t.append_column(IMAGE, _binary(data)).select(SAMPLE_SCHEMA.names)

    def want(name: str) -> bool:
        stem, dot, ext = name.rsplit("/", 1)[-1].rpartition(".")
        return bool(dot) and ext.lower() in IMAGE_EXTS and stem in index and stem not in seen

    path = storage.join(raw_dir, f"{shard}.tar")
    if ok.num_rows:
        tar = str(tar_path or path)
        try:
            # The header blocks first, then a batch of images at a time: mapping the tar held all of it
            # (every image of the unit) as this worker's memory, for the whole unit.
            picked: list[tuple[int, int]] = []
            members = scan_file(tar, where=str(path))
            if on_members is not None:
                on_members(members)
            for name, offset, size in members.rows():
                if want(name):
                    stem = name.rsplit("/", 1)[-1].rpartition(".")[0]
                    picked.append((offset, size))
                    order.append(index[stem])
                    seen.add(stem)
            with open(tar, "rb", buffering=0) as f:
                reader = _Reader(f.fileno())
                for k in range(0, len(picked), batch_size):
                    images = reader.read(picked[k : k + batch_size])
                    if len(images) < batch_size:  # the last few go out with the missing ones
                        order, rest = order[k:], images
                        break
                    yield batch(order[k : k + batch_size], images)
                else:
                    order, rest = [], []
        except (OSError, tarfile.TarError) as e:
            raise InputError(f"raw shard tar unreadable: {e}", path=str(path)) from None
    else:
        rest = []
    missing = [i for k, i in index.items() if k not in seen]
    order += missing
    rest += [None] * len(missing)
    for k in range(0, len(order), batch_size):
        yield batch(order[k : k + batch_size], rest[k : k + batch_size])


def _binary(images: list) -> pa.Array:
    """The batch's images (views into the reader's buffer, or None) as a binary column, handed to Arrow as
    ``bytes``: pyarrow (26.0) keeps a buffer export of every memoryview ``pa.array`` converts, so each view,
    and the read buffer under it, stayed alive for good. An annotate actor grew ~9.5 MB a unit of 10,000
    images that way (431 -> 739 MB of anonymous memory by the end of a 1M-URL build)."""
    return pa.array([None if v is None else bytes(v) for v in images], pa.binary())


GAP = 1 << 16  # members this close to the previous one's end are read with it (a sample's .txt and .json)
MAX_READ = 64 << 20  # bytes one read takes at most (a larger member alone)


class _Reader:
    """The bytes of a batch of members, read into one buffer reused batch after batch (a fresh buffer each
    batch took a page fault per 4 kB of it: reading 256 px images ran at half the mapped tar's speed)."""

    def __init__(self, fd: int):
        self.fd, self.buf = fd, bytearray()

    def read(self, members: list[tuple[int, int]]) -> list[memoryview]:
        """``members`` ((offset, size)), neighbours read together (:func:`coalesce`): views into the
        buffer, valid until the next call."""
        offsets, sizes = (np.array([m[k] for m in members], np.int64) for k in (0, 1))
        blocks, block_of = coalesce(offsets, sizes, GAP, MAX_READ)
        at = np.cumsum([0] + [n for _, n in blocks]).tolist()  # each block's place in the buffer
        if len(self.buf) < at[-1]:
            self.buf = bytearray(at[-1])
        view = memoryview(self.buf)
        for (lo, n), a in zip(blocks, at[:-1], strict=True):
            got = os.preadv(self.fd, [view[a : a + n]], lo)
            if got < n:
                raise tarfile.ReadError(f"cut off at byte {lo + got} (a member ends at {lo + n})")
        return [
            view[at[b] + o - blocks[b][0] : at[b] + o - blocks[b][0] + n]
            for (o, n), b in zip(members, block_of.tolist(), strict=True)
        ]


def download_plain(
    url_list: str | os.PathLike,
    build_dir: str | os.PathLike,
    samples_per_shard: int = 1000,
    threads: int = 16,
    timeout: int = 2,
) -> Path:
    """Write ``build_dir/raw/`` with plain img2dataset, keeping the served bytes (no resizing or
    re-encoding, so hostile bytes reach the annotator as they were served).

    For tests and benchmarks of this stage only; ``tiers download`` is the real downloader. The URL
    list must be a parquet with url, caption and uid columns, pointing only at hosts you trust.
    """
    from curate.core.runtime import quiet_environment

    quiet_environment()
    from img2dataset import download

    raw = Path(build_dir) / "raw"
    raw.mkdir(parents=True, exist_ok=True)  # img2dataset creates only the last level
    download(
        url_list=str(url_list),
        output_folder=str(raw),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=["uid"],
        output_format="webdataset",
        processes_count=1,
        thread_count=threads,
        timeout=timeout,
        retries=0,
        number_sample_per_shard=samples_per_shard,
        resize_mode="no",
        disable_all_reencoding=True,
        enable_wandb=False,
    )
    return raw
