"""A real 3-member etcd for the multi-host tests: one per session, on free
loopback ports, under pytest's temporary directory, always stopped.

Each test works under its own key prefix (``prefix``), so tests sharing the
cluster never see each other's keys. A test that kills or stops members
must use ``own_etcd`` (a cluster of its own, function-scoped).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fencefs.etcd.localcluster import LocalCluster, free_ports


def require_etcd() -> None:
    if shutil.which("etcd") is not None:
        return
    reason = "etcd is missing (apt-get install etcd-server; scripts/setup does it)"
    if os.environ.get("CI"):
        pytest.fail(f"multi-host tests must run in CI, but {reason}")
    pytest.skip(reason)


def _start(base: Path) -> LocalCluster:
    ports = free_ports(6)
    cluster = LocalCluster(base, tuple(ports[:3]), tuple(ports[3:]), token=uuid.uuid4().hex)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    require_etcd()
    cluster = _start(tmp_path_factory.mktemp("etcd"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster for one test only (it may kill, stop and restart members)."""
    require_etcd()
    cluster = _start(tmp_path_factory.mktemp("own-etcd"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def prefix() -> bytes:
    return f"/t-{uuid.uuid4().hex[:12]}/".encode()
