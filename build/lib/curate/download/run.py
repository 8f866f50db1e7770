"""Drive a download on Ray: plan, run the missing shards with retries, merge retry rounds, account.

``download(urls, out, cfg)`` is resumable and idempotent: it plans ``out/raw/`` once (see
:mod:`curate.download.plan`), runs every shard without a completion marker as a Ray task (one CPU
each, ``cfg.threads`` download threads inside), re-runs a shard whose task failed or whose worker
died up to ``cfg.shard_retries`` times, and then writes ``raw/manifest.json``. Killed at any
moment and run again, it does only the missing shards; run on a finished directory it starts
nothing and returns the same manifest.

``retry_failed(out)`` downloads again the rows that failed for a transient reason (timeouts, 5xx,
429) as a new round of shards, then removes those rows from the shards they came from, so each uid
is still in exactly one raw parquet.

The manifest (``format = "clip-tiers/raw@1"``) holds ``input_rows``, ``successes``, ``failures``
and ``failures_by_reason``, which add up (checked against the uids in the parquets before it is
written), plus ``status`` ("complete" or "incomplete", with ``failed_shards`` naming each shard
that ran out of retries and its last error).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from curate import code_version
from curate.core import access, manifest, runner, schema, storage, units
from curate.core.dirlock import hold
from curate.core.errors import InputError
from curate.download import plan as planning
from curate.download import verify
from curate.download.config import DownloadConfig, load_config
from curate.download.progress import DownloadProgress
from curate.download.reasons import counts as reason_counts
from curate.download.safety import AddressPolicy, parse_allow
from curate.download.summary import DownloadSummary
from curate.download.worker import TMP, ShardDownloader, file_sizes, input_path, shard_name

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def as_policy(allow_private: AddressPolicy | str | None) -> AddressPolicy:
    """None: public hosts only; "ENTRY,ENTRY": plus those (``loopback``, networks, hosts, each with an
    optional port; see :mod:`curate.download.safety`). Bad entries raise InputError."""
    if isinstance(allow_private, AddressPolicy):
        return allow_private
    if allow_private is None:
        return AddressPolicy()
    if not isinstance(allow_private, str):
        raise TypeError(f"allow_private must be a string of entries such as 'loopback', not {allow_private!r}")
    try:
        return parse_allow(allow_private)
    except ValueError as e:
        raise InputError(f"--allow-private-hosts: {e}") from None


def read_manifest(out: str | os.PathLike) -> DownloadSummary | None:
    """The summary a finished (or stopped) download left in ``out/raw/manifest.json``, or None (also when
    the file is damaged: it is derived from the raw shards, and the next run writes it again)."""
    p = storage.join(out, manifest.RAW, MANIFEST)
    try:
        return DownloadSummary.from_dict(json.loads(storage.read_bytes(p)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError, OSError) as e:
        log.warning(f"{p}: unreadable ({type(e).__name__}: {e}); it is computed again from the raw shards")
        return None


def download(
    urls,
    out: str | os.PathLike,
    cfg: DownloadConfig | None = None,
    *,
    read_config=None,
    allow_private: AddressPolicy | str | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    source: str | None = None,
) -> DownloadSummary:
    """Download a URL list (a path, glob or list of them, the table from ``read_url_list`` or a list
    ``stage_url_list`` staged already) into ``out/raw/``; returns the raw manifest. Bad input raises
    :class:`InputError`. ``source``: what the plan records as the list's origin, for a table or a
    staged list (a path or glob names itself)."""
    from curate.urllist import ReadConfig, StagedList, staged_url_list

    cfg = cfg or DownloadConfig()
    policy = as_policy(allow_private)
    access.check_access(out)
    if isinstance(urls, pa.Table | StagedList):
        # Read already (``tiers build`` stages its list once, for inputs.parquet and for this).
        staged = contextlib.nullcontext(urls)
    else:
        # Read a batch at a time into one local file (an unreadable list raises before the lock is taken);
        # the plan writes the input shards from it a shard at a time: the list is never held whole.
        staged = staged_url_list(urls, read_config or ReadConfig(), progress)
        source = ", ".join(map(os.fspath, urls)) if isinstance(urls, list | tuple) else os.fspath(urls)
    raw = storage.join(out, manifest.RAW)
    with staged as data, hold(out, command="tiers download"):
        info = planning.plan(raw, data if isinstance(data, pa.Table) else data.path, cfg, source)
        return _complete(raw, info, cfg, policy, ray_address, num_cpus, progress)


def retry_failed(
    out: str | os.PathLike,
    cfg: DownloadConfig | None = None,
    *,
    reasons: list[str] | tuple[str, ...] | None = None,
    config_file: str | os.PathLike | None = None,
    allow_private: AddressPolicy | str | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
) -> DownloadSummary:
    """Download again the rows that failed with one of ``reasons`` (default: the config's transient
    ones) and merge the results. Settings: ``cfg``, else those of the download, with the ones
    ``config_file`` names over them; returns the summary with ``retried`` (rows tried again; when not 0
    the last ``rounds`` entry says how many were recovered)."""
    with hold(out, command="tiers download --retry-failed"):
        return _retry(out, cfg, reasons, config_file, as_policy(allow_private), ray_address, num_cpus, progress)


def _retry(out, cfg, reasons, config_file, policy, ray_address, num_cpus, progress) -> DownloadSummary:
    raw = storage.join(out, manifest.RAW)
    info = planning.read_plan(raw)
    if info is None:
        raise InputError("no download here (expected DIR/raw/ from `tiers download`)", path=raw)
    cfg = cfg or planning.plan_config(info)
    if config_file is not None:  # the file changes only what it names, e.g. a longer timeout
        cfg = load_config(config_file, base=cfg)
    planning.check_config(info, cfg, raw)
    unmerged = [r for r in planning.read_rounds(raw) if not units.is_done(raw, _round_unit(r))]
    summary = _complete(raw, info, cfg, policy, ray_address, num_cpus, progress)
    if not summary.complete:
        return summary
    if unmerged:  # a retry killed half-way: finishing it is this command's job
        return dataclasses.replace(summary, retried=unmerged[-1]["rows"])
    wanted = sorted(reasons or cfg.transient_reasons)
    rounds = planning.read_rounds(raw)
    picked, origins = [], {}
    for s in planning.all_shards(info, rounds):
        name = shard_name(s)
        t = storage.read_parquet(storage.join(raw, f"{name}.parquet"), columns=[schema.UID, schema.DOWNLOAD_REASON])
        uids = t.filter(pc.is_in(t.column(schema.DOWNLOAD_REASON), pa.array(wanted, pa.string()))).column(0)
        if len(uids):
            rows = storage.read_parquet(input_path(raw, name))
            picked.append(rows.filter(pc.is_in(rows.column(schema.UID), uids.combine_chunks())))
            origins[name] = len(uids)
    if not picked:
        return summary
    rows = pa.concat_tables(picked)
    planning.plan_round(raw, info, rounds, rows, origins, cfg.samples_per_shard, wanted)
    done = _complete(raw, info, cfg, policy, ray_address, num_cpus, progress)
    return dataclasses.replace(done, retried=rows.num_rows)


def shard_fingerprint(cfg: DownloadConfig) -> str:
    """What a download shard's completion marker records: its output settings, hashed."""
    return hashlib.blake2b(json.dumps(cfg.fingerprint(), sort_keys=True).encode(), digest_size=16).hexdigest()


def _round_unit(r: dict) -> str:
    return f"round-{r['round']:03d}"


def _complete(raw: str, info: dict, cfg, policy, ray_address, num_cpus, show: bool) -> DownloadSummary:
    rounds = planning.read_rounds(raw)
    shards = planning.all_shards(info, rounds)
    verify.invalidate_damaged(raw, info, rounds)
    done = units.done_units(raw)
    pending = [s for s in shards if shard_name(s) not in done]
    unmerged = [r for r in rounds if _round_unit(r) not in done]
    previous = read_manifest(storage.parent(raw))
    if not pending and not unmerged and previous and previous.complete:
        return previous
    planning.remove_stale(raw)
    failed: dict[str, str] = {}
    if pending:
        from curate.core.runtime import ray_session

        with ray_session(ray_address, num_cpus):
            failed = _execute(raw, planning.shard_rows(info, rounds), pending, cfg, policy, show)
    for r in unmerged:
        if all(units.is_done(raw, shard_name(s)) for s in r["shards"]):
            _merge_round(raw, r)
    return _finalize(raw, info, planning.read_rounds(raw), cfg, policy, failed)


def _execute(raw: str, rows: dict[int, int], pending: list[int], cfg, policy, show: bool) -> dict[str, str]:
    """Run ``pending`` shards as Ray tasks of the runner, re-running failed ones; returns {shard: last
    error} of the shards that ran out of retries. ``rows``: input rows of every shard, for the bar."""
    todo = set(pending)
    markers = [units.read_marker(raw, shard_name(s)) for s in rows if s not in todo]
    done_rows = sum(m["rows"] for m in markers if m)
    done_ok = sum(m["successes"] for m in markers if m)
    total = done_rows + sum(rows[s] for s in pending)
    bar = DownloadProgress(raw, total, done_rows, done_ok, enabled=show)
    fp = shard_fingerprint(cfg)
    names = ("{}.tar", "{}.parquet", "{}_stats.json")
    work = [runner.Unit(shard_name(s), fp, tuple(n.format(shard_name(s)) for n in names), s) for s in pending]
    try:
        report = runner.run(
            raw,
            work,
            ShardDownloader(cfg, policy),
            runner.Executor("tasks"),
            retries=cfg.shard_retries,
            progress=False,
            on_done=lambda unit, got: bar.shard_done(got["rows"], got["successes"]),
            poll=bar.poll,
        )
    finally:
        bar.close()
    return report.failed


def _merge_round(raw: str, r: dict) -> None:
    """Drop the round's uids from the shards they came from (their new rows live in the round's shards)."""
    uids = pa.array(sorted(planning.round_uids(raw, r)), pa.string())
    for origin in r["origins"]:
        p = storage.join(raw, f"{origin}.parquet")
        t = storage.read_parquet(p)
        keep = t.filter(pc.invert(pc.is_in(t.column(schema.UID), uids)))
        if keep.num_rows != t.num_rows:
            storage.write_parquet(keep, p)
        marker = units.read_marker(raw, origin) or {}
        counts = reason_counts(keep.column(schema.DOWNLOAD_REASON))
        marker.update(rows=keep.num_rows, successes=keep.num_rows - sum(counts.values()), failures=dict(counts))
        marker["files"] = file_sizes(raw, origin)
        units.mark_done(raw, origin, marker)
    ok = sum(units.read_marker(raw, shard_name(s))["successes"] for s in r["shards"])
    units.mark_done(raw, _round_unit(r), {"recovered": ok})


def _finalize(raw: str, info: dict, rounds: list[dict], cfg, policy: AddressPolicy | None, failed: dict):
    shards = [shard_name(s) for s in planning.all_shards(info, rounds)]
    done = units.done_units(raw)
    missing = [s for s in shards if s not in done]
    common = dict(
        input_rows=info["rows"],
        shards=len(shards),
        source=info.get("source"),
        rounds=tuple(
            {**r, "recovered": (units.read_marker(raw, _round_unit(r)) or {}).get("recovered")} for r in rounds
        ),
        config=cfg.to_dict(),
        allowed=policy.describe() if policy is not None else "not recorded (this summary was rebuilt from the shards)",
        code_version=code_version(),
    )
    if missing:
        failed_shards = {s: failed.get(s, "not run") for s in missing}
        summary = DownloadSummary("incomplete", missing_shards=tuple(missing), failed_shards=failed_shards, **common)
    else:
        counts = _count_fates(raw, shards, info["rows"])
        failures = sum(counts.values())
        by_reason = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        summary = DownloadSummary(
            "complete", successes=info["rows"] - failures, failures=failures, failures_by_reason=by_reason, **common
        )
    planning.write_json(storage.join(raw, MANIFEST), summary.to_dict())
    if storage.is_local(raw):
        with contextlib.suppress(OSError):
            (storage.local_path(raw) / TMP).rmdir()  # empty once every task has returned
    return summary


def _count_fates(raw: str, shards: list[str], input_rows: int) -> Counter:
    """Failures by reason over every raw parquet, after checking each input row has exactly one row."""
    t = pa.concat_tables(
        storage.read_parquet(storage.join(raw, f"{s}.parquet"), columns=[schema.UID, schema.DOWNLOAD_REASON])
        for s in shards
    )
    distinct = pc.count_distinct(t.column(schema.UID)).as_py()
    if t.num_rows != input_rows or distinct != input_rows:
        raise RuntimeError(
            f"{raw}: accounting broke: {t.num_rows} raw rows, {distinct} distinct uids, {input_rows} input rows"
        )
    return reason_counts(t.column(schema.DOWNLOAD_REASON))


def read_results(out: str | os.PathLike) -> pa.Table:
    """``uid`` and the ``schema.DOWNLOAD`` columns of every raw shard: one row per input row.

    Raises InputError unless ``out/raw/`` holds a complete download.
    """
    raw = storage.join(out, manifest.RAW)
    m = read_manifest(out)
    info = planning.read_plan(raw)
    if m is None and info is not None and storage.exists(storage.join(raw, MANIFEST)):
        m = _finalize(raw, info, planning.read_rounds(raw), planning.plan_config(info), None, {})  # was damaged
    if m is None or not m.complete:
        state = "no download" if m is None else "an incomplete download"
        raise InputError(f"{state} here; run `tiers download` (again) first", path=raw)
    verify.check_raw(out)
    names = [shard_name(s) for s in planning.all_shards(info, planning.read_rounds(raw))]
    cols = [schema.UID] + schema.DOWNLOAD.names
    fix = verify.redownload_fix
    tables = [storage.read_parquet(storage.join(raw, f"{s}.parquet"), cols, fix(out, s)) for s in names]
    return pa.concat_tables(tables).cast(pa.schema([pa.field(schema.UID, pa.string()), *schema.DOWNLOAD]))
