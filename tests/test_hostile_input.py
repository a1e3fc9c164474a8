"""Bad input (issue 7, item 4): hostile names, attribute values, identities,
paths that try to leave the backing directory, and clients that hoard
handles. Each gets a clear errno or a bounded behaviour; the daemon never
crashes and never writes outside the backing directory.

The property-based test drives one mount with many generated inputs and
checks, after each, that the daemon answers, that no errno is EIO (the
boundary's answer to an unexpected exception), and that nothing outside the
backing directory changed.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from tests.support.agent import Agent, run_agent
from tests.support.explore import examples
from tests.support.mount import ROOT, Mount
from tests.support.procs import run_py

CONTROL = ("version", "epoch", "claims", "claim", "policy", "reclaim", "renew", "status",
           "reclaim-expired", "reclaim-agent", "state", "draft", "", "x" * 200)
HOSTILE_NAMES = [
    b"new\nline", b"\xff\xfe not utf-8", b"\x1b[31mred\x1b[0m", b"-n", b" spaced ",
    b"tab\there", b"back\\slash", b"%2F looks like a slash", b"a" * 255,
    "\u202eevil-rtl".encode(), b"\x7f", b"\r",
]


def fencefs_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fencefs.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, errors="surrogateescape")


def no_control_chars(text: str) -> bool:
    return all(ch == "\n" or (ch.isprintable() and not 0xDC80 <= ord(ch) <= 0xDCFF)
               for ch in text)


def alive(m: Mount) -> None:
    assert m.proc is not None and m.proc.poll() is None, "the daemon died"
    os.stat(m.mnt)
    os.listdir(m.mnt)


def test_hostile_names_work_end_to_end(mount: Mount) -> None:
    mnt = os.fsencode(mount.mnt)
    for i, name in enumerate(HOSTILE_NAMES):
        path = mnt + b"/" + name
        with open(path, "wb") as f:
            f.write(b"one %d" % i)
        stale = os.open(path, os.O_RDWR)
        os.write(stale, b"zombie")
        os.setxattr(path, "user.fencefs.reclaim", b"1")
        with pytest.raises(OSError) as info:
            os.close(stale)
        assert info.value.errno == errno.ESTALE
        with open(path, "rb") as f:
            assert f.read() == b"one %d" % i
        assert os.getxattr(path, "user.fencefs.epoch") == b"1"
        moved = mnt + b"/" + name[:240] + b".moved"
        os.rename(path, moved)
        os.rename(moved, path)
    listed = set(os.listdir(mnt))
    assert set(HOSTILE_NAMES) <= listed
    rejected = os.listdir(mount.backing / ".fencefs/rejected")
    assert len(rejected) == len(HOSTILE_NAMES)
    assert all(len(os.fsencode(r)) <= 255 and "/" not in r for r in rejected)
    journal = mount.journal()
    assert {os.fsencode(e["file"]) for e in journal if e["event"] == "fenced"} \
        == set(HOSTILE_NAMES)
    assert all(e.get("rejected") in rejected for e in journal if e["event"] == "fenced")
    # What the CLI prints for people: one line per entry, nothing raw.
    log = fencefs_cli("log", str(mount.mnt))
    assert log.returncode == 0, log.stderr
    assert no_control_chars(log.stdout), log.stdout
    assert len(log.stdout.splitlines()) == 1 + len(journal)
    as_json = fencefs_cli("log", str(mount.mnt), "--json")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == journal
    holder = Agent()
    try:
        for n in HOSTILE_NAMES:  # a write claim on each
            holder.ok("open", os.fsdecode(mnt + b"/" + n), "O_RDWR")
        status = fencefs_cli("status", str(mount.mnt))
        assert status.returncode == 0, status.stderr
        assert no_control_chars(status.stdout), status.stdout
        # a write claim (the holder) and a read claim (this test) per file,
        # then one line on what .fencefs/ keeps
        assert len(status.stdout.splitlines()) == 1 + 2 * len(HOSTILE_NAMES) + 1
        assert status.stdout.splitlines()[-1].startswith("kept in ")
        reclaim = fencefs_cli("reclaim", *[os.fsdecode(mnt + b"/" + n) for n in HOSTILE_NAMES])
        assert reclaim.returncode == 0, reclaim.stderr
        assert no_control_chars(reclaim.stdout), reclaim.stdout
        assert len(reclaim.stdout.splitlines()) == len(HOSTILE_NAMES)
    finally:
        holder.kill()
    alive(mount)


def test_names_too_long_get_enametoolong(mount: Mount) -> None:
    long = mount.path("n" * 256)
    mount.seed("short", "s")
    for action in (lambda: open(long, "w").close(), lambda: os.mkdir(long),
                   lambda: os.rename(mount.path("short"), long),
                   lambda: os.symlink("short", long)):
        with pytest.raises(OSError) as info:
            action()
        assert info.value.errno == errno.ENAMETOOLONG
    alive(mount)


def test_hostile_agent_values_are_bounded(mount: Mount) -> None:
    path = mount.seed("plan.md", "v1")
    agents = {
        "huge": "A" * 100_000,
        "binary": os.fsdecode(b"\xff\xfe\x01\n\x1b[2J" * 50),
        "spaces": "  agent with = signs and spaces  ",
    }
    for label, value in agents.items():
        with Agent(value) as agent:  # reads, writes a draft, reclaims its own file
            agent.ok("readfile", path)
            fd = agent.ok("open", path, "O_RDWR")
            agent.ok("write", fd, "zombie")
            claim = agent.ok("getxattr", path, "user.fencefs.claim")
            agent.ok("setxattr", path, "user.fencefs.reclaim", "1")
            closed = agent.do("close", fd)
            assert agent.close() == 0, label
        assert closed == {"err": "ESTALE", "stage": "close"}, (label, closed)
        lines = claim.splitlines()
        assert len(lines) == 2, (label, claim)  # one read claim, one write claim
        for line in lines:
            identity = line.split()[0]
            assert identity.startswith("identity=agent:")
            assert len(identity) < 1200, "identity not bounded"
    journal = mount.journal()
    fenced = [e for e in journal if e["event"] == "fenced"]
    assert len(fenced) == len(agents)
    # FENCEFS_AGENT is cut at 256 bytes; a byte that is not UTF-8 shows as \\xNN.
    assert all(len(str(e["identity"])) <= len("agent:") + 4 * 256 for e in fenced)
    assert all(len(os.fsencode(r)) <= 255 for r in mount.rejected())
    log = fencefs_cli("log", str(mount.mnt))
    assert log.returncode == 0 and no_control_chars(log.stdout)
    alive(mount)


HOSTILE_VALUES = [b"", b"1" * 65536, b"-1", b"0", b"2", b"1e3", b"NaN", b"\x00", b"\xff\xfe",
                  b"1\x00", b"99999999999999999999999", b"exclusive\x00", b"EXCLUSIVE",
                  b"optimistic" * 1000, b"agent:" + b"x" * 400, b"pid:-1", b"\n"]


def test_hostile_control_values_change_nothing(mount: Mount) -> None:
    path = mount.seed("plan.md", "v1")
    fd = os.open(path, os.O_RDWR)  # a claim that a bogus reclaim must not revoke
    before = {n: os.getxattr(path, f"user.fencefs.{n}") for n in ("version", "epoch", "policy")}
    for target in (path, str(mount.mnt)):
        for name in CONTROL:
            for value in HOSTILE_VALUES:
                try:
                    os.setxattr(target, f"user.fencefs.{name}", value)
                except OSError as e:
                    assert e.errno in (errno.EINVAL, errno.ENOTSUP, errno.ENOENT,
                                       errno.E2BIG, errno.ERANGE), (target, name, value, e)
                else:
                    # On the root, any printable value names an agent (one that
                    # holds nothing here): accepted, and nothing is reclaimed.
                    if not (target == str(mount.mnt) and name == "reclaim-agent"):
                        pytest.fail(f"setxattr {name}={value[:20]!r} on {target} accepted")
            try:
                got = os.getxattr(target, f"user.fencefs.{name}")
            except OSError as e:
                assert e.errno in (errno.ENODATA, errno.ERANGE, errno.ENOTSUP), (name, e)
            else:
                assert name in ("version", "epoch", "claims", "claim", "policy", "status")
                assert len(got) < 1 << 16
    after = {n: os.getxattr(path, f"user.fencefs.{n}") for n in ("version", "epoch", "policy")}
    assert before == after
    os.write(fd, b"still mine")
    os.close(fd)  # not revoked by any of it
    with open(path) as f:
        assert f.read() == "still mine"
    assert [e["event"] for e in mount.journal()] == ["commit", "commit"]
    alive(mount)


@pytest.mark.parametrize("raw", [
    b"\xff garbage", b"[]", b'{"v":-1,"e":0,"ino":1,"size":1,"mtime":1}',
    b'{"v":1e400,"e":0,"ino":1,"size":1,"mtime":1}',  # no integer: once an OverflowError
])
def test_garbage_state_in_the_backing_file_reads_as_foreign(mount: Mount, raw: bytes) -> None:
    """A state attribute written behind fencefs's back (garbage) reads as a
    file fencefs never committed (version 0), no error in the daemon's log."""
    (mount.backing / "odd.txt").write_text("behind its back")
    os.setxattr(mount.backing / "odd.txt", "user.fencefs.state", raw)
    path = mount.path("odd.txt")
    with open(path) as f:
        assert f.read() == "behind its back"
    assert os.getxattr(path, "user.fencefs.version") == b"0"
    mount.seed("odd.txt", "committed")
    assert os.getxattr(path, "user.fencefs.version") == b"1"
    alive(mount)


def test_symlink_chains_are_served_as_made(mount: Mount, tmp_path: Path) -> None:
    """Links that climb out of the mount, alone or through each other, and
    a link planted in the backing directory are served as made and followed
    by the caller's kernel, in the caller's context, as on any filesystem.
    (That the daemon itself never follows one: tests/test_paths.py.)"""
    (tmp_path / "outside.txt").write_text("outside")  # next to backing/ and mnt/
    os.makedirs(mount.path("a/b"))
    os.symlink("../..", mount.path("a/b/up"))
    assert os.path.samefile(mount.path("a/b/up"), mount.mnt)
    os.symlink("a/b/up/../outside.txt", mount.path("esc"))
    assert os.readlink(mount.path("esc")) == "a/b/up/../outside.txt"
    with open(mount.path("esc")) as f:  # the caller's own kernel climbs out
        assert f.read() == "outside"
    os.symlink(str(tmp_path), mount.backing / "planted")
    with open(mount.path("planted/outside.txt")) as f:
        assert f.read() == "outside"  # followed by the caller, not the daemon
    assert (tmp_path / "outside.txt").read_text() == "outside"
    alive(mount)


def daemon_fds(m: Mount) -> int:
    assert m.proc is not None
    return len(os.listdir(f"/proc/{m.proc.pid}/fd"))


def hold(path: str, n: int) -> tuple[Agent, int, dict[str, int]]:
    """An agent that opened ``path`` read-only ``n`` times and holds them; how
    many opens it got, and the failures by errno name."""
    agent = Agent()
    count, failures = agent.ok("hoard", path, n)
    return agent, count, failures


def release(procs: list[Agent]) -> None:
    for proc in procs:
        proc.close(timeout=60)


def wait_for_fds(m: Mount, at_most: int) -> int:
    deadline = time.monotonic() + 20
    while daemon_fds(m) > at_most and time.monotonic() < deadline:
        time.sleep(0.1)
    return daemon_fds(m)


def daemon_fd_limit(m: Mount) -> int:
    assert m.proc is not None
    with open(f"/proc/{m.proc.pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no descriptor limit")


def test_a_client_hoarding_handles_gets_enfile_and_others_still_commit(mount: Mount) -> None:
    """One client hoards handles: past its share of the daemon's descriptors
    its opens get ENFILE, and everyone else still opens and commits."""
    assert mount.proc is not None
    path = mount.seed("hoarded.txt", "h")
    plan = mount.seed("plan.md", "v1")
    baseline = daemon_fds(mount)
    subprocess.run(["prlimit", f"--pid={mount.proc.pid}", "--nofile=2048:2048"], check=True)
    procs = []
    try:
        proc, opened, failures = hold(path, 3000)
        procs.append(proc)
        assert 500 < opened < 1024 and set(failures) == {"ENFILE"}, (opened, failures)
        for _ in range(3):
            out = run_py("import sys\nwith open(sys.argv[1], 'a') as f: f.write('+')\n", plan)
            assert out.returncode == 0, out.stderr
        with open(plan) as f:
            assert f.read() == "v1+++"
    finally:
        release(procs)
    assert wait_for_fds(mount, baseline + 2) <= baseline + 2
    alive(mount)


def test_tens_of_thousands_of_open_handles(mount: Mount) -> None:
    path = mount.seed("popular.txt", "p")
    baseline = daemon_fds(mount)
    each = min(7000, (daemon_fd_limit(mount) - 256) // 3 - 50)
    procs, opened = [], 0
    try:
        for _ in range(3):
            proc, count, failures = hold(path, each)
            procs.append(proc)
            assert failures == {} and count == each
            opened += count
        assert daemon_fds(mount) >= baseline + opened - 16
        with open(path, "w") as f:
            f.write("committed while hoarded")
    finally:
        release(procs)
    print(f"{opened} handles open at once")
    with open(path) as f:
        assert f.read() == "committed while hoarded"
    assert wait_for_fds(mount, baseline + 2) <= baseline + 2
    alive(mount)


def test_a_client_that_opens_and_never_closes(make_mount) -> None:  # type: ignore[no-untyped-def]
    m: Mount = make_mount("--policy", "exclusive", "--lease-ttl", "1s")
    path = m.seed("plan.md", "v1")
    holder = Agent()
    try:
        fd = holder.ok("open", path, "O_RDWR")
        holder.ok("write", fd, "never committed")
        os.kill(holder.pid, signal.SIGSTOP)  # hung for good
        with pytest.raises(OSError) as info:
            open(path, "w").close()
        assert info.value.errno == errno.EBUSY  # its lease is still live
        m.wait_lease_expired("plan.md")
        with open(path, "w") as f:  # the lease ran out: reclaimed, and in
            f.write("v2")
        os.kill(holder.pid, signal.SIGCONT)
        assert holder.do("close", fd) == {"err": "ESTALE", "stage": "close"}
    finally:
        holder.kill()
    with open(path) as f:
        assert f.read() == "v2"
    alive(m)


# -- property-based: generated hostile input against one mount ---------------

names = st.binary(min_size=1, max_size=255).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..", b".fencefs"))
targets = st.one_of(
    st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b),
    st.lists(st.sampled_from([b"..", b".", b"a", b"sub", b"/", b""]), min_size=1,
             max_size=12).map(b"/".join).filter(lambda b: b != b"" and b"\0" not in b),
)
values = st.one_of(st.binary(max_size=2048), st.sampled_from(HOSTILE_VALUES),
                   st.integers().map(lambda i: str(i).encode()))
env_text = st.binary(min_size=1, max_size=4096).filter(
    lambda b: b"\0" not in b).map(os.fsdecode)

ALLOWED = {errno.EINVAL, errno.ENOENT, errno.EEXIST, errno.EPERM, errno.ENAMETOOLONG,
           errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY, errno.ERANGE, errno.E2BIG,
           errno.ENODATA, errno.ENOTSUP, errno.EROFS, errno.ELOOP, errno.ESTALE,
           errno.EAGAIN, errno.EACCES, errno.ENOSPC}

ACTION = st.one_of(
    st.tuples(st.just("create"), names, st.binary(max_size=512)),
    st.tuples(st.just("mkdir"), names),
    st.tuples(st.just("rename"), names, names),
    st.tuples(st.just("symlink"), targets, names),
    st.tuples(st.just("setxattr"), st.sampled_from(CONTROL), values),
    st.tuples(st.just("setxattr-root"), st.sampled_from(CONTROL), values),
    st.tuples(st.just("getxattr"), st.sampled_from(CONTROL)),
    st.tuples(st.just("user-xattr"), st.binary(min_size=1, max_size=300).filter(
        lambda b: b"\0" not in b and not b.startswith(b"fencefs.")), values),
    st.tuples(st.just("agent"), env_text),
    st.tuples(st.just("unlink"), names),
)

def snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int, int]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        for name in filenames + dirnames:
            p = Path(dirpath, name)
            if p in skip:
                continue
            st_ = os.lstat(p)
            found[str(p)] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return found


def apply(m: Mount, action: tuple[object, ...]) -> None:
    mnt = os.fsencode(m.mnt)
    kind = action[0]
    at = lambda name: mnt + b"/" + name  # noqa: E731
    try:
        if kind == "create":
            # O_NOFOLLOW: the caller's own kernel would follow a symlink of
            # any target, in the caller's rights, as on any filesystem; what
            # is checked here is what the daemon does
            fd = os.open(at(action[1]),  # type: ignore[operator]
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            try:
                os.write(fd, action[2])  # type: ignore[arg-type]
            finally:
                os.close(fd)
        elif kind == "mkdir":
            os.mkdir(at(action[1]))  # type: ignore[operator]
        elif kind == "rename":
            os.rename(at(action[1]), at(action[2]))  # type: ignore[operator]
        elif kind == "symlink":
            os.symlink(action[1], at(action[2]))  # type: ignore[arg-type, operator]
            try:
                os.stat(at(action[2]))  # type: ignore[operator]
            except OSError as e:
                assert e.errno in ALLOWED, e
        elif kind == "setxattr":
            m.seed("target.txt", "t")
            os.setxattr(m.path("target.txt"), f"user.fencefs.{action[1]}", action[2])  # type: ignore[arg-type]
        elif kind == "setxattr-root":
            os.setxattr(m.mnt, f"user.fencefs.{action[1]}", action[2])  # type: ignore[arg-type]
        elif kind == "getxattr":
            m.seed("target.txt", "t")
            os.getxattr(m.path("target.txt"), f"user.fencefs.{action[1]}")
        elif kind == "user-xattr":
            m.seed("target.txt", "t")
            name = b"user." + action[1]  # type: ignore[operator]
            os.setxattr(m.path("target.txt"), name, action[2])  # type: ignore[arg-type]
            assert os.getxattr(m.path("target.txt"), name) == action[2]
        elif kind == "agent":
            log = m.path("agent.log")
            answers = run_agent([["writefile", log, "x", "append"],
                                 ["getxattr_len", log, "user.fencefs.claims"]], str(action[1]))
            assert "ok" in answers[0], answers
            assert answers[1]["ok"] < 4096
        elif kind == "unlink":
            os.unlink(at(action[1]))  # type: ignore[operator]
    except OSError as e:
        assert e.errno in ALLOWED, (action, e)


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.support.mount import require_fuse

    require_fuse()
    base = tmp_path_factory.mktemp("hostile")
    (base / "outside").mkdir()
    (base / "outside" / "keep.txt").write_text("keep")
    m = Mount(base)
    m.start()
    yield m
    m.stop()
    log = m.log()
    assert "Traceback" not in log and " ERROR " not in log, f"daemon logged errors:\n{log}"


@settings(max_examples=examples("FENCEFS_HOSTILE_EXAMPLES", 60, 1500), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(actions=st.lists(ACTION, min_size=1, max_size=6))
def test_generated_hostile_input(shared_mount: Mount, actions: list[tuple[object, ...]]) -> None:
    m = shared_mount
    base = m.backing.parent
    skip = {m.backing, m.mnt, m.logfile}
    before = snapshot(base, skip)
    for action in actions:
        apply(m, action)
        alive(m)
    assert snapshot(base, skip) == before, "something changed outside the backing directory"
    # Every symlink the mount serves reads as it is in the backing directory
    # (any target: the daemon never follows one, test_paths.py).
    root = os.path.realpath(m.backing)
    for dirpath, dirnames, filenames in os.walk(m.backing):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p) or ".fencefs" in os.path.relpath(p, root):
                continue
            served = os.readlink(os.fsencode(os.path.join(m.mnt, os.path.relpath(p, root))))
            assert served == os.readlink(os.fsencode(p))
