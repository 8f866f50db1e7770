"""The download plan and its accounting, as units: the uid digest a plan records, failures counted by reason."""

from __future__ import annotations

import hashlib
from collections import Counter

import pyarrow as pa

from curate.download.plan import uid_digest
from curate.download.reasons import counts as reason_counts


def test_plan_digest_and_reason_counts_need_no_python_row_per_uid():
    """The plan's uid digest, read a slice at a time from Arrow, is the digest plans have always recorded
    (each uid and a newline); reasons are counted in Arrow, nulls (successes) left out."""
    uids = [f"u{i:06d}" for i in range(70_000)] + ["é-ünïcode"]
    h = hashlib.blake2b(digest_size=16)
    for u in uids:
        h.update(u.encode() + b"\n")
    assert uid_digest(pa.chunked_array([uids[:5], uids[5:]])) == h.hexdigest() == uid_digest(uids)
    assert uid_digest(uids[::-1]) != h.hexdigest()

    reasons = pa.chunked_array([["timeout", None, "http_404"], [], [None, "timeout"]], pa.string())
    assert reason_counts(reasons) == Counter({"timeout": 2, "http_404": 1})
    assert reason_counts(pa.chunked_array([[None, None]], pa.string())) == Counter()
