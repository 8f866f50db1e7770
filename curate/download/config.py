"""Download settings: a frozen dataclass with DataComp-like defaults, readable from TOML.

A TOML file sets any subset of the fields, flat or under a ``[download]`` table::

    image_size = 512
    resize_mode = "keep_ratio_largest"
    timeout = 10
    threads = 64

``fingerprint()`` holds the fields that change what lands in ``DIR/raw/``; a resumed download must
use the same fingerprint as the run that started it, so one directory never mixes two settings.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from curate.core import config

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
