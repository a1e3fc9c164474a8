"""Leases and the exclusive policy, through real mounts (issue 4)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.mount import Mount
from tests.support.procs import run_py

HOLDER = textwrap.dedent("""
    import os, sys, errno
    fd = os.open(sys.argv[1], os.O_RDWR)
    os.write(fd, sys.argv[2].encode())
    print("holding", flush=True)
    sys.stdin.readline()
    try:
        os.write(fd, b" more")
        os.close(fd)
        print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
""")

OPEN_ONCE = textwrap.dedent("""
    import os, sys, errno
    try:
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)
        os.write(fd, sys.argv[2].encode())
        os.close(fd)
        print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
""")


def holder(path: str, text: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, path, text], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


def finish(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate("go\n", timeout=30)
    return out.strip()


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
        assert run_py(OPEN_ONCE, path, "second").stdout.strip() == "EBUSY"
        # Readers are never kept out.
        assert run_py("import sys; print(open(sys.argv[1]).read())", path).stdout.strip() == "v1"
    finally:
        assert finish(first) == "ok"
    assert run_py(OPEN_ONCE, path, "second").stdout.strip() == "ok"
    assert any(e["event"] == "busy" for e in mount.journal())


def test_optimistic_never_busy(mount: Mount) -> None:
    path = seed(mount)
    first = holder(path, "first")
    try:
        assert run_py(OPEN_ONCE, path, "second").stdout.strip() == "ok"
    finally:
        assert finish(first) == "EAGAIN"


def test_wait_succeeds_when_holder_closes(make_mount) -> None:  # type: ignore[no-untyped-def]
    mount = make_mount("--policy", "exclusive", "--wait", "10")
    path = seed(mount)
    first = holder(path, "first")
    waiter = subprocess.Popen([sys.executable, "-c", OPEN_ONCE, path, "second"],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert waiter.poll() is None  # still waiting for the holder
    assert finish(first) == "ok"
    out, _ = waiter.communicate(timeout=10)
    assert out.strip() == "ok"
    with open(path) as f:
        assert f.read() == "second"


def test_interrupted_wait_gets_eintr_and_leaves_no_claim(make_mount) -> None:  # type: ignore[no-untyped-def]
    mount = make_mount("--policy", "exclusive", "--wait", "30")
    path = seed(mount)
    first = holder(path, "first")
    code = textwrap.dedent("""
        import os, sys, signal, errno
        class Interrupted(Exception):
            pass
        def handler(signum, frame):
            raise Interrupted()
        signal.signal(signal.SIGUSR1, handler)
        print("waiting", flush=True)
        try:
            os.open(sys.argv[1], os.O_WRONLY)
            print("opened")
        except Interrupted:
            print("interrupted")
        except OSError as e:
            print(errno.errorcode[e.errno])
    """)
    waiter = subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE,
                              text=True)
    assert waiter.stdout is not None and waiter.stdout.readline().strip() == "waiting"
    time.sleep(0.3)
    started = time.monotonic()
    waiter.send_signal(signal.SIGUSR1)
    out, _ = waiter.communicate(timeout=10)
    assert out.strip() == "interrupted"
    assert time.monotonic() - started < 5  # not the 30 s wait
    assert f"pid={waiter.pid}" not in xattr(path, "claims")
    assert finish(first) == "ok"


def test_expired_lease_is_reclaimed_and_old_holder_fenced(make_mount) -> None:  # type: ignore[no-untyped-def]
    mount = make_mount("--policy", "exclusive", "--lease-ttl", "300ms")
    path = seed(mount)
    old = holder(path, "stale work")
    old.send_signal(signal.SIGSTOP)  # stalls across the expiry
    time.sleep(0.6)
    assert run_py(OPEN_ONCE, path, "new holder").stdout.strip() == "ok"
    assert xattr(path, "epoch") == "1"
    reclaims = [e for e in mount.journal() if e["event"] == "reclaim"]
    assert reclaims and reclaims[0]["reason"] == "lease-expired"
    old.send_signal(signal.SIGCONT)
    assert finish(old) == "ESTALE"
    with open(path) as f:
        assert f.read() == "new holder"
    assert any(".fenced." in n for n in mount.rejected())


def test_live_lease_renewed_by_writes_and_setfattr(make_mount) -> None:  # type: ignore[no-untyped-def]
    mount = make_mount("--policy", "exclusive", "--lease-ttl", "400ms")
    path = seed(mount)
    env = {"FENCEFS_AGENT": "keeper"}
    first = holder(path, "first", env)
    try:
        for _ in range(4):  # 1.2 s in all, three times the TTL
            time.sleep(0.2)
            subprocess.run(["setfattr", "-n", "user.fencefs.renew", "-v", "1", path],
                           check=True, env={**os.environ, **env})
        assert run_py(OPEN_ONCE, path, "intruder").stdout.strip() == "EBUSY"
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
    time.sleep(0.4)
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
        assert run_py(OPEN_ONCE, path, "second").stdout.strip() == "EBUSY"
    finally:
        assert finish(first) == "ok"
