"""etcd away while a daemon starts (after the mount command's own check
passed): the daemon retries with backoff within --etcd-start-timeout, then
serves; or gives up with one line and no mount left behind.

The daemon reaches etcd through a proxy that lets the first ``allow``
connections through and then refuses new ones until the test heals it. The
mount command's check uses one connection; the daemon's marker check opens
the second, its lease the third (a daemon with no drafts to recover makes no
request for them): ``allow=1`` makes etcd vanish before the marker check,
``allow=2`` before the lease, which comes after the FUSE mount.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from fencefs.etcd.localcluster import LocalCluster
from tests.multihost.test_multihost_faults import Proxy
from tests.support.mount import mounted, require_fuse


class Gate(Proxy):
    """A ``Proxy`` that stops listening after ``allow`` connections."""

    def __init__(self, upstream: int, allow: int) -> None:
        self.allow: int | None = allow
        self.accepted = 0
        super().__init__(upstream)

    def reopen(self) -> None:
        """Listen again, with no limit."""
        self.allow = None
        self.heal()

    def _accept(self, s: object) -> None:
        assert isinstance(s, socket.socket)
        while True:
            try:
                client, _ = s.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()
            self.accepted += 1
            if self.allow is not None and self.accepted >= self.allow:
                s.close()        # new connections are refused from now on
                return


def _start(tmp_path: Path, gate: Gate, patience: float) -> tuple[subprocess.Popen[str], Path,
                                                                   Path]:
    backing, mnt, log = tmp_path / "backing", tmp_path / "mnt", tmp_path / "daemon.log"
    backing.mkdir()
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fencefs.cli", "mount", "--foreground", "--log-file", str(log),
         "--etcd", f"http://127.0.0.1:{gate.port}", "--cluster", f"s{uuid.uuid4().hex[:8]}",
         "--host-id", "host-A", "--lease-ttl", "6", "--etcd-start-timeout", str(patience),
         str(backing), str(mnt)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, mnt, log


def _wait_log(proc: subprocess.Popen[str], log: Path, words: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not (log.exists() and words in log.read_text()):
        assert proc.poll() is None, f"daemon exited ({proc.returncode}):\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {words!r} in the log:\n{log.read_text()}"
        time.sleep(0.02)


@pytest.mark.parametrize("allow,step", [(1, "checking the backing marker"),
                                        (2, "taking this host's lease")])
def test_daemon_waits_for_etcd_while_it_starts(tmp_path: Path, etcd: LocalCluster,
                                               allow: int, step: str) -> None:
    require_fuse()
    gate = Gate(etcd.client_ports[0], allow)
    proc, mnt, log = _start(tmp_path, gate, patience=60)
    try:
        _wait_log(proc, log, f"etcd unreachable while {step}: retrying")
        gate.reopen()
        _wait_log(proc, log, "fencefs ready")
        (mnt / "f").write_text("served once etcd came back\n")
        assert (mnt / "f").read_text() == "served once etcd came back\n"
        assert b"1" == subprocess.run(["getfattr", "--only-values", "-n",
                                       "user.fencefs.version", str(mnt / "f")],
                                      capture_output=True).stdout.strip()
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        _, err = proc.communicate(timeout=30)
        gate.cut()
    assert proc.returncode == 0, err
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("allow,step", [(1, "checking the backing marker"),
                                        (2, "taking this host's lease")])
def test_daemon_gives_up_with_one_line_after_the_start_timeout(
        tmp_path: Path, etcd: LocalCluster, allow: int, step: str) -> None:
    require_fuse()
    gate = Gate(etcd.client_ports[0], allow)
    proc, mnt, log = _start(tmp_path, gate, patience=1.5)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        gate.cut()
        if proc.poll() is None:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fencefs: cannot "), err
    assert "etcd unreachable for 1.5 s" in lines[0] and step in lines[0], lines[0]
    assert not mounted(str(mnt))
    text = log.read_text()
    assert "Traceback" not in text and lines[0].removeprefix("fencefs: ") in text, text
