"""A real 3-member etcd for the multi-host tests: one per session, on free
loopback ports, under pytest's temporary directory, always stopped.

Each test works under its own key prefix (``prefix``), so tests sharing the
cluster never see each other's keys. A test that kills or stops members
must use ``own_etcd`` (a cluster of its own, function-scoped).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fencefs.etcd.localcluster import LocalCluster, free_ports
from tests.support.mount import Mount, require_fuse

HostsFactory = Callable[..., tuple[Mount, Mount]]


def require_etcd() -> None:
    if shutil.which("etcd") is not None:
        return
    reason = "etcd is missing (apt-get install etcd-server; scripts/setup does it)"
    if os.environ.get("CI"):
        pytest.fail(f"multi-host tests must run in CI, but {reason}")
    pytest.skip(reason)


def _start(base: Path) -> LocalCluster:
    ports = free_ports(6)
    cluster = LocalCluster(base, tuple(ports[:3]), tuple(ports[3:]), token=uuid.uuid4().hex,
                           die_with_parent=True)
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


def ready(m: Mount, timeout: float = 20.0) -> None:
    """Wait for the daemon's "fencefs ready" line: the kernel sees the mount
    before the daemon holds its etcd lease, and a test that stops etcd in
    between would kill a daemon still starting, not test a running one."""
    deadline = time.monotonic() + timeout
    while "fencefs ready" not in m.log():
        assert m.proc is not None and m.proc.poll() is None, f"daemon died:\n{m.log()}"
        assert time.monotonic() < deadline, f"daemon not ready in {timeout} s:\n{m.log()}"
        time.sleep(0.02)


def _hosts(tmp_path: Path, cluster: LocalCluster) -> Iterator[HostsFactory]:
    require_fuse()
    made: list[Mount] = []
    name = f"t{uuid.uuid4().hex[:10]}"
    backing = tmp_path / "backing"
    backing.mkdir()

    def make(*extra: str, endpoints: str | None = None) -> tuple[Mount, Mount]:
        pair = []
        for host in ("A", "B"):
            base = tmp_path / host
            base.mkdir()
            m = Mount(base, "--etcd", endpoints or cluster.endpoints, "--cluster", name,
                      "--host-id", f"host-{host}", *extra)
            m.backing = backing
            m.start()
            made.append(m)
            ready(m)
            pair.append(m)
        return pair[0], pair[1]

    yield make
    for m in made:
        m.stop()
    for m in made:
        log = m.log()
        assert "Traceback" not in log and " ERROR " not in log, f"daemon logged errors:\n{log}"


@pytest.fixture
def hosts(tmp_path: Path, etcd: LocalCluster) -> Iterator[HostsFactory]:
    """make(*extra) -> (A, B): two daemons ("hosts") over one backing directory,
    on the session's etcd, under a cluster name of their own."""
    yield from _hosts(tmp_path, etcd)


@pytest.fixture
def own_hosts(tmp_path: Path, own_etcd: LocalCluster) -> Iterator[HostsFactory]:
    """As ``hosts``, on an etcd of the test's own (``own_etcd``: it may kill members)."""
    yield from _hosts(tmp_path, own_etcd)
