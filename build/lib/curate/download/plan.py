"""What a download directory is meant to hold: the input, cut into shards, and retry rounds.

``plan(raw, table, cfg)`` writes, once, ``raw/_input/NNNNN.parquet`` (consecutive slices of
``samples_per_shard`` input rows: uid, url, caption and the extra columns, made safe for
img2dataset) and then ``raw/_input/plan.json`` (rows, shard ids, a digest of the uids, the config).
The plan is written last, so its presence means the input shards are complete; a rerun reuses it
and refuses a different URL list or different output settings for the same directory.

A retry round (``tiers download --retry-failed``) adds shards after the last one, holding the rows
to try again, and ``raw/_input/round-NNN.json`` naming them and the shards the rows came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import pyarrow as pa

from curate import code_version
from curate.core import batches, schema, storage, units
from curate.core.errors import InputError
from curate.download.config import DownloadConfig, config_from_dict
from curate.download.worker import INPUT, input_path, shard_name

PLAN = "plan.json"
FORMAT = "clip-tiers/download-plan@1"
# Names img2dataset writes itself (or refuses in save_additional_columns) but clip-tiers does not reserve.
IMG2DATASET_OWN = frozenset(
    {"key", "width", "height", "original_width", "original_height", "status", "error_message", "exif"}
    | {"md5", "sha256", "sha512"}
)
_PLAIN = (pa.types.is_string, pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)


def uid_digest(uids: pa.ChunkedArray | pa.Array | list[str] | Iterable[pa.Array]) -> str:
    """A digest of the uids in order (each followed by a newline), read a slice at a time: a list of
    every uid as Python strings would cost the driver ~100 B a row just to hash them. ``uids``: a
    column, a list, or the column's arrays in order (a file read a batch at a time)."""
    h = hashlib.blake2b(digest_size=16)
    if isinstance(uids, list):
        uids = pa.array(uids, pa.string())
    for col in [uids] if isinstance(uids, pa.ChunkedArray | pa.Array) else uids:
        for at in range(0, len(col), 65_536):
            part = col.slice(at, 65_536).to_pylist()
            h.update("".join(f"{u}\n" for u in part).encode())
    return h.hexdigest()


def _plain_column(col: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """Strings, numbers and booleans pass; anything else becomes text (Arrow's cast, else JSON), so
    img2dataset's per-sample ``.json`` never meets a value it cannot serialise (it would drop the sample)."""
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_large_string(t):
        return col.cast(pa.string())
    if any(test(t) for test in _PLAIN):
        return col
    if not pa.types.is_nested(t):
        try:
            return col.cast(pa.string())  # timestamps, dates, decimals: their usual text
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # e.g. binary that is not UTF-8
    return pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()], pa.string())


def img2dataset_safe(table: pa.Table) -> pa.Table:
    """The canonical URL table with extra columns renamed away from img2dataset's names and made plain."""
    from curate.urllist.readers import prefixed_names

    first = (schema.UID, schema.URL, schema.CAPTION)
    rest = [n for n in table.column_names if n not in first]
    names = [n for n in table.column_names if n in first] + prefixed_names(rest, IMG2DATASET_OWN | schema.RESERVED)
    cols = [table.column(n).cast(pa.string()) for n in table.column_names if n in first]
    cols += [_plain_column(table.column(n)) for n in rest]
    return pa.table(cols, names=names)


def read_plan(raw: str) -> dict | None:
    try:
        return storage.read_json(storage.join(raw, INPUT, PLAN))
    except FileNotFoundError:
        return None


def plan_config(plan: dict) -> DownloadConfig:
    return config_from_dict(plan["config"])


def check_config(plan: dict, cfg: DownloadConfig, raw: str) -> None:
    before = plan["fingerprint"]
    now = cfg.fingerprint()
    if before != now:
        diff = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in now if before.get(k) != now.get(k))
        raise InputError(
            f"this directory was downloaded with other output settings ({diff}); "
            "use those settings to resume, or a new --out",
            path=str(raw),
        )


def plan(raw: str, data: pa.Table | str, cfg: DownloadConfig, source: str | None = None) -> dict:
    """Write the input shards and the plan, or check that an existing plan is for this input. ``data``:
    the canonical URL table, or a local parquet file holding it (:func:`curate.urllist.stage_url_list`),
    read a batch at a time: the driver holds one shard's rows, whatever the list's size."""
    if isinstance(data, pa.Table):
        rows, digest = data.num_rows, uid_digest(data.column(schema.UID))
        shards = batches.exact(data.to_batches(), cfg.samples_per_shard)
        empty = data.schema.empty_table()
    else:
        f = batches.open_parquet(data)
        rows, empty = f.metadata.num_rows, f.schema_arrow.empty_table()
        digest = uid_digest(b.column(0) for b in batches.iter_parquet(data, columns=[schema.UID]))
        shards = batches.exact(batches.iter_parquet(data), cfg.samples_per_shard)
    existing = read_plan(raw)
    if existing is not None:
        if existing["rows"] != rows or existing["uid_digest"] != digest:
            raise InputError(
                f"this directory holds the download of another URL list ({existing['rows']} rows from "
                f"{existing.get('source')}); this list has {rows} rows. Use a new --out",
                path=str(raw),
            )
        check_config(existing, cfg, raw)
        return existing
    ids = []
    for i, part in enumerate(shards):
        storage.write_parquet(img2dataset_safe(part), input_path(raw, shard_name(i)))
        ids.append(i)
    info = {
        "format": FORMAT,
        "code_version": code_version(),
        "source": source,
        "rows": rows,
        "uid_digest": digest,
        "shards": ids,
        "columns": img2dataset_safe(empty).column_names,
        "fingerprint": cfg.fingerprint(),
        "config": cfg.to_dict(),
    }
    write_json(storage.join(raw, INPUT, PLAN), info)
    return info


def write_json(path: str, data: dict) -> None:
    storage.write_json(path, data, indent=2)


# --- retry rounds -----------------------------------------------------------------------------------


def round_path(raw: str, r: int) -> str:
    return storage.join(raw, INPUT, f"round-{r:03d}.json")


def read_rounds(raw: str) -> list[dict]:
    names = [n for n in storage.listdir(storage.join(raw, INPUT)) if n.startswith("round-") and n.endswith(".json")]
    return [storage.read_json(storage.join(raw, INPUT, n)) for n in sorted(names)]


def all_shards(plan_info: dict, rounds: list[dict]) -> list[int]:
    return list(plan_info["shards"]) + [s for r in rounds for s in r["shards"]]


def shard_rows(plan_info: dict, rounds: list[dict]) -> dict[int, int]:
    """Input rows per shard id: consecutive slices of ``samples_per_shard``, the last one short."""
    n = plan_info["fingerprint"]["samples_per_shard"]
    out = {}
    for ids, total in [(plan_info["shards"], plan_info["rows"])] + [(r["shards"], r["rows"]) for r in rounds]:
        for k, s in enumerate(ids):
            out[s] = min(n, total - k * n)
    return out


def plan_round(
    raw: str,
    plan_info: dict,
    rounds: list[dict],
    rows: pa.Table,
    origins: dict[str, int],
    samples_per_shard: int,
    reasons: list[str],
) -> dict:
    """Write the input shards of a new retry round (rows: input columns of the rows to retry)."""
    r = len(rounds) + 1
    start = max(all_shards(plan_info, rounds)) + 1
    n = samples_per_shard
    ids = [start + k for k in range((rows.num_rows + n - 1) // n)]
    for k, i in enumerate(ids):
        storage.write_parquet(rows.slice(k * n, n), input_path(raw, shard_name(i)))
    info = {"round": r, "reasons": reasons, "rows": rows.num_rows, "shards": ids, "origins": origins}
    write_json(round_path(raw, r), info)
    return info


def round_uids(raw: str, info: dict) -> set[str]:
    out: set[str] = set()
    for s in info["shards"]:
        out.update(storage.read_parquet(input_path(raw, shard_name(s)), columns=[schema.UID]).column(0).to_pylist())
    return out


def remove_stale(raw: str) -> None:
    """Clear what a killed run left on local disk: attempt directories and temporary files (object
    stores hold none: attempts stage on local scratch)."""
    import shutil

    if not storage.is_local(raw):
        return
    shutil.rmtree(storage.local_path(raw) / "_tmp", ignore_errors=True)
    if storage.exists(raw):
        units.remove_stale_temporaries(raw)
    storage.makedirs(raw)
