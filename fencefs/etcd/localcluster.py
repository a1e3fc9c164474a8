"""A 3-member etcd on loopback: for tests, demos and ``scripts/etcd-cluster``.

Plain standard library (subprocess, urllib), no trio, so a shell script or a
pytest fixture can use it. Each member ``mN`` keeps its data in
``DIR/mN/``, its log in ``DIR/mN.log`` and its pid in ``DIR/mN.pid``;
``DIR/cluster.json`` records the ports so that ``stop`` (and a member
restart) need nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_CLIENT_PORTS = (23791, 23792, 23793)
DEFAULT_PEER_PORTS = (23801, 23802, 23803)


class ClusterError(Exception):
    """The cluster could not be started or stopped; the message says why."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on loopback right now."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class LocalCluster:
    """Three etcd members on loopback, state under ``base``."""

    base: Path
    client_ports: tuple[int, ...] = DEFAULT_CLIENT_PORTS
    peer_ports: tuple[int, ...] = DEFAULT_PEER_PORTS
    token: str = "fencefs"
    # members get SIGTERM when the process that started them dies (tests)
    die_with_parent: bool = False
    # https for clients, with client certificates required: a directory with
    # ca.pem, server.pem, server-key.pem, client.pem, client-key.pem (the
    # server certificate for IP 127.0.0.1); None: plain http
    tls: Path | None = None
    _procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def names(self) -> list[str]:
        return [f"m{i + 1}" for i in range(len(self.client_ports))]

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def urls(self) -> list[str]:
        return [f"{self.scheme}://{HOST}:{p}" for p in self.client_ports]

    @property
    def endpoints(self) -> str:
        """The comma-separated client URLs, as ``--etcd`` takes them."""
        return ",".join(self.urls)

    def _initial(self) -> str:
        return ",".join(f"{n}=http://{HOST}:{p}" for n, p in zip(self.names, self.peer_ports,
                                                                     strict=True))

    def _pidfile(self, i: int) -> Path:
        return self.base / f"{self.names[i]}.pid"

    def pid(self, i: int) -> int | None:
        try:
            pid = int(self._pidfile(i).read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    # -- start / stop ----------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start every member not yet running and wait until all are healthy."""
        if shutil.which("etcd") is None:
            raise ClusterError("etcd not found on PATH (apt-get install etcd-server)")
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "cluster.json").write_text(json.dumps({
            "client_ports": list(self.client_ports), "peer_ports": list(self.peer_ports),
            "token": self.token, "tls": str(self.tls) if self.tls is not None else None}))
        for i in range(len(self.names)):
            if self.pid(i) is None:
                self.start_member(i, wait=False)
        self.wait_healthy(timeout)

    def start_member(self, i: int, wait: bool = True, timeout: float = 30.0) -> None:
        name, cport, pport = self.names[i], self.client_ports[i], self.peer_ports[i]
        data = self.base / name
        state = "existing" if data.exists() else "new"
        cmd = ["etcd", "--name", name, "--data-dir", str(data),
               "--listen-client-urls", f"{self.scheme}://{HOST}:{cport}",
               "--advertise-client-urls", f"{self.scheme}://{HOST}:{cport}",
               "--listen-peer-urls", f"http://{HOST}:{pport}",
               "--initial-advertise-peer-urls", f"http://{HOST}:{pport}",
               "--initial-cluster", self._initial(),
               "--initial-cluster-state", state,
               "--initial-cluster-token", self.token,
               "--logger", "zap", "--log-outputs", "stderr"]
        if self.tls is not None:
            cmd += ["--cert-file", str(self.tls / "server.pem"),
                    "--key-file", str(self.tls / "server-key.pem"),
                    "--trusted-ca-file", str(self.tls / "ca.pem"), "--client-cert-auth"]
        log = open(self.base / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True,
                                    preexec_fn=_die_with_parent if self.die_with_parent
                                    else None)
        finally:
            log.close()
        self._procs[i] = proc
        self._pidfile(i).write_text(str(proc.pid))
        if wait:
            self.wait_member(i, timeout)

    def stop_member(self, i: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop member ``i`` (SIGKILL with ``sig=signal.SIGKILL``: a crash)."""
        pid = self.pid(i)
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            proc = self._procs.pop(i, None)
            if proc is not None and proc.pid == pid:
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:
                _wait_gone(pid, timeout)
        self._pidfile(i).unlink(missing_ok=True)

    def stop(self) -> None:
        for i in range(len(self.names)):
            self.stop_member(i)

    # -- health ----------------------------------------------------------------

    def _context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls / "ca.pem"))
        ctx.load_cert_chain(str(self.tls / "client.pem"), str(self.tls / "client-key.pem"))
        return ctx

    def healthy(self, i: int) -> bool:
        try:
            with urllib.request.urlopen(f"{self.urls[i]}/health", timeout=1,
                                        context=self._context()) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def wait_member(self, i: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy(i):
            if self.pid(i) is None:
                raise ClusterError(f"etcd {self.names[i]} died; see {self.base}/"
                                   f"{self.names[i]}.log")
            if time.monotonic() > deadline:
                raise ClusterError(f"etcd {self.names[i]} not healthy after {timeout:.0f} s")
            time.sleep(0.05)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        for i in range(len(self.names)):
            self.wait_member(i, timeout)

    def status(self, i: int) -> dict[str, str] | None:
        """Member ``i``'s maintenance status (``leader``, ``header.member_id``)."""
        req = urllib.request.Request(f"{self.urls[i]}/v3/maintenance/status", data=b"{}",
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=1, context=self._context()) as r:
                body = json.loads(r.read())
        except (OSError, ValueError):
            return None
        return {"member": str(body.get("header", {}).get("member_id", "")),
                "leader": str(body.get("leader", ""))}

    def leader(self) -> int | None:
        """The index of the current leader, if a live member knows it."""
        ids: dict[str, int] = {}
        leader = None
        for i in range(len(self.names)):
            st = self.status(i)
            if st is None:
                continue
            ids[st["member"]] = i
            if st["leader"] not in ("", "0"):
                leader = st["leader"]
        return ids.get(leader) if leader else None


def _die_with_parent() -> None:
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + timeout
        time.sleep(0.02)


def load(base: Path) -> LocalCluster:
    """The cluster whose state is under ``base`` (as ``start`` recorded it)."""
    try:
        cfg = json.loads((base / "cluster.json").read_text())
    except (FileNotFoundError, ValueError) as e:
        raise ClusterError(f"no cluster recorded under {base}: {e}") from None
    tls = cfg.get("tls")
    return LocalCluster(base, tuple(cfg["client_ports"]), tuple(cfg["peer_ports"]),
                        cfg.get("token", "fencefs"), tls=Path(tls) if tls else None)
