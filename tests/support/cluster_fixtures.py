"""pytest fixtures for a real Redis Cluster (3 masters, 3 replicas; see cluster.py).

``redis_cluster`` is one cluster for the whole session, started the first time a test asks for it
(about 2 s) and stopped at the end, failures included. ``healthy_cluster`` hands the same cluster to one
test and, before and after it, restarts any node a previous test killed and waits until the cluster is
healthy with every master replicated again, so fault tests can share the session's cluster: ask for
``healthy_cluster`` in a test that kills nodes, for ``redis_cluster`` when it does not matter. Neither
flushes data: give each test its own keys (or call ``flushall()``). ``cluster_server`` is a real server
process on that cluster (pointed at one node's URL, as a user would), one per test module: its sweeper
stops with the module, so tests elsewhere that sweep the cluster themselves see only their own work.
All are imported by conftest.py.

The binary is the one the other tests run (``$SYNC_REDIS_SERVER``, else ``redis-server``, else the bundled
``valkey-server``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import ClusterProcesses
from tests.support.processes import ServerProcess

__all__ = ["cluster_server", "healthy_cluster", "redis_cluster"]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcesses]:
    harness = ClusterProcesses(tmp_path_factory.mktemp("cluster"))
    try:
        harness.start()
        yield harness
    finally:
        harness.stop()


@pytest.fixture
def healthy_cluster(redis_cluster: ClusterProcesses) -> Iterator[ClusterProcesses]:
    redis_cluster.heal()
    yield redis_cluster
    redis_cluster.heal()


@pytest.fixture(scope="module")
def cluster_server(
    redis_cluster: ClusterProcesses, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("cluster-server"), redis_url=redis_cluster.url).start()
    yield proc
    proc.stop()
