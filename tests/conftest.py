"""Shared fixtures: a small synthetic web, built once per session, and a server for it; S3 and a Ray cluster.

No test needs the network or a GPU: images come from the synthetic web on 127.0.0.1, S3 is moto's
standalone server on 127.0.0.1 reached through s3fs exactly as a real bucket would be, and Ray is one
cluster of three nodes on this machine (a head and two workers, one CPU each), started once.
"""

from __future__ import annotations

import os
import uuid

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


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # No profile or config file of this machine's user may change what the tests reach.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free 127.0.0.1 port; its endpoint is in ``AWS_ENDPOINT_URL`` for this process
    and every process it starts (Ray nodes, CLI runs), as a real endpoint would be. Yields the endpoint."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def bucket(s3_server):
    """A new, empty bucket: ``s3://<name>``."""
    from curate.core import storage

    name = f"t-{uuid.uuid4().hex[:12]}"
    fs, _ = storage.filesystem(f"s3://{name}")
    fs.mkdir(name)
    return f"s3://{name}"


def _forget_address(address: str) -> None:
    """Ray's Cluster records its address in /tmp/ray/ray_current_cluster "for convenience", and from then
    on every plain ray.init() on this machine — other users' included — tries to join it. Take it back."""
    import ray._common.utils
    import ray._private.utils

    if ray._private.utils.read_ray_address() == address:
        ray._common.utils.reset_ray_address()


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A Ray cluster of three nodes on this machine (head + 2 workers, 1 CPU each), once per session.

    Nodes are started after the S3 endpoint is in the environment, so their workers reach it too.
    """
    from ray.cluster_utils import Cluster

    from curate.core.runtime import lean_start, quiet_environment

    quiet_environment()
    node = {"num_cpus": 1, "object_store_memory": 150 * 1024**2, "include_dashboard": False}
    # As the CLI starts its own Ray: no dashboard process, which probed the cloud metadata address.
    with lean_start():
        cluster = Cluster(initialize_head=True, connect=False, head_node_args=node)
        _forget_address(cluster.address)
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=150 * 1024**2)
        cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="session")
def ray_local(ray_cluster):
    """This process as a driver of the session's cluster: the one Ray of the test session (never start
    Ray per test: ~3 s and 0.7 GB each, and never a second one in this process)."""
    import ray

    from curate.core.runtime import ray_session

    with ray_session(address=ray_cluster.address):
        yield ray


@pytest.fixture(autouse=True)
def _logging_as_found():
    """A test that calls a command's ``main`` routes our loggers to the console (no propagation, its
    level): put them back, so a later test's ``caplog`` sees their records whatever ran before it."""
    import logging

    from pipelines.console import OURS

    yield
    for name in (*OURS, "ray", "img2dataset", "open_clip", None):
        logger = logging.getLogger(name)
        if name is not None:
            logger.handlers = [h for h in logger.handlers if not getattr(h, "_clip_tiers", False)]
            logger.propagate = True
            logger.setLevel(logging.NOTSET)
    logging.getLogger().setLevel(logging.WARNING)
