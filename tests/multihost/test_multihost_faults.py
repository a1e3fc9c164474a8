"""Faults across hosts, on real processes: etcd members killed, all of etcd
down, bad mount input. Each test has an etcd of its own (``own_etcd``)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from fencefs.etcd.localcluster import LocalCluster, free_ports
from tests.support.mount import Mount
from tests.support.procs import wait_traced

HostsFactory = Callable[..., tuple[Mount, Mount]]   # the hosts fixtures (conftest.py)

UNREACHABLE = errno.EHOSTUNREACH

INCREMENT = r"""
import os, sys, errno, time
path, n = sys.argv[1], int(sys.argv[2])
done = retries = 0
while done < n:
    try:
        with open(path) as f:
            value = int(f.read() or 0)
        with open(path, "w") as f:
            f.write(str(value + 1))
        done += 1
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EHOSTUNREACH):
            raise
        retries += 1
        time.sleep(0.01)
print(done, retries)
"""


def test_all_etcd_down_commit_is_unreachable_then_resumes(own_hosts: HostsFactory,
                                                          own_etcd: LocalCluster) -> None:
    a, b = own_hosts()
    a.seed("f", "committed\n")
    fd = os.open(a.path("f"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"undecidable bytes")
    own_etcd.stop()                               # every member down
    try:
        with pytest.raises(OSError) as info:
            os.close(fd)
        assert info.value.errno == UNREACHABLE
        assert info.value.errno not in (errno.EAGAIN, errno.ESTALE, errno.EBUSY)
        # unchanged everywhere; reads of committed content keep working
        for m in (a, b):
            with open(m.path("f")) as f:
                assert f.read() == "committed\n"
            assert os.getxattr(m.path("f"), "user.fencefs.version") == b"1"
        names = a.rejected()
        assert len(names) == 1 and "unreachable" in names[0]
        assert (a.backing / ".fencefs" / "rejected" / names[0]).read_bytes() == \
            b"undecidable bytes"
        # a new write cannot even be opened: the claim needs etcd
        with pytest.raises(OSError) as info:
            open(b.path("f"), "w")
        assert info.value.errno == UNREACHABLE
    finally:
        own_etcd.start()
    b.seed("f", "after etcd is back\n")
    with open(a.path("f")) as f:
        assert f.read() == "after etcd is back\n"
    assert os.getxattr(a.path("f"), "user.fencefs.version") == b"2"


def test_leader_killed_mid_run_counter_exact(own_hosts: HostsFactory,
                                             own_etcd: LocalCluster) -> None:
    """Four incrementers (two per host) on one counter; the etcd leader is
    SIGKILLed in the middle. No acknowledged increment is lost, none counted
    twice (the final value is exactly the sum), and commits resume."""
    a, b = own_hosts()
    a.seed("counter", "0")
    n = 15
    procs = [subprocess.Popen([sys.executable, "-c", INCREMENT, m.path("counter"), str(n)],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "FENCEFS_AGENT": f"inc-{i}"})
             for i, m in enumerate((a, b, a, b))]
    # kill the leader once some commits landed (evidence: the version moved)
    deadline = time.monotonic() + 60
    while int(os.getxattr(a.path("counter"), "user.fencefs.version")) < 8:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    leader = own_etcd.leader()
    assert leader is not None
    killed_at = time.monotonic()
    own_etcd.stop_member(leader, signal.SIGKILL)
    before = int(os.getxattr(a.path("counter"), "user.fencefs.version"))
    while int(os.getxattr(a.path("counter"), "user.fencefs.version")) <= before + 1:
        assert time.monotonic() < deadline, "no commit after the leader was killed"
        time.sleep(0.01)
    gap = time.monotonic() - killed_at
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        results.append(tuple(int(x) for x in out.split()))
    assert all(done == n for done, _ in results)
    with open(b.path("counter")) as f:
        assert int(f.read()) == 4 * n
    print(f"commits resumed {gap:.2f} s after the leader was killed; retries "
          f"{[r for _, r in results]}")
    own_etcd.start_member(leader)


def _fencefs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fencefs.cli", *args], capture_output=True,
                          text=True, timeout=60)


def _one_line_exit_2(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fencefs: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("urls,cluster,words", [
    ("127.0.0.1:2379", "fencefs", ["URL"]),
    ("http://127.0.0.1:2379,", "fencefs", ["empty"]),
    ("http://127.0.0.1:notaport", "fencefs", ["port"]),
    ("URLS", "a/b", ["URL"]),
    (None, "a/b", ["'/'"]),
])
def test_bad_etcd_input_is_refused(tmp_path: Path, etcd: LocalCluster, urls: str | None,
                                   cluster: str, words: list[str]) -> None:
    backing, mnt = tmp_path / "b", tmp_path / "m"
    backing.mkdir()
    mnt.mkdir()
    proc = _fencefs("mount", "--etcd", urls or etcd.endpoints, "--cluster", cluster,
                    str(backing), str(mnt))
    _one_line_exit_2(proc, *words)
    assert list(backing.iterdir()) == []          # nothing written


def test_unreachable_etcd_refuses_the_mount(tmp_path: Path) -> None:
    backing, mnt = tmp_path / "b", tmp_path / "m"
    backing.mkdir()
    mnt.mkdir()
    dead = ",".join(f"http://127.0.0.1:{p}" for p in free_ports(3))
    proc = _fencefs("mount", "--etcd", dead, str(backing), str(mnt))
    _one_line_exit_2(proc, "unreachable")
    assert list(backing.iterdir()) == []


def test_backing_of_another_cluster_is_refused(hosts: HostsFactory, tmp_path: Path,
                                               etcd: LocalCluster) -> None:
    a, _ = hosts()
    mnt = tmp_path / "other-mnt"
    mnt.mkdir()
    # (a refused mount notes its one line in an existing .fencefs/daemon.log)
    before = sorted(p.name for p in (a.backing / ".fencefs").iterdir()
                    if p.name != "daemon.log")
    proc = _fencefs("mount", "--etcd", etcd.endpoints, "--cluster",
                    f"other{uuid.uuid4().hex[:8]}", str(a.backing), str(mnt))
    _one_line_exit_2(proc, "belongs to fencefs cluster")
    assert sorted(p.name for p in (a.backing / ".fencefs").iterdir()
                  if p.name != "daemon.log") == before
    # and a second backing directory for the same cluster
    other = tmp_path / "other-backing"
    other.mkdir()
    cluster = a.extra[a.extra.index("--cluster") + 1]
    proc = _fencefs("mount", "--etcd", etcd.endpoints, "--cluster", cluster, str(other),
                    str(mnt))
    _one_line_exit_2(proc, "another backing directory")
    assert list(other.iterdir()) == []


def test_options_need_etcd(tmp_path: Path) -> None:
    proc = _fencefs("mount", "--cluster", "x", str(tmp_path), str(tmp_path))
    _one_line_exit_2(proc, "needs --etcd")




def _kill_a_after_decision(a: Mount, text: str) -> None:
    """Write ``text`` on A and SIGKILL A's daemon at the commit's journal
    write: after etcd decided, before the rename."""
    assert a.proc is not None
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-p", str(a.proc.pid), "-o",
                               os.devnull, "-e", "trace=write",
                               "-e", "inject=write:signal=KILL"], stderr=subprocess.DEVNULL)
    wait_traced(a.proc.pid, tracer.pid)  # attached to every thread
    try:
        with open(a.path("plan.md"), "w") as f:
            f.write(text)
    except OSError:
        pass  # the daemon died under the close
    a.proc.wait(timeout=10)
    assert a.proc.returncode == -9
    tracer.wait(timeout=10)
    subprocess.run(["fusermount3", "-u", "-z", str(a.mnt)], capture_output=True)
    if a.proc.stderr:
        a.proc.stderr.close()
    a.proc = None


def test_host_killed_after_decision_rolls_forward_at_its_restart(
        own_hosts: HostsFactory) -> None:
    """The same kill; this time A comes back first: its recovery finds its
    draft named by the etcd record and installs it (not put away)."""
    import shutil

    if shutil.which("strace") is None:
        if os.environ.get("CI"):
            pytest.fail("strace is missing (scripts/setup installs it)")
        pytest.skip("needs strace")
    a, b = own_hosts()
    a.seed("plan.md", "v1\n")
    _kill_a_after_decision(a, "v2 decided by A\n")
    assert (a.backing / "plan.md").read_text() == "v1\n"
    a.start()
    assert (a.backing / "plan.md").read_text() == "v2 decided by A\n"
    assert os.getxattr(b.path("plan.md"), "user.fencefs.version") == b"2"
    assert a.rejected() == [] and os.listdir(a.backing / ".fencefs" / "drafts") == []
    assert "rolled plan.md forward" in a.log()


def test_host_killed_between_decision_and_rename_is_rolled_forward(
        own_hosts: HostsFactory) -> None:
    """A's daemon is SIGKILLed after etcd decided its commit and before the
    rename (strace kills it at the commit's journal write, which comes after
    the transaction and before the rename). Host B rolls the file forward:
    it ends at the decided version with the decided bytes; B's own write
    then rests on it."""
    import shutil

    if shutil.which("strace") is None:
        if os.environ.get("CI"):
            pytest.fail("strace is missing (scripts/setup installs it)")
        pytest.skip("needs strace")
    a, b = own_hosts()
    a.seed("plan.md", "v1\n")
    _kill_a_after_decision(a, "v2 decided by A\n")
    # etcd has v2; the backing still has v1 and the decided draft in drafts/
    assert (b.backing / "plan.md").read_text() == "v1\n"
    assert len(os.listdir(b.backing / ".fencefs" / "drafts")) == 1
    with open(b.path("plan.md"), "a") as f:     # B looks at the file to write it
        f.write("v3 by B\n")
    with open(b.path("plan.md")) as f:
        assert f.read() == "v2 decided by A\nv3 by B\n"
    assert os.getxattr(b.path("plan.md"), "user.fencefs.version") == b"3"
    assert os.listdir(b.backing / ".fencefs" / "drafts") == []
    # A comes back: nothing of its own is left to recover, nothing put away
    a.start()
    with open(a.path("plan.md")) as f:
        assert f.read() == "v2 decided by A\nv3 by B\n"
    assert a.rejected() == []


class Proxy:
    """A TCP proxy on loopback in front of one etcd member; ``cut`` makes it
    refuse new connections and drop open ones (a partition), ``heal`` undoes."""

    def __init__(self, upstream: int) -> None:
        import socket
        import threading

        self.upstream = upstream
        self.port = free_ports(1)[0]
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.heal()

    def heal(self) -> None:
        import socket
        import threading

        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s: object) -> None:
        import socket
        import threading

        assert isinstance(s, socket.socket)
        while True:
            try:
                client, _ = s.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: object, b: object) -> None:
        import socket

        assert isinstance(a, socket.socket) and isinstance(b, socket.socket)
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for x in (a, b):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        import socket

        assert self.listener is not None
        try:
            self.listener.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for s in self.open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.open = []


def test_one_host_partitioned_from_etcd(own_hosts: HostsFactory,
                                        own_etcd: LocalCluster) -> None:
    """Host A reaches etcd only through proxies; cutting them partitions A
    while B goes on. A's commit fails with EHOSTUNREACH (file unchanged, bytes
    in rejected/), B commits meanwhile; healed, A sees B's version and commits."""
    proxies = [Proxy(port) for port in own_etcd.client_ports]
    via = ",".join(f"http://127.0.0.1:{p.port}" for p in proxies)
    a = b = None
    try:
        a, b = own_hosts(endpoints=via)      # both mount through the proxies ...
        b.stop()                             # ... then B comes back direct to etcd
        b.extra[b.extra.index("--etcd") + 1] = own_etcd.endpoints
        b.start()
        a.seed("f", "v1\n")
        fd = os.open(a.path("f"), os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"from the partitioned host")
        for p in proxies:
            p.cut()
        with pytest.raises(OSError) as info:
            os.close(fd)
        assert info.value.errno == UNREACHABLE
        b.seed("f", "v2 from B\n")           # the rest of the cluster goes on
        with open(a.path("f")) as f:         # A still reads installed content
            assert f.read() == "v2 from B\n"
        assert [n for n in a.rejected() if "unreachable" in n]
    finally:
        for p in proxies:
            if p.listener is not None and p.listener.fileno() == -1:
                p.heal()
    a.seed("f", "v3 from A, healed\n")
    with open(b.path("f")) as f:
        assert f.read() == "v3 from A, healed\n"
    assert os.getxattr(b.path("f"), "user.fencefs.version") == b"3"
