"""Who may see and do what (issue 7, item 5; docs/security.md).

A second user, created for the test, acts through the mount with setpriv.
Without --allow-other the mount is the mounting user's alone; with it, the
kernel checks file modes (default_permissions), and fencefs keeps what it
adds (claim state, the root's status and reclaim controls, rejected writes,
the journal) to those who could read, or write, the file it is about.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import Agent
from tests.support.mount import Mount, require_fuse

USER = "fencefs-test"
PYTHON = "/usr/bin/python3"  # the test's own interpreter may sit where others cannot go


def need_root() -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists(PYTHON):
        if os.environ.get("CI"):
            pytest.fail("the security tests must run in CI (root, setpriv, /usr/bin/python3)")
        pytest.skip("needs root, setpriv and /usr/bin/python3 to act as another user")


@pytest.fixture(scope="module")
def other() -> pwd.struct_passwd:
    need_root()
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(USER)


@pytest.fixture
def base() -> Iterator[Path]:
    """A base directory other users can reach (pytest's tmp_path is private)."""
    require_fuse()
    need_root()
    path = Path(tempfile.mkdtemp(prefix="fencefs-security-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared(base: Path) -> Iterator[Mount]:
    (base / "backing").mkdir()
    (base / "backing").chmod(0o777)  # a workspace every user may create files in
    m = Mount(base, "--allow-other")
    m.start()
    try:
        yield m
    finally:
        m.stop()
        log = m.log()
        assert "Traceback" not in log and " ERROR " not in log, f"daemon logged errors:\n{log}"


def user_agent(user: pwd.struct_passwd, env: dict[str, str] | None = None) -> Agent:
    """A test agent running as ``user`` (under /usr/bin/python3, from /)."""
    env = {"PATH": "/usr/bin:/bin", **(env or {})}
    return Agent(env.get("FENCEFS_AGENT"), env=env, python=PYTHON, cwd="/",
                 prefix=["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                         "--clear-groups"])


def probe_command(op: str, path: str, arg: str | None = None) -> list[object]:
    """A probe (read, write, append, getxattr, setxattr NAME=VALUE, listxattr,
    listdir, stat, chmod OCTAL, chown UID, mkdir, unlink) as an agent command."""
    if op == "read":
        return ["readfile", path]
    if op == "write":
        return ["writefile", path, arg]
    if op == "append":
        return ["writefile", path, arg, "append"]
    if op == "setxattr":
        assert arg is not None
        name, _, value = arg.partition("=")
        return ["setxattr", path, name, value]
    if op == "chmod":
        assert arg is not None
        return ["chmod", path, int(arg, 8)]
    if op == "chown":
        assert arg is not None
        return ["chown", path, int(arg), -1]
    if op == "symlink":  # ["symlink", LINK, TARGET]
        return ["symlink", arg, path]
    if op == "umask":  # ["umask", ANY, OCTAL]: the path is not used
        assert arg is not None
        return ["umask", int(arg, 8)]
    if op == "create":
        assert arg is not None
        return ["create", path, int(arg, 8)]
    return [op, path] if arg is None else [op, path, arg]


def as_user(user: pwd.struct_passwd, *ops: list[object],
            env: dict[str, str] | None = None) -> list[list[object]]:
    """Run each probe as ``user``, in one process; each outcome as ["ok", value]
    (stat: [uid, mode]) or ["err", errno name]."""
    outcomes: list[list[object]] = []
    with user_agent(user, env) as agent:
        for op in ops:
            answer = agent.do(*probe_command(*op))  # type: ignore[arg-type]
            if "err" in answer:
                outcomes.append(["err", answer["err"]])
            elif op[0] == "stat":
                outcomes.append(["ok", [answer["ok"]["uid"], answer["ok"]["mode"]]])
            elif op[0] in ("write", "append"):
                outcomes.append(["ok", None])
            else:
                outcomes.append(["ok", answer["ok"]])
        assert agent.close() == 0
    return outcomes


class Holder:
    """The mounting user (root), agent root-agent, holding a write claim on
    ``path`` with a draft written."""

    def __init__(self, path: str) -> None:
        self.agent = Agent("root-agent")
        self.fd = self.agent.ok("open", path, "O_RDWR")
        assert self.agent.ok("write", self.fd, "root's draft") == 12


def holder(path: str) -> Holder:
    return Holder(path)


def finish(proc: Holder) -> str:
    """Close the holder's descriptor: "" or the close's errno (a number)."""
    answer = proc.agent.do("close", proc.fd)
    proc.agent.close()
    return "" if "ok" in answer else str(getattr(errno, answer["err"]))


def test_mount_without_allow_other_is_private(base: Path, other: pwd.struct_passwd) -> None:
    (base / "backing").mkdir()
    (base / "backing").chmod(0o777)
    m = Mount(base)
    m.start()
    try:
        path = m.seed("public.txt", "for everyone")
        os.chmod(path, 0o666)
        got = as_user(other, ["read", path], ["stat", str(m.mnt)],
                      ["getxattr", path, "user.fencefs.version"])
        assert got == [["err", "EACCES"]] * 3
    finally:
        m.stop()


def test_file_modes_apply_to_content_and_claim_state(shared: Mount,
                                                     other: pwd.struct_passwd) -> None:
    m = shared
    secret, public, open_ = m.seed("secret.txt", "s"), m.seed("public.txt", "p"), \
        m.seed("shared.txt", "x")
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    os.chmod(open_, 0o666)
    got = as_user(
        other,
        ["read", secret], ["getxattr", secret, "user.fencefs.version"],
        ["getxattr", secret, "user.fencefs.claims"], ["listxattr", secret],
        ["setxattr", secret, "user.fencefs.reclaim=1"],
        ["read", public], ["getxattr", public, "user.fencefs.version"],
        ["setxattr", public, "user.fencefs.reclaim=1"],
        ["write", public, "overwritten"],
        ["setxattr", open_, "user.fencefs.reclaim=1"],
        ["write", open_, "written by the other user"],
        ["chmod", secret, "666"], ["chown", secret, str(other.pw_uid)],
        ["unlink", secret],
    )
    names = ["user.fencefs.claim", "user.fencefs.claims", "user.fencefs.epoch",
             "user.fencefs.policy", "user.fencefs.version"]
    assert got == [
        ["err", "EACCES"], ["err", "EACCES"], ["err", "EACCES"],
        ["ok", names],  # names only, as listxattr is on any filesystem
        ["err", "EACCES"],
        ["ok", "p"], ["ok", "1"], ["err", "EACCES"], ["err", "EACCES"],
        ["ok", None], ["ok", None],
        ["err", "EPERM"], ["err", "EPERM"],
        ["ok", None],  # the root directory is a shared 0777 workspace: as on any such dir
    ]
    assert os.getxattr(open_, "user.fencefs.epoch") == b"1"
    assert os.getxattr(public, "user.fencefs.epoch") == b"0"
    with open(open_) as f:
        assert f.read() == "written by the other user"
    # What the other user creates is theirs.
    mine = m.path("mine.txt")
    assert as_user(other, ["write", mine, "m"], ["stat", mine]) == \
        [["ok", None], ["ok", [other.pw_uid, 0o644]]]
    assert os.stat(m.backing / "mine.txt").st_uid == other.pw_uid


def test_root_status_and_reclaims_cover_only_what_the_caller_may_touch(
        shared: Mount, other: pwd.struct_passwd) -> None:
    m = shared
    os.mkdir(m.path("private"), 0o700)
    paths = {"secret.txt": 0o600, "public.txt": 0o644, "shared.txt": 0o666,
             "private/inner.txt": 0o666}
    for name, mode in paths.items():
        m.seed(name, name)
        os.chmod(m.path(name), mode)
    holders = [holder(m.path(name)) for name in paths]
    try:
        got = as_user(other, ["getxattr", str(m.mnt), "user.fencefs.status"])
        assert got[0][0] == "ok"
        seen = sorted(row["file"] for row in json.loads(str(got[0][1])))
        assert seen == ["public.txt", "shared.txt"]  # what the other user can read
        # Reclaiming every file of root's agent reaches only what it can write.
        got = as_user(other, ["setxattr", str(m.mnt), "user.fencefs.reclaim-agent=root-agent"])
        assert got == [["ok", None]]
        epochs = {name: os.getxattr(m.path(name), "user.fencefs.epoch") for name in paths}
        assert epochs == {"secret.txt": b"0", "public.txt": b"0", "shared.txt": b"1",
                          "private/inner.txt": b"0"}
    finally:
        outcomes = [finish(p) for p in holders]
    assert outcomes == ["", "", str(errno.ESTALE), ""]
    # The root user (the mount's owner) still sees everything.
    assert len(json.loads(os.getxattr(m.mnt, "user.fencefs.status"))) == 0


def test_rejected_writes_and_journal_are_kept_from_those_who_could_not_read(
        shared: Mount, other: pwd.struct_passwd) -> None:
    m = shared
    secret = m.seed("secret.txt", "s")
    os.chmod(secret, 0o640)
    os.chown(secret, 0, 0)
    open_ = m.seed("shared.txt", "x")
    os.chmod(open_, 0o666)
    for path in (secret, open_):  # root's stale writes: fenced, kept under rejected/
        proc = holder(path)
        os.setxattr(path, "user.fencefs.reclaim", b"1")
        assert finish(proc) == str(errno.ESTALE)
    # The other user's own stale write to a file only it can read.
    mine = m.path("mine.txt")
    assert as_user(other, ["write", mine, "m"], ["chmod", mine, "600"]) == [["ok", None]] * 2
    with user_agent(other) as agent:
        fd = agent.ok("open", mine, "O_RDWR")
        agent.ok("write", fd, "mine, stale")
        agent.ok("setxattr", mine, "user.fencefs.reclaim", "1")
        assert agent.do("close", fd) == {"err": "ESTALE", "stage": "close"}
        assert agent.close() == 0

    rejected = {name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 2)[-1]: name
                for name in m.rejected()}
    assert set(rejected) == {"secret.txt", "shared.txt", "mine.txt"}
    for source, name in rejected.items():
        kept = os.stat(m.backing / ".fencefs/rejected" / name)
        src = os.stat(m.backing / source)
        assert (kept.st_uid, kept.st_gid, kept.st_mode & 0o7777) == \
            (src.st_uid, src.st_gid, src.st_mode & 0o7777), source
    rdir = str(m.mnt / ".fencefs/rejected")
    got = as_user(other, ["listdir", rdir],
                  ["read", f"{rdir}/{rejected['secret.txt']}"],
                  ["read", f"{rdir}/{rejected['shared.txt']}"],
                  ["read", f"{rdir}/{rejected['mine.txt']}"],
                  ["read", str(m.mnt / ".fencefs/journal.jsonl")])
    assert got == [
        ["ok", sorted([rejected["shared.txt"], rejected["mine.txt"]])],
        ["err", "EACCES"], ["ok", "root's draft"], ["ok", "mine, stale"], ["err", "EACCES"],
    ]
    # The mounting user sees every rejected write and the journal.
    assert sorted(os.listdir(rdir)) == sorted(rejected.values())
    with open(m.mnt / ".fencefs/journal.jsonl") as f:
        assert sum(1 for line in f if '"fenced"' in line) == 3


def test_nodes_of_every_kind_belong_to_their_maker(shared: Mount,
                                                   other: pwd.struct_passwd) -> None:
    """An unprivileged caller gets EPERM for a device node (from the kernel,
    as on ext4), makes FIFOs and symlinks of any target as its own, and its
    umask is applied exactly (002: group-writable)."""
    m = shared
    dev, fifo, link, made = (m.path(n) for n in ("dev", "fifo", "link", "made"))
    got = as_user(other, ["mknod", dev, "chr"], ["mknod", dev, "blk"],
                  ["mknod", fifo, "fifo"], ["lstat", fifo],
                  ["symlink", link, "/etc/hostname"], ["lstat", link],
                  ["umask", made, "002"], ["create", made, "666"], ["lstat", made])
    uid, gid = other.pw_uid, other.pw_gid
    assert got == [["err", "EPERM"], ["err", "EPERM"],
                   ["ok", None], ["ok", [uid, gid, 0o644]],
                   ["ok", None], ["ok", [uid, gid, 0o777]],
                   ["ok", "0o22"], ["ok", None], ["ok", [uid, gid, 0o664]]]
    assert not os.path.lexists(dev)
    assert os.readlink(link) == "/etc/hostname"


def test_history_is_kept_from_those_who_could_not_read(shared: Mount,
                                                      other: pwd.struct_passwd) -> None:
    """Retained versions keep their file's owner and mode (they are its
    inodes), the history tree lists a file's history only to those who may
    read the file, and its history attribute answers EACCES to the others."""
    m = shared
    os.mkdir(m.path("private"), 0o700)
    secret = m.path("private/secret.txt")
    for text in ("s1", "s2"):
        m.seed("private/secret.txt", text)
    os.chmod(secret, 0o600)
    for text in ("o1", "o2"):
        m.seed("open.txt", text)
    os.chmod(m.path("open.txt"), 0o644)
    view = m.mnt / ".fencefs" / "versions"
    got = as_user(other, ["listdir", str(view)],
                  ["listdir", str(view / "open.txt")],
                  ["read", str(view / "open.txt" / "1")],
                  ["read", str(view / "private" / "secret.txt" / "1")],
                  ["getxattr", str(view / "private" / "secret.txt"), "user.fencefs.history"],
                  ["write", str(view / "open.txt" / "1"), "x"])
    # (the write: the kernel refuses it by the version's mode before EROFS could)
    assert got == [["ok", ["open.txt"]], ["ok", ["1"]], ["ok", "o1"], ["err", "EACCES"],
                   ["err", "EACCES"], ["err", "EACCES"]]
    assert sorted(os.listdir(view)) == ["open.txt", "private"]  # the owner sees all
