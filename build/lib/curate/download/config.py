"""Download settings: a frozen dataclass with DataComp-like defaults, readable from TOML.

A TOML file sets any subset of the fields, flat or under a ``[download]`` table::

    image_size = 512
    resize_mode = "keep_ratio_largest"
    timeout = 10
    threads = 64

img2dataset's option names are accepted too (:data:`IMG2DATASET`): most are ours already
(``image_size``, ``resize_mode``, ``encode_format``, ``timeout``, ``retries``, ...); ``thread_count`` and
``number_sample_per_shard`` are aliases; ``url_col``, ``caption_col`` and ``input_format`` say which
columns of the URL list to read. Options about how img2dataset runs (``processes_count``, ``distributor``,
``output_folder``, ...) are ignored with a warning saying what does that here; options that would change
the output in a way clip-tiers cannot (``output_format`` other than webdataset, ``max_image_area``,
``skip_reencode``, ``bbox_col``, ...) are refused.

``fingerprint()`` holds the fields that change what lands in ``DIR/raw/``; a resumed download must
use the same fingerprint as the run that started it, so one directory never mixes two settings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

from curate.core import config
from curate.core.errors import InputError

log = logging.getLogger(__name__)

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
ENCODE_FORMATS = ("jpg", "png", "webp")


@dataclass(frozen=True)
class DownloadConfig:
    # What is stored. DataComp downloads at 512 px, longest side, never upscaling.
    image_size: int = 512
    resize_mode: str = "keep_ratio_largest"
    resize_only_if_bigger: bool = True
    encode_format: str = "jpg"
    encode_quality: int = 95
    samples_per_shard: int = 10_000
    # Limits that turn hostile responses into a failure with a reason instead of a stuck or dead worker.
    max_image_bytes: int = 32 * 1024 * 1024  # a larger body is cut off and reported too_large
    max_pixels: int = 40_000_000  # checked from the header, before anything is decoded
    min_image_size: int = 0  # img2dataset's: shorter side; 0 keeps everything (the filters decide)
    max_aspect_ratio: float = float("inf")
    max_redirects: int = 5
    # X-Robots-Tag directives that forbid use (img2dataset's default list); empty honours none.
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")
    user_agent_token: str | None = None
    compute_hash: str | None = "sha256"
    extract_exif: bool = False  # nothing downstream reads EXIF, and exifread costs ~10% of a worker
    # How fast and how stubbornly.
    threads: int = 64  # download threads per shard task; one task per Ray CPU
    timeout: float = 10.0  # seconds per connect / read
    url_deadline: float = 60.0  # seconds per URL overall: a server trickling bytes cannot hold a thread
    retries: int = 0  # per URL, transient failures only (timeouts, 5xx, 429, resets)
    shard_retries: int = 3  # re-runs of a shard whose task failed or whose worker died
    transient_reasons: tuple[str, ...] = ("timeout", "http_5xx", "http_429")  # what --retry-failed retries
    # Which columns of the URL list to read, as img2dataset's options name them; the command-line flags
    # (--url-col, --caption-col, --format) win when given.
    url_col: str | None = None
    caption_col: str | None = None
    input_format: str | None = None

    @classmethod
    def from_aliases(cls, data: dict, source: str | None = None) -> dict:
        """img2dataset's option names (see :data:`IMG2DATASET`) rewritten to ours; called by the config loader."""
        return img2dataset_names(data, source)

    def __post_init__(self) -> None:
        problems = []
        if self.resize_mode not in RESIZE_MODES:
            problems.append(f"resize_mode {self.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.encode_format not in ENCODE_FORMATS:
            problems.append(f"encode_format {self.encode_format!r} is not one of {', '.join(ENCODE_FORMATS)}")
        for name in ("image_size", "samples_per_shard", "max_image_bytes", "max_pixels", "threads"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("timeout", "url_deadline"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0")
        for name in ("retries", "shard_retries", "min_image_size", "max_redirects"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))

    def fingerprint(self) -> dict:
        """The settings that decide what lands in ``DIR/raw/`` (not how fast it gets there)."""
        keep = (
            "image_size",
            "resize_mode",
            "resize_only_if_bigger",
            "encode_format",
            "encode_quality",
            "samples_per_shard",
            "max_image_bytes",
            "max_pixels",
            "min_image_size",
            "max_aspect_ratio",
            "disallowed_header_directives",
            "compute_hash",
            "extract_exif",
        )
        d = asdict(self)
        out = {k: d[k] for k in keep}
        out["disallowed_header_directives"] = list(out["disallowed_header_directives"])
        out["max_aspect_ratio"] = str(out["max_aspect_ratio"])  # inf is not JSON
        return out

    def to_dict(self) -> dict:
        return config.to_dict(self)

    def replace(self, **changes) -> DownloadConfig:
        return config_from_dict({**self.to_dict(), **changes})


def config_from_dict(data: dict, source: str | None = None) -> DownloadConfig:
    """Build a config from plain values (TOML, JSON); unknown keys and bad values raise InputError."""
    return config.from_dict(DownloadConfig, data, section="download", source=source)


def load_config(path: str | os.PathLike | None, base: DownloadConfig | None = None) -> DownloadConfig:
    """``base`` (default: the defaults) with the settings of a TOML file over it (flat, or under ``[download]``)."""
    return config.load(DownloadConfig, path, section="download", base=base)


# img2dataset name -> our field
_RENAMED = {"thread_count": "threads", "number_sample_per_shard": "samples_per_shard"}
# img2dataset options about how it runs: accepted, ignored, and what does that job here
_IGNORED = {
    "processes_count": "one download task runs per Ray CPU (all cores locally; --ray-address for a cluster)",
    "distributor": "downloads always run on Ray",
    "output_folder": "the output is --out",
    "url_list": "the URL list is the command's argument",
    "enable_wandb": "download figures are in DIR/raw/manifest.json; `tiers train --log-to wandb` tracks training",
    "wandb_project": "see enable_wandb",
    "incremental_mode": "a rerun always resumes: finished shards are skipped",
    "save_additional_columns": "every extra column of the URL list is kept",
    "subjob_size": "shards are Ray tasks, scheduled one by one",
    "oom_shard_count": "shards are named NNNNN, enough for 100,000 shards",
    "verify_hash": "not needed: sha256 is computed (compute_hash) and dedup uses it",
}
# img2dataset options whose output clip-tiers cannot make: refused, with the reason
_REFUSED = {
    "max_image_area": "no equivalent: the filters decide on size (min_side, max_aspect); max_pixels only guards "
    "against decompression bombs",
    "skip_reencode": "no equivalent: images are re-encoded (encode_format, encode_quality) unless resize_mode = 'no'",
    "bbox_col": "no equivalent: bounding-box blurring is not implemented",
}
# Every img2dataset option that is not also ours by name, and what becomes of it.
IMG2DATASET = {**_RENAMED, **_IGNORED, **_REFUSED, "url_col": "url_col", "caption_col": "caption_col",
               "input_format": "input_format", "output_format": "webdataset only"}  # fmt: skip


def img2dataset_names(data: dict, source: str | None = None) -> dict:
    """``data`` with img2dataset's option names rewritten to ours; ignored ones dropped with a warning."""
    out = dict(data)
    for theirs, ours in _RENAMED.items():
        if theirs in out:
            if ours in out:
                raise InputError(f"[download] {theirs} and {ours} are the same setting; give one", path=source)
            out[ours] = out.pop(theirs)
    fmt = out.pop("output_format", None)
    if fmt is not None and fmt != "webdataset":
        raise InputError(
            f"[download] output_format = {fmt!r}: clip-tiers writes webdataset shards (raw/NNNNN.tar) and a "
            "parquet of every URL's fate; other formats have no equivalent",
            path=source,
        )
    for key, why in _IGNORED.items():
        if key in out:
            out.pop(key)
            log.warning(f"[download] {key} (img2dataset's) is ignored: {why}")
    for key, why in _REFUSED.items():
        if key in out:
            raise InputError(f"[download] {key}: {why}", path=source)
    return out
