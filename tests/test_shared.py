"""The shared policy through a real mount (issue 9): in place, unfenced,
visible at once, mmap and locks working, versions still counting commits."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.support.agent import Agent
from tests.support.mount import Mount
from tests.support.procs import run_py


def xattr(path: str, name: str) -> str:
    return os.getxattr(path, f"user.fencefs.{name}").decode()


def events(mount: Mount, name: str) -> list[dict[str, object]]:
    return [e for e in mount.journal() if e["event"] == name]


class Holder:
    """An agent that opened FILE read-write and wrote PAYLOAD at offset 0,
    keeping the file open until released (then fsyncs if asked, and closes)."""

    def __init__(self, path: str, payload: str) -> None:
        self.agent = Agent()
        self.fd = self.agent.ok("open", path, "O_RDWR")
        assert self.agent.ok("pwrite", self.fd, payload, 0) == len(payload)


def hold(path: str, payload: str) -> Holder:
    return Holder(path, payload)


def release(proc: Holder, how: str = "close", expect: str = "closed") -> None:
    """``how``: "fsync" first, or just "close"; ``expect``: "closed" or the
    errno's name of the failing call."""
    agent = proc.agent
    try:
        answer = agent.do("fsync", proc.fd) if how == "fsync" else {"ok": None}
        if "ok" in answer:
            answer = agent.do("close", proc.fd)
        else:
            agent.do("close", proc.fd)
    finally:
        agent.close()
    assert ("closed" if "ok" in answer else answer["err"]) == expect


READ = "import sys; print(open(sys.argv[1]).read(), end='')"


# -- which files are shared --------------------------------------------------


def test_default_globs_make_sqlite_files_shared(mount: Mount) -> None:
    os.mkdir(mount.path("sub"))
    shared = ["app.db", "app.db-wal", "app.db-shm", "app.db-journal", "sub/m.sqlite",
              "m.sqlite-journal", "x.sqlite3", "x.sqlite3-wal", "sub/tmp_pack_Ab12Cd"]
    fenced = ["plan.md", "app.db.bak", "app.dbx", "db", "APP.DB", "pack-1234.pack"]
    for name in shared + fenced:
        mount.seed(name, "x")
    for name in shared:
        assert xattr(mount.path(name), "policy") == "shared", name
    for name in fenced:
        assert xattr(mount.path(name), "policy") == "optimistic", name


def test_mount_globs_and_turning_the_defaults_off(make_mount: Callable[..., Mount]) -> None:
    mount = make_mount("--no-default-shared-globs", "--shared-glob", "*.lock",
                       "--shared-glob", "data/*.bin")
    for d in ("data", "data/deep", "other"):
        os.mkdir(mount.path(d))
    expect = {"app.db": "optimistic", "x.lock": "shared", "other/y.lock": "shared",
              "data/a.bin": "shared", "data/deep/b.bin": "shared",
              "other/a.bin": "optimistic", "a.bin": "optimistic"}
    for name in expect:
        mount.seed(name, "x")
    assert {n: xattr(mount.path(n), "policy") for n in expect} == expect
    # The status table shows the effective policy too.
    status = subprocess.run([sys.executable, "-m", "fencefs.cli", "status", "--json",
                             str(mount.mnt), "x.lock"], capture_output=True, text=True)
    assert '"policy": "shared"' in status.stdout


# -- in place, at once --------------------------------------------------------


def test_writes_land_in_place_and_are_seen_at_once(mount: Mount) -> None:
    path = mount.seed("app.db", "old content")
    ino = os.stat(mount.backing / "app.db").st_ino
    writer = hold(path, "NEW")
    try:
        # Another process sees the write before the writer closes or fsyncs.
        assert run_py(READ, path).stdout == "NEW content"
        assert (mount.backing / "app.db").read_text() == "NEW content"
    finally:
        release(writer)
    assert os.stat(mount.backing / "app.db").st_ino == ino  # no draft was renamed in
    assert not os.listdir(mount.backing / ".fencefs/drafts")


def test_a_fenced_file_keeps_its_draft_private(mount: Mount) -> None:
    """The same steps on an optimistic file: the reader sees the old content
    (this is what the shared policy turns off)."""
    path = mount.seed("plan.md", "old content")
    writer = hold(path, "NEW")
    try:
        assert run_py(READ, path).stdout == "old content"
    finally:
        release(writer)
    assert run_py(READ, path).stdout == "NEW content"


def test_versions_count_fsyncs_and_dirty_closes(mount: Mount) -> None:
    path = mount.seed("app.db", "v1")
    assert xattr(path, "version") == "1"
    writer = hold(path, "v2")
    # While the writer has uncommitted in-place writes, the moved fingerprint
    # is its own: no foreign write, no version yet.
    os.stat(path)
    assert xattr(path, "version") == "1"
    release(writer, "fsync")
    assert xattr(path, "version") == "2"  # the fsync; the clean close adds nothing
    writer = hold(path, "v3")
    release(writer)
    assert xattr(path, "version") == "3"  # the close of a dirty handle
    run_py(READ, path)
    fd = os.open(path, os.O_RDWR)
    os.close(fd)
    assert xattr(path, "version") == "3"  # reads and clean closes are no commits
    commits = [e for e in events(mount, "commit") if e["file"] == "app.db"]
    assert [e.get("op") for e in commits][-2:] == ["fsync", "close"]
    assert not events(mount, "foreign")
    mount.remount()
    assert xattr(path, "version") == "3"
    assert not events(mount, "foreign")


def test_foreign_writes_are_still_noticed(mount: Mount) -> None:
    path = mount.seed("app.db", "v1")
    (mount.backing / "app.db").write_text("written behind fencefs's back")
    assert xattr(path, "version") == "2"
    assert len(events(mount, "foreign")) == 1


def test_truncate_in_place(mount: Mount) -> None:
    path = mount.seed("app.db", "0123456789")
    ino = os.stat(mount.backing / "app.db").st_ino
    os.truncate(path, 4)  # by path: a commit of its own
    assert xattr(path, "version") == "2"
    with open(path, "r+b") as f:
        f.truncate(2)  # through a handle: committed at its close
    assert xattr(path, "version") == "3"
    assert (mount.backing / "app.db").read_bytes() == b"01"
    assert os.stat(mount.backing / "app.db").st_ino == ino


def test_shared_mmap_between_processes(mount: Mount) -> None:
    path = mount.seed("app.db-shm", "\0" * 8192)
    writer, reader = Agent(), Agent()
    try:
        wfd = writer.ok("open", path, "O_RDWR")
        writer.ok("mmap", wfd, 8192)
        writer.ok("mmap_write", wfd, 100, "hello")  # a store into the shared mapping
        # Another process's mapping and its read() see the writer's store.
        rfd = reader.ok("open", path, "O_RDWR")
        reader.ok("mmap", rfd, 8192)
        assert [reader.ok("mmap_read", rfd, 100, 5), reader.ok("pread", rfd, 5, 100)] \
            == ["hello", "hello"]
        reader.ok("munmap", rfd)
        reader.ok("close", rfd)
    finally:
        writer.ok("munmap", wfd)
        writer.ok("close", wfd)
        assert writer.close() == 0 and reader.close() == 0
    assert (mount.backing / "app.db-shm").read_bytes()[100:105] == b"hello"
    assert xattr(path, "version") == "2"


def test_mmap_of_a_fenced_file_is_refused(mount: Mount) -> None:
    path = mount.seed("plan.md", "\0" * 4096)
    with Agent() as agent:
        fd = agent.ok("open", path, "O_RDWR")
        assert agent.do("mmap", fd, 4096) == {"err": "ENODEV", "stage": "mmap"}
        agent.close()



@pytest.mark.parametrize("kind", ["posix", "flock"])
def test_locks_work_between_processes(mount: Mount, kind: str) -> None:
    path = mount.seed("app.db", "x")
    def try_lock() -> dict[str, object]:  # a fresh process, a non-blocking lock
        with Agent() as agent:
            fd = agent.ok("open", path, "O_RDWR")
            answer = agent.do("lock", fd, kind, False)
            agent.close()
        return answer

    holder = Agent()
    try:
        fd = holder.ok("open", path, "O_RDWR")
        holder.ok("lock", fd, kind, True)
        assert try_lock() == {"err": errno.errorcode[errno.EAGAIN], "stage": "lock"}
    finally:
        holder.close()
    assert try_lock() == {"ok": None}



# -- no fencing ---------------------------------------------------------------


def test_no_fencing_on_shared_files(mount: Mount) -> None:
    path = mount.seed("app.db", "v1")
    # Two writers resting on the same version both land (last write wins),
    # where an optimistic file would refuse the second with EAGAIN.
    a, b = hold(path, "AA"), hold(path, "B")
    release(a)
    release(b)
    assert run_py(READ, path).stdout == "BA"
    # A reclaim revokes nothing: a handle opened before it still writes.
    c = hold(path, "C")
    subprocess.run(["setfattr", "-n", "user.fencefs.reclaim", "-v", "1", path], check=True)
    release(c)
    assert run_py(READ, path).stdout == "CA"
    # Path operations by an identity whose read is stale go ahead too.
    env = {"FENCEFS_AGENT": "stale"}
    run_py(READ, path, env=env)
    mount.seed("app.db", "moved on")
    tmp = mount.seed("new.tmp", "replacement")
    assert run_py("import os, sys; os.rename(sys.argv[1], sys.argv[2])", tmp, path,
                  env=env).returncode == 0
    assert run_py(READ, path).stdout == "replacement"
    assert not events(mount, "conflict") and not events(mount, "fenced")
    assert not mount.rejected()


def test_reads_from_before_a_switch_to_shared_do_not_fence(mount: Mount) -> None:
    path = mount.seed("state.bin", "v1")
    env = {"FENCEFS_AGENT": "stale"}
    assert run_py(READ, path, env=env).stdout == "v1"  # an observation claim, at v1
    os.setxattr(path, "user.fencefs.policy", b"shared")
    mount.seed("state.bin", "v2")  # the file moves on
    tmp = mount.seed("new.tmp", "from stale")
    for code in ("import os, sys; os.truncate(sys.argv[1], 4)",
                 "import os, sys; os.rename(sys.argv[2], sys.argv[1])",
                 "import os, sys; os.unlink(sys.argv[1])"):
        result = run_py(code, path, tmp, env=env)
        assert result.returncode == 0, result.stderr
    assert not events(mount, "conflict")


# -- choosing and changing the policy ----------------------------------------


def test_setfattr_shared_and_back(mount: Mount) -> None:
    path = mount.seed("state.bin", "v1")
    os.setxattr(path, "user.fencefs.policy", b"shared")
    assert xattr(path, "policy") == "shared"
    writer = hold(path, "V2")
    try:
        assert run_py(READ, path).stdout == "V2"  # in place
        # Not while it is open: in-place and drafted handles would disagree.
        with pytest.raises(OSError) as info:
            os.setxattr(path, "user.fencefs.policy", b"optimistic")
        assert info.value.errno == errno.EBUSY
        # Setting what it already has changes nothing, open or not.
        os.setxattr(path, "user.fencefs.policy", b"shared")
    finally:
        release(writer)
    mount.remount()
    assert xattr(path, "policy") == "shared"  # persisted with the file
    os.setxattr(path, "user.fencefs.policy", b"optimistic")
    # Fenced again: two writers on the same version, the second is refused.
    a, b = hold(path, "A"), hold(path, "B")
    release(a)
    release(b, expect="EAGAIN")
    assert run_py(READ, path).stdout == "A2"


def test_opting_a_database_back_into_fencing(mount: Mount) -> None:
    path = mount.seed("notes.db", "v1")
    assert xattr(path, "policy") == "shared"
    holder = hold(path, "x")
    try:
        with pytest.raises(OSError) as info:
            os.setxattr(path, "user.fencefs.policy", b"optimistic")
        assert info.value.errno == errno.EBUSY
    finally:
        release(holder)
    os.setxattr(path, "user.fencefs.policy", b"optimistic")
    assert xattr(path, "policy") == "optimistic"
    writer = hold(path, "NEW")
    try:
        assert run_py(READ, path).stdout == "x1"  # a private draft again
    finally:
        release(writer)
    # setfattr -x drops the file's own policy: the glob applies again.
    subprocess.run(["setfattr", "-x", "user.fencefs.policy", path], check=True)
    assert xattr(path, "policy") == "shared"
    policies = [e.get("policy") for e in events(mount, "policy")]
    assert policies == ["optimistic", "-"]


def test_renames_that_would_switch_an_open_file_are_refused(mount: Mount) -> None:
    db = mount.seed("app.db", "db")
    tmp = mount.seed("build.tmp", "built")
    # Over a shared file that is open: its handles would lose their file.
    holder = hold(db, "DB")
    try:
        with pytest.raises(OSError) as info:
            os.rename(tmp, db)
        assert info.value.errno == errno.EBUSY
    finally:
        release(holder)
    # A fenced file open for writing cannot become shared by a rename.
    writer = hold(tmp, "B")
    try:
        with pytest.raises(OSError) as info:
            os.rename(tmp, mount.path("other.db"))
        assert info.value.errno == errno.EBUSY
    finally:
        release(writer)
    # Closed, both are fine; the content at app.db is shared (the glob).
    os.rename(tmp, db)
    assert run_py(READ, db).stdout == "Built"
    assert xattr(db, "policy") == "shared"


def test_an_open_shared_file_follows_its_rename(mount: Mount) -> None:
    path = mount.seed("a.db", "v1")
    writer = hold(path, "V2")
    try:
        os.rename(path, mount.path("b.db"))  # shared at both names
    finally:
        release(writer)
    assert run_py(READ, mount.path("b.db")).stdout == "V2"
    assert xattr(mount.path("b.db"), "version") == "2"


def test_unlinked_while_open(mount: Mount) -> None:
    path = mount.seed("app.db-journal", "v1")
    writer = hold(path, "XX")
    try:
        os.unlink(path)
        mount.seed("app.db-journal", "fresh")
    finally:
        release(writer)  # its in-place writes went to the unlinked file
    assert run_py(READ, path).stdout == "fresh"
    assert not events(mount, "foreign")
