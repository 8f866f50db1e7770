"""One raw shard, start to finish, in one process: the unit a Ray task runs.

:func:`run_shard` hands img2dataset's own ``Downloader.download_shard`` one input shard, with our
:class:`~curate.download.fetch.Fetcher` in place of its fetch function and a writer that reports
progress, all writing into a private attempt directory ``raw/_tmp/<shard>.<id>/``. Then it
completes the shard's parquet (normalised reasons, the shard name, a row for any sample
img2dataset lost), checks that it holds exactly the input shard's uids, moves tar, parquet and
stats into ``raw/`` and writes the completion marker last. A task killed anywhere before the
marker leaves nothing a rerun would mistake for a finished shard.

The raw parquet keeps img2dataset's columns (``status``, ``error_message``, sizes, hash) and adds
``download_status`` (success | failed), ``download_reason``, ``download_error`` and ``shard``.
Rows are sorted by key, that is in input order.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core import schema, scratch, storage, units
from curate.core.integrity import write_parquet
from curate.download import reasons
from curate.download.config import DownloadConfig
from curate.download.fetch import Fetcher
from curate.download.safety import AddressPolicy

OOM_SHARD_COUNT = 5  # shard names 00000..99999, as img2dataset names them by default
TMP = "_tmp"
INPUT = "_input"
PROGRESS = "progress"


def shard_name(shard_id: int) -> str:
    return f"{shard_id:0{OOM_SHARD_COUNT}d}"


def input_path(raw_dir: str | os.PathLike, shard: str) -> str:
    return storage.join(raw_dir, INPUT, f"{shard}.parquet")


def _writer_class():
    from img2dataset.writer import WebDatasetSampleWriter

    class ProgressWriter(WebDatasetSampleWriter):
        """img2dataset's webdataset writer that also leaves ``progress`` ("rows successes") for the driver."""

        def __init__(self, shard_id, output_folder, *args, **kwargs):
            super().__init__(shard_id, output_folder, *args, **kwargs)
            self._progress = Path(output_folder) / PROGRESS
            self._n = self._ok = 0
            self._last = 0.0

        def write(self, img_str, key, caption, meta):
            super().write(img_str, key, caption, meta)
            self._n += 1
            self._ok += img_str is not None
            now = time.monotonic()
            if now - self._last > 0.5:
                self._last = now
                self._report()

        def _report(self):
            tmp = self._progress.with_name(PROGRESS + ".tmp")
            tmp.write_text(f"{self._n} {self._ok}")
            os.replace(tmp, self._progress)

        def close(self):
            super().close()
            self._report()

    return ProgressWriter


@contextlib.contextmanager
def _fetch_with(fetcher: Fetcher):
    """Put our fetcher where img2dataset's shard loop looks its fetch function up."""
    import img2dataset.downloader as dl

    saved = dl.download_image_with_retry
    dl.download_image_with_retry = fetcher
    try:
        yield
    finally:
        dl.download_image_with_retry = saved


def _downloader(cfg: DownloadConfig, out_dir: str, column_list: list[str]):
    from curate.core.runtime import quiet_environment

    quiet_environment()
    from img2dataset.downloader import Downloader
    from img2dataset.resizer import Resizer

    resizer = Resizer(
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_quality=cfg.encode_quality,
        encode_format=cfg.encode_format,
        min_image_size=cfg.min_image_size,
        max_image_area=cfg.max_pixels,
        max_aspect_ratio=cfg.max_aspect_ratio,
    )
    return Downloader(
        sample_writer_class=_writer_class(),
        resizer=resizer,
        thread_count=cfg.threads,
        save_caption=True,
        extract_exif=cfg.extract_exif,
        output_folder=out_dir,
        column_list=column_list,
        timeout=cfg.timeout,
        number_sample_per_shard=cfg.samples_per_shard,
        oom_shard_count=OOM_SHARD_COUNT,
        compute_hash=cfg.compute_hash,
        verify_hash_type=None,
        encode_format=cfg.encode_format,
        retries=cfg.retries,
        user_agent_token=cfg.user_agent_token,
        disallowed_header_directives=list(cfg.disallowed_header_directives) or None,
    )


def file_sizes(raw: str, shard: str) -> dict:
    """What a shard's marker records of its files, so a rerun can tell a damaged shard from a finished one."""
    return {ext: {"size": storage.size(storage.join(raw, f"{shard}.{ext}"))} for ext in ("tar", "parquet")}


def complete_parquet(table: pa.Table, inputs: pa.Table, shard_id: int, samples_per_shard: int) -> pa.Table:
    """img2dataset's shard parquet plus our columns, one row per input row, sorted by key.

    Raises RuntimeError when the table holds a uid the input shard does not (that is a bug).
    """
    from img2dataset.downloader import compute_key

    got = set(table.column(schema.UID).to_pylist())
    want = inputs.column(schema.UID).to_pylist()
    extra = got - set(want)
    if extra or table.num_rows != len(got):
        raise RuntimeError(f"shard {shard_name(shard_id)}: parquet rows do not match its input ({len(extra)} unknown)")
    lost = [i for i, u in enumerate(want) if u not in got]
    if lost:
        oom = math.ceil(math.log10(samples_per_shard))
        rows = inputs.take(pa.array(lost, pa.int64())).to_pylist()
        for i, r in zip(lost, rows, strict=True):
            r.update(key=compute_key(i, shard_id, oom, OOM_SHARD_COUNT), status="failed_to_download")
            r["error_message"] = reasons.LOST
        table = pa.concat_tables([table, pa.Table.from_pylist(rows, schema=table.schema)])
    status = table.column("status").to_pylist()
    message = table.column("error_message").to_pylist()
    ok = [s == reasons.SUCCESS for s in status]
    ours = {
        schema.DOWNLOAD_STATUS: pa.array([reasons.SUCCESS if o else reasons.FAILED for o in ok], pa.string()),
        schema.DOWNLOAD_REASON: pa.array(reasons.reasons(status, message), pa.string()),
        schema.DOWNLOAD_ERROR: pa.array([None if o else m for o, m in zip(ok, message, strict=True)], pa.string()),
        schema.SHARD: pa.array([shard_name(shard_id)] * table.num_rows, pa.string()),
    }
    first = [schema.UID, schema.URL, schema.CAPTION]
    rest = [c for c in table.column_names if c not in first]
    cols = {c: table.column(c) for c in first} | ours | {c: table.column(c) for c in rest}
    out = pa.table(cols)
    return out.take(pc.sort_indices(out, [(schema.KEY, "ascending")]))


@contextlib.contextmanager
def _attempt_dir(raw: str, shard: str) -> Iterator[Path]:
    """Where an attempt writes, removed when it ends: under ``raw/_tmp/`` on local disk (the driver's
    progress bar reads it there; a rerun removes what a killed attempt left), in a scratch directory of
    this node when ``raw`` is in object storage (:mod:`curate.core.scratch`: the next one made here
    removes it if the attempt is killed)."""
    if not storage.is_local(raw):
        with scratch.directory(f"download-{shard}") as work:
            yield work
        return
    work = storage.local_path(raw) / TMP / f"{shard}.{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_shard(raw_dir: str, shard_id: int, cfg: DownloadConfig, policy: AddressPolicy, fingerprint: str) -> dict:
    """Download one shard into ``raw_dir`` and mark it done; returns its marker info.

    Any exception means "not done": the caller re-runs the shard, which starts from scratch.
    """
    raw = storage.normalise(raw_dir)
    shard = shard_name(shard_id)
    t0 = time.time()
    with _attempt_dir(raw, shard) as work:
        inputs = storage.read_parquet(input_path(raw, shard))
        # img2dataset wants: extra columns (uid first), then caption, then url.
        extras = [c for c in inputs.column_names if c not in (schema.URL, schema.CAPTION)]
        column_list = extras + [schema.CAPTION, schema.URL]
        feather = work / f"{shard}.feather"
        with pa.OSFile(str(feather), "wb") as f, pa.ipc.new_file(f, inputs.select(column_list).schema) as w:
            w.write_table(inputs.select(column_list))
        downloader = _downloader(cfg, str(work), column_list)
        fetcher = Fetcher(cfg, policy)
        try:
            with _fetch_with(fetcher):
                downloader.download_shard((shard_id, str(feather)))  # exceptions propagate: the shard is retried
        finally:
            fetcher.close()
        table = complete_parquet(pq.read_table(work / f"{shard}.parquet"), inputs, shard_id, cfg.samples_per_shard)
        with units.atomic_path(work / f"{shard}.final.parquet") as tmp:
            write_parquet(table, tmp)
        counts = reasons.counts(table.column(schema.DOWNLOAD_REASON))
        info = {
            "shard": shard,
            "rows": table.num_rows,
            "successes": table.num_rows - sum(counts.values()),
            "failures": dict(sorted(counts.items())),
            "seconds": round(time.time() - t0, 3),
            "fingerprint": fingerprint,
            "config": cfg.fingerprint(),
        }
        if storage.is_local(raw):
            return _commit(storage.local_path(raw), work, shard, info)
        return _upload(raw, work, shard, info)


OUTPUTS = (("{}.tar", "{}.tar"), ("{}_stats.json", "{}_stats.json"), ("{}.final.parquet", "{}.parquet"))


class ShardDownloader:
    """The runner's unit function for raw shards: ``unit.args`` is the shard id."""

    def __init__(self, cfg: DownloadConfig, policy: AddressPolicy):
        self.cfg, self.policy = cfg, policy

    def __call__(self, root: str, unit) -> dict:
        return run_shard(root, unit.args, self.cfg, self.policy, unit.fingerprint)


def _upload(raw: str, work: Path, shard: str, info: dict) -> dict:
    """Object storage: the shard's objects first, the marker last. An attempt that finds the shard
    marked (a worker of a killed run that lived on) keeps the first one's result."""
    done = units.read_marker(raw, shard)
    if done and done.get("fingerprint") == info["fingerprint"]:
        return done
    for src, dest in OUTPUTS:
        storage.put(work / src.format(shard), storage.join(raw, dest.format(shard)))
    info = {**info, "files": file_sizes(raw, shard)}
    units.mark_done(raw, shard, info)
    return info


def _commit(raw: Path, work: Path, shard: str, info: dict) -> dict:
    """Move the attempt's files into place and write the marker, one attempt at a time.

    Two attempts of one shard can overlap: a worker of a killed run can live on for seconds. The
    lock keeps their files from mixing (a tar from one, a parquet from the other); the second to
    arrive finds the marker and keeps the first one's result.
    """
    lock = raw / TMP / f"{shard}.lock"
    fd = _acquire(lock, lambda: units.is_done(raw, shard))
    try:
        if units.is_done(raw, shard):
            return units.read_marker(raw, shard)
        for src, dest in OUTPUTS:
            os.replace(work / src.format(shard), raw / dest.format(shard))
        info = {**info, "files": file_sizes(str(raw), shard)}
        units.mark_done(raw, shard, info)
        return info
    finally:
        if fd is not None:
            os.close(fd)
            lock.unlink(missing_ok=True)


def _acquire(lock: Path, done, stale_after: float = 30.0) -> int | None:
    """The lock's file descriptor, or None once ``done()`` is true while someone else holds it.

    A commit takes milliseconds, so a lock older than ``stale_after`` seconds belongs to an attempt
    that died holding it, and is broken.
    """
    while True:
        try:
            return os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if done():
                return None
            with contextlib.suppress(FileNotFoundError):
                if time.time() - lock.stat().st_mtime > stale_after:
                    lock.unlink(missing_ok=True)
            time.sleep(0.05)
