"""Shared fixtures: a small synthetic web, built once per session, and a server for it.

No test needs the network or a GPU: images come from the synthetic web on 127.0.0.1.
"""

from __future__ import annotations

import pytest

from curate.core.runtime import quiet_environment  # noqa: E402

quiet_environment()


@pytest.fixture(scope="session")
def small_web(tmp_path_factory):
    """A 600-URL synthetic web with the default (raw crawl) mix."""
    from synthweb import WebConfig, build

    root = tmp_path_factory.mktemp("web")
    build(root, WebConfig(n=600, seed=3, eval_per_concept=4, retrieval_pairs=50))
    return root


@pytest.fixture(scope="session")
def served_web(small_web):
    """``small_web`` served on a free 127.0.0.1 port for the whole session."""
    from synthweb import WebServer

    with WebServer(small_web) as web:
        yield web


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (never start Ray per test: ~3 s and 0.7 GB each)."""
    import ray

    from curate.core.runtime import ray_session

    with ray_session(num_cpus=2):
        yield ray
