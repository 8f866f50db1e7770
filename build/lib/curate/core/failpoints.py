"""Named points where a test can kill this process with SIGKILL, to prove that reruns heal.

Set ``CLIP_TIERS_FAILPOINT=name`` (or ``name@k`` for the k-th time the point is reached) and the
process dies there exactly as ``kill -9`` would: no cleanup, no flush. Unset, a failpoint costs one
dictionary lookup. Points: ``build:after_download``, ``build:after_annotate``, ``decide:after_dedup``,
``tiers:after_shard`` (once per band shard written), ``tiers:before_manifest``, ``urllist:worker`` (a
process staging a URL list's file, as it starts each).
"""

from __future__ import annotations

import os
import signal

ENV = "CLIP_TIERS_FAILPOINT"
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    want = os.environ.get(ENV)
    if not want:
        return
    target, _, nth = want.partition("@")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
