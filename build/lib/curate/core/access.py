"""Before any work: does a URL's store answer, and take writes? One line naming the URL when not.

An unreachable endpoint, a missing bucket or refused credentials should stop a run that has written
nothing, in seconds, with a message a person can act on, not a botocore traceback after the first unit.
"""

from __future__ import annotations

import os

from curate.core import storage
from curate.core.errors import InputError


def check_access(url: str | os.PathLike, write: bool = True) -> None:
    """Raise :class:`InputError`, one line naming ``url``, unless its store answers and (``write``) takes writes.

    Runs before any work, so an unreachable endpoint, a missing bucket or refused credentials stop a run
    that has written nothing. A write check puts a small probe object next to the outputs and removes it.
    """
    if storage.is_local(url):
        return
    import uuid

    fs, path = _probe_filesystem(url)
    probe = f"{path.rstrip('/')}/.clip-tiers-probe-{uuid.uuid4().hex[:12]}"
    try:
        fs.ls(path.split("/", 1)[0], detail=False)  # the bucket (or root) must answer
        if write:
            fs.pipe_file(probe, b"")
            fs.rm_file(probe)
    except Exception as e:  # noqa: BLE001 - every backend raises its own kinds; all become one line
        raise InputError(_access_message(url, e), path=storage.normalise(url)) from None


def _probe_filesystem(url: str | os.PathLike):
    """The URL's filesystem with few retries and short timeouts, so a dead endpoint fails in seconds."""
    import fsspec

    proto = storage.protocol(url)
    opts = storage.options().get(proto, {})
    if proto in ("s3", "s3a"):
        cfg = {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 1}}
        opts = {
            **opts,
            "config_kwargs": {**cfg, **opts.get("config_kwargs", {})},
            "skip_instance_cache": True,
        }
    try:
        fs = fsspec.filesystem(proto, **opts)
    except (ImportError, ValueError) as e:
        raise InputError(f"cannot open {proto}:// URLs ({e})", path=os.fspath(url)) from None
    return fs, fs._strip_protocol(os.fspath(url))


def _access_message(url, e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    low = text.lower()
    if "bucket" in low and ("not exist" in low or "nosuchbucket" in low):
        return "no such bucket"
    if isinstance(e, PermissionError) or any(
        k in low for k in ("denied", "forbidden", "invalidaccesskey", "signature")
    ):
        return f"access refused; check the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE / [storage]): {text[:200]}"
    if any(k in low for k in ("connect", "endpoint", "timeout", "timed out", "name resolution", "unreachable")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or storage.options().get(storage.protocol(url), {}).get(
            "endpoint_url"
        )
        where = f" {endpoint}" if endpoint else ""
        return f"cannot reach the storage endpoint{where}: {text[:200]}"
    return f"storage refused the request: {text[:200]}"
