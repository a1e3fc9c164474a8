"""Leases and the exclusive policy, through real mounts (issue 4)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.agent import Agent, run_agent
from tests.support.mount import Mount
from tests.support.procs import in_syscall, run_py, wait_in_syscall


class Holder:
    """An agent that opened ``path`` read-write and wrote ``text`` to it."""

    def __init__(self, path: str, text: str, env: dict[str, str] | None = None) -> None:
        self.agent = Agent((env or {}).get("FENCEFS_AGENT"))
        self.pid = self.agent.pid
        self.fd = self.agent.ok("open", path, "O_RDWR")
        assert self.agent.ok("write", self.fd, text) == len(text)

    def send_signal(self, sig: int) -> None:
        self.agent.proc.send_signal(sig)


def holder(path: str, text: str, env: dict[str, str] | None = None) -> Holder:
    return Holder(path, text, env)


def finish(proc: Holder) -> str:
    """The holder writes " more" and closes: "ok" or the errno's name."""
    try:
        return proc.agent.outcome("finish", proc.fd, " more")
    finally:
        proc.agent.close()


def open_once(path: str, text: str) -> str:
    """A fresh process opens ``path`` O_WRONLY|O_TRUNC, writes, closes:
    "ok" or the errno's name."""
    answer = run_agent([["writefile", path, text, "O_WRONLY|O_TRUNC"]])[0]
    return "ok" if "ok" in answer else str(answer["err"])


def xattr(path: str, name: str) -> str:
    return os.getxattr(path, f"user.fencefs.{name}").decode()


def seed(mount: Mount, name: str = "plan.md", text: str = "v1") -> str:
    return mount.seed(name, text)


def test_exclusive_second_writer_gets_ebusy(mount: Mount) -> None:
    path = seed(mount)
    os.setxattr(path, "user.fencefs.policy", b"exclusive")
    assert xattr(path, "policy") == "exclusive"
    first = holder(path, "first")
    try:
        assert open_once(path, "second") == "EBUSY"
        # Readers are never kept out.
        assert run_py("import sys; print(open(sys.argv[1]).read())", path).stdout.strip() == "v1"
    finally:
        assert finish(first) == "ok"
    assert open_once(path, "second") == "ok"
    assert any(e["event"] == "busy" for e in mount.journal())


def test_optimistic_never_busy(mount: Mount) -> None:
    path = seed(mount)
    first = holder(path, "first")
    try:
        assert open_once(path, "second") == "ok"
    finally:
        assert finish(first) == "EAGAIN"


def test_wait_succeeds_when_holder_closes(make_mount, agents) -> None:  # type: ignore[no-untyped-def]
    mount = make_mount("--policy", "exclusive", "--wait", "10")
    path = seed(mount)
    first = holder(path, "first")
    waiter = agents()
    waiter.send("writefile", path, "second", "O_WRONLY|O_TRUNC")
    wait_in_syscall(waiter.pid, "openat")  # evidence: the waiter is inside its open
    assert in_syscall(waiter.pid, "openat")  # still waiting for the holder
    assert finish(first) == "ok"
    assert waiter.answer() == {"ok": 6}
    with open(path) as f:
        assert f.read() == "second"


def test_interrupted_wait_gets_eintr_and_leaves_no_claim(make_mount, agents) -> None:  # type: ignore[no-untyped-def]
    mount = make_mount("--policy", "exclusive", "--wait", "30")
    path = seed(mount)
    first = holder(path, "first")
    waiter = agents()
    waiter.send("open_interruptible", path, "O_WRONLY")  # SIGUSR1 interrupts its open
    waiter.wait_event("open")
    wait_in_syscall(waiter.pid, "openat")  # evidence: it waits inside the open
    started = time.monotonic()
    waiter.proc.send_signal(signal.SIGUSR1)
    assert waiter.answer() == {"ok": "interrupted"}
    assert time.monotonic() - started < 5  # not the 30 s wait
    assert f"pid={waiter.pid}" not in xattr(path, "claims")
    assert finish(first) == "ok"


def test_expired_lease_is_reclaimed_and_old_holder_fenced(make_mount) -> None:  # type: ignore[no-untyped-def]
    mount = make_mount("--policy", "exclusive", "--lease-ttl", "300ms")
    path = seed(mount)
    old = holder(path, "stale work")
    old.send_signal(signal.SIGSTOP)  # stalls across the expiry
    mount.wait_lease_expired("plan.md")
    assert open_once(path, "new holder") == "ok"
    assert xattr(path, "epoch") == "1"
    reclaims = [e for e in mount.journal() if e["event"] == "reclaim"]
    assert reclaims and reclaims[0]["reason"] == "lease-expired"
    old.send_signal(signal.SIGCONT)
    assert finish(old) == "ESTALE"
    with open(path) as f:
        assert f.read() == "new holder"
    assert any(".fenced." in n for n in mount.rejected())


def test_live_lease_renewed_by_writes_and_setfattr(make_mount) -> None:  # type: ignore[no-untyped-def]
    # A TTL long enough that no process start outlasts it; renewed four
    # times, each once a second of it has gone: 4 s in all, past the TTL.
    mount = make_mount("--policy", "exclusive", "--lease-ttl", "3s")
    path = seed(mount)
    env = {"FENCEFS_AGENT": "keeper"}
    first = holder(path, "first", env)
    try:
        for _ in range(4):
            deadline = time.monotonic() + 30
            while min(mount.leases_left("plan.md")) > 2.0:  # a second went by
                assert time.monotonic() < deadline
                time.sleep(0.02)
            subprocess.run(["setfattr", "-n", "user.fencefs.renew", "-v", "1", path],
                           check=True, env={**os.environ, **env})
            assert min(mount.leases_left("plan.md")) > 2.0  # renewed to the full TTL
        assert open_once(path, "intruder") == "EBUSY"
    finally:
        assert finish(first) == "ok"
    # Renewing without a write claim of your own is refused.
    result = subprocess.run(["setfattr", "-n", "user.fencefs.renew", "-v", "1", path],
                            capture_output=True)
    assert result.returncode != 0


def test_reclaim_expired_and_agent(make_mount) -> None:  # type: ignore[no-untyped-def]
    mount = make_mount("--lease-ttl", "200ms")
    a, b, c = (seed(mount, n) for n in ("a.md", "b.md", "c.md"))
    bob = holder(a, "bob's", {"FENCEFS_AGENT": "bob"})
    run_py("import sys; open(sys.argv[1]).read()", b, env={"FENCEFS_AGENT": "bob"})
    mount.wait_lease_expired("a.md")
    cli = [sys.executable, "-m", "fencefs.cli", "reclaim"]
    out = subprocess.run([*cli, "--expired", str(mount.mnt)], capture_output=True, text=True)
    assert out.returncode == 0 and "a.md: reclaimed, epoch 1" in out.stdout
    assert (xattr(a, "epoch"), xattr(b, "epoch"), xattr(c, "epoch")) == ("1", "0", "0")
    out = subprocess.run([*cli, "--agent", "bob", str(mount.mnt)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    # bob holds a (revoked) write claim on a.md and a read claim on b.md.
    assert (xattr(a, "epoch"), xattr(b, "epoch"), xattr(c, "epoch")) == ("2", "1", "0")
    assert finish(bob) == "ESTALE"
    bad = subprocess.run([*cli, "--agent", "bob", "--expired", str(mount.mnt)],
                         capture_output=True, text=True)
    assert bad.returncode == 2


def test_sweep_reclaims_idle_claims(make_mount) -> None:  # type: ignore[no-untyped-def]
    mount = make_mount("--sweep-after", "300ms", "--upkeep-interval", "0.1")
    path = seed(mount)
    idle = holder(path, "idle")
    deadline = time.monotonic() + 10
    while xattr(path, "epoch") == "0":
        assert time.monotonic() < deadline, "the sweep never reclaimed"
        time.sleep(0.05)
    assert finish(idle) == "ESTALE"
    assert any(e["event"] == "reclaim" and e["reason"] == "idle" for e in mount.journal())


def test_status_table_and_json(make_mount) -> None:  # type: ignore[no-untyped-def]
    mount = make_mount("--lease-ttl", "60s")
    path = seed(mount)
    os.setxattr(path, "user.fencefs.policy", b"exclusive")
    h = holder(path, "x", {"FENCEFS_AGENT": "writer-1"})
    try:
        out = subprocess.run([sys.executable, "-m", "fencefs.cli", "status", str(mount.mnt),
                              "--json"], capture_output=True, text=True, check=True).stdout
        rows = json.loads(out)
        assert len(rows) == 1
        row = rows[0]
        assert (row["file"], row["version"], row["epoch"], row["policy"]) == \
            ("plan.md", 1, 0, "exclusive")
        (claim,) = [c for c in row["claims"] if c["kind"] == "write"]
        assert (claim["identity"], claim["pid"], claim["version"], claim["epoch"]) == \
            ("agent:writer-1", h.pid, 1, 0)
        assert 55 < claim["lease_left"] <= 60
        table = subprocess.run([sys.executable, "-m", "fencefs.cli", "status", str(mount.mnt)],
                               capture_output=True, text=True, check=True).stdout.splitlines()
        assert table[0].split()[:4] == ["FILE", "VER", "EPOCH", "POLICY"]
        fields = table[1].split()
        assert fields[:8] == ["plan.md", "1", "0", "exclusive", "agent:writer-1", str(h.pid),
                              "write", "v1/e0"]
        assert fields[8].endswith("s")
    finally:
        assert finish(h) == "ok"


def test_policy_persists_and_bad_values_change_nothing(mount: Mount) -> None:
    path = seed(mount)
    os.setxattr(path, "user.fencefs.policy", b"exclusive")
    for bad in (b"Exclusive", b"", b"exclusive\0", b"\xff" * 5000):
        with pytest.raises(OSError) as info:
            os.setxattr(path, "user.fencefs.policy", bad)
        assert info.value.errno == errno.EINVAL
    mount.remount()
    assert xattr(path, "policy") == "exclusive"
    os.setxattr(path, "user.fencefs.policy", b"optimistic")
    mount.remount()
    assert xattr(path, "policy") == "optimistic"


def test_mount_wide_default_policy(make_mount) -> None:  # type: ignore[no-untyped-def]
    mount = make_mount("--policy", "exclusive")
    path = seed(mount)
    assert xattr(path, "policy") == "exclusive"
    first = holder(path, "first")
    try:
        assert open_once(path, "second") == "EBUSY"
    finally:
        assert finish(first) == "ok"
