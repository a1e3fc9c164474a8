"""Fencing through a real mount, driven by real processes (issue 2, G1-G6)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.agent import Agent
from tests.support.mount import Mount
from tests.support.procs import run_py


def spawn_writer(path: str, flags: str = "O_RDWR") -> tuple[Agent, int]:
    """A writer agent holding ``path`` open for writing, and its descriptor."""
    agent = Agent()
    return agent, agent.ok("open", path, flags)


def xattr(path: str, name: str) -> str:
    return os.getxattr(path, f"user.fencefs.{name}").decode()


def test_draft_is_private_until_commit(mount: Mount) -> None:
    path = mount.seed("plan.md", "committed v1\n")
    fd = os.open(path, os.O_RDWR)
    os.write(fd, b"DRAFT" * 2000)
    # Another process sees only committed content and size (G4).
    out = run_py("import os,sys; p=sys.argv[1]; print(os.stat(p).st_size, repr(open(p).read()))",
                 path)
    assert out.stdout.strip() == "13 'committed v1\\n'"
    # The writer reads its own uncommitted writes through its handle.
    assert os.pread(fd, 5, 0) == b"DRAFT"
    os.close(fd)
    with open(path) as f:
        assert f.read() == "DRAFT" * 2000
    assert xattr(path, "version") == "2"


def test_open_reader_keeps_its_version(mount: Mount) -> None:
    path = mount.path("doc.txt")
    with open(path, "wb") as f:
        f.write(b"A" * 100_000)
    reader = os.open(path, os.O_RDONLY)
    first = os.pread(reader, 50_000, 0)
    with open(path, "wb") as f:
        f.write(b"B" * 100_000)
    rest = os.pread(reader, 50_000, 50_000)
    os.close(reader)
    # Never a mix of two versions within one open.
    assert first + rest == b"A" * 100_000
    with open(path, "rb") as f:
        assert f.read() == b"B" * 100_000


def test_two_handles_first_commit_wins(mount: Mount) -> None:
    path = mount.seed("plan.md", "base\n")
    a = os.open(path, os.O_RDWR)
    b = os.open(path, os.O_RDWR)
    os.write(b, b"loser wrote first\n")  # before the winner commits: lands in b's draft
    os.write(a, b"winner\n")
    os.close(a)
    with pytest.raises(OSError) as info:
        os.close(b)  # G1: the commit is refused at close
    assert info.value.errno == errno.EAGAIN
    with open(path) as f:
        assert f.read() == "winner\n"
    rejected = mount.rejected()
    assert len(rejected) == 1 and ".conflict." in rejected[0] and "plan.md" in rejected[0]
    kept = (mount.backing / ".fencefs" / "rejected" / rejected[0]).read_bytes()
    assert kept == b"loser wrote first\n"
    # The rejected writes are readable through the mount, not writable.
    through = mount.path(f".fencefs/rejected/{rejected[0]}")
    with open(through, "rb") as f:
        assert f.read() == kept
    with pytest.raises(OSError) as info:
        open(through, "w")
    assert info.value.errno == errno.EROFS


def test_write_after_file_moved_gets_eagain(mount: Mount) -> None:
    path = mount.seed("plan.md", "base\n")
    stale = os.open(path, os.O_WRONLY)
    with open(path, "w") as f:
        f.write("someone else\n")
    with pytest.raises(OSError) as info:
        os.write(stale, b"x")  # the earliest call that can know it
    assert info.value.errno == errno.EAGAIN
    with pytest.raises(OSError) as info:
        os.close(stale)
    assert info.value.errno == errno.EAGAIN
    with open(path) as f:
        assert f.read() == "someone else\n"


def test_eight_writers_one_winner(mount: Mount) -> None:
    path = mount.seed("race.json", "{}")
    writers = [spawn_writer(path) for _ in range(8)]  # all claims rest on the same version
    for i, (w, fd) in enumerate(writers):  # released at once: write, then close
        w.send("finish", fd, f'{{"writer": {i}}}')
    answers = [w.answer() for w, _ in writers]
    for w, _ in writers:
        w.close()
    winners = [i for i, a in enumerate(answers) if a == {"ok": None}]
    losers = [a for a in answers if a != {"ok": None}]
    assert len(winners) == 1, answers
    assert all(a.get("err") == "EAGAIN" for a in losers) and len(losers) == 7, answers
    with open(path) as f:
        assert f.read() == f'{{"writer": {winners[0]}}}'
    assert xattr(path, "version") == "2"
    assert len(mount.rejected()) == 7
    events = [e["event"] for e in mount.journal() if e["file"] == "race.json"]
    assert events.count("commit") == 2 and events.count("conflict") == 7


def test_zombie_writer_sigstop_reclaim(mount: Mount) -> None:
    path = mount.seed("plan.md", "original plan\n")
    zombie, fd = spawn_writer(path, "O_WRONLY|O_TRUNC")
    zombie.proc.send_signal(signal.SIGSTOP)
    zombie.send("finish", fd, "stale plan from the zombie\n")  # runs once it continues
    # Recovery reclaims the file while the zombie is stopped.
    subprocess.run(["setfattr", "-n", "user.fencefs.reclaim", "-v", "1", path], check=True)
    assert xattr(path, "epoch") == "1"
    assert xattr(path, "version") == "1"  # the version never moved...
    zombie.proc.send_signal(signal.SIGCONT)
    # ...and still the zombie is fenced (G2)
    assert zombie.answer() == {"err": "ESTALE", "stage": "write"}
    zombie.close()
    with open(path) as f:
        assert f.read() == "original plan\n"
    assert any(".fenced." in name for name in mount.rejected())
    fenced = [e for e in mount.journal() if e["event"] == "fenced"]
    assert fenced and fenced[0]["epoch"] == 0 and fenced[0]["current_epoch"] == 1
    assert fenced[0]["pid"] == zombie.pid


def test_reclaim_fences_close_and_fsync(mount: Mount) -> None:
    path = mount.seed("plan.md", "v1\n")
    a = os.open(path, os.O_RDWR)
    os.write(a, b"zombie bytes")
    b = os.open(path, os.O_RDWR)
    os.write(b, b"other zombie")
    subprocess.run([sys.executable, "-m", "fencefs.cli", "reclaim", path], check=True,
                   capture_output=True)
    with pytest.raises(OSError) as info:
        os.fsync(a)
    assert info.value.errno == errno.ESTALE
    with pytest.raises(OSError) as info:
        os.close(b)
    assert info.value.errno == errno.ESTALE
    with pytest.raises(OSError) as info:
        os.close(a)  # the fenced handle repeats its error
    assert info.value.errno == errno.ESTALE
    with open(path) as f:
        assert f.read() == "v1\n"
    kept = sorted((mount.backing / ".fencefs" / "rejected" / n).read_bytes()
                  for n in mount.rejected())
    assert kept == [b"other zombie", b"zombie bytes"]


def test_fsync_commits_and_second_flush_commits_only_new_writes(mount: Mount) -> None:
    path = mount.seed("notes.md", "")
    fd = os.open(path, os.O_RDWR)
    os.write(fd, b"first\n")
    os.fsync(fd)  # commits: another process sees it while fd stays open
    assert run_py("import sys; print(open(sys.argv[1]).read(), end='')", path).stdout == "first\n"
    assert xattr(path, "version") == "1"
    os.close(os.dup(fd))  # a dup's close with nothing new written: no commit
    assert xattr(path, "version") == "1"
    os.write(fd, b"second\n")
    dup = os.dup(fd)
    os.close(dup)  # the opener still holds fd: its last close commits
    assert xattr(path, "version") == "1"
    os.close(fd)
    assert xattr(path, "version") == "2"
    with open(path) as f:
        assert f.read() == "first\nsecond\n"


def test_forked_child_close_does_not_commit(mount: Mount) -> None:
    path = mount.seed("plan.md", "v1\n")
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"half")
    # subprocess closes inherited descriptors in the child: a FLUSH per close.
    subprocess.run(["true"], check=True)
    assert run_py("import sys; print(open(sys.argv[1]).read(), end='')", path).stdout == "v1\n"
    os.write(fd, b" and the rest\n")
    os.close(fd)
    with open(path) as f:
        assert f.read() == "half and the rest\n"


def test_shell_redirection_commits_once(mount: Mount) -> None:
    path = mount.path("plan.md")
    subprocess.run(["sh", "-c", f"echo one > '{path}'"], check=True)
    subprocess.run(["sh", "-c", f"echo two > '{path}'"], check=True)
    with open(path) as f:
        assert f.read() == "two\n"
    commits = [e for e in mount.journal() if e["event"] == "commit" and e["file"] == "plan.md"]
    assert len(commits) == 2  # no empty intermediate commit from the dup2 dance
    subprocess.run(["sh", "-c", f": > '{path}'"], check=True)
    assert os.path.getsize(path) == 0


def test_killed_writer_never_commits(mount: Mount) -> None:
    path = mount.path("big.bin")
    with open(path, "wb") as f:
        f.write(b"original")
    proc, fd = spawn_writer(path, "O_WRONLY|O_TRUNC")
    assert proc.ok("write", fd, "partial" * 1000) == 7000
    assert proc.kill(signal.SIGKILL) == -signal.SIGKILL
    with open(path, "rb") as f:
        assert f.read() == b"original"
    killed = [n for n in mount.rejected() if ".killed." in n]
    assert killed
    assert (mount.backing / ".fencefs" / "rejected" / killed[0]).read_bytes() == b"partial" * 1000
    assert any(e["event"] == "killed" and e.get("signal") == 9 for e in mount.journal())


def test_exit_without_close_commits(mount: Mount) -> None:
    path = mount.path("plan.md")
    proc, fd = spawn_writer(path, "O_WRONLY|O_CREAT")
    assert proc.ok("write", fd, "left open") == 9
    proc.send("exit", 0)  # os._exit: the descriptor is closed by the kernel
    assert proc.wait() == 0
    with open(path) as f:
        assert f.read() == "left open"


def test_versions_and_epochs_survive_remount(mount: Mount) -> None:
    path = mount.path("plan.md")
    for i in range(3):
        with open(path, "w") as f:
            f.write(f"v{i}\n")
    os.setxattr(path, "user.fencefs.reclaim", b"1")
    os.setxattr(path, "user.fencefs.reclaim", b"1")
    assert (xattr(path, "version"), xattr(path, "epoch")) == ("3", "2")
    mount.remount()
    assert (xattr(path, "version"), xattr(path, "epoch")) == ("3", "2")
    with open(path, "w") as f:
        f.write("after\n")
    assert (xattr(path, "version"), xattr(path, "epoch")) == ("4", "2")


def test_acknowledged_commit_survives_daemon_kill(mount: Mount) -> None:
    path = mount.seed("plan.md", "acknowledged\n")
    os.setxattr(path, "user.fencefs.reclaim", b"1")
    mount.kill()
    mount.start()
    with open(path) as f:
        assert f.read() == "acknowledged\n"
    assert (xattr(path, "version"), xattr(path, "epoch")) == ("1", "1")


def test_claims_attributes(mount: Mount) -> None:
    path = mount.seed("plan.md", "x")
    fd = os.open(path, os.O_RDWR)
    claims = xattr(path, "claims").splitlines()
    mine = [c for c in claims if f"pid={os.getpid()}" in c and "kind=write" in c]
    assert mine and "version=1" in mine[0] and "epoch=0" in mine[0]
    assert f"identity=pid:{os.getpid()}" in xattr(path, "claim")
    other = run_py("import os,sys; print(os.getxattr(sys.argv[1], 'user.fencefs.claim')"
                   ".decode(), end='')", path)
    assert "kind=write" not in other.stdout
    os.close(fd)
    assert "kind=write" not in xattr(path, "claims")
    out = subprocess.run(["getfattr", "-d", "-m", "user.fencefs", path], capture_output=True,
                         text=True, check=True).stdout
    for name in ("version", "epoch", "claims", "claim", "policy"):
        assert f"user.fencefs.{name}=" in out


def test_agent_identity_from_environment(mount: Mount) -> None:
    path = mount.seed("plan.md", "x")
    code = ("import os,sys\nfd=os.open(sys.argv[1], os.O_RDWR)\n"
            "print(os.getxattr(sys.argv[1], 'user.fencefs.claim').decode())\n")
    out = run_py(code, path, env={"FENCEFS_AGENT": "planner-7"}).stdout
    assert "identity=agent:planner-7 kind=write" in out


def test_claims_of_exited_identities_are_dropped(make_mount) -> None:  # type: ignore[no-untyped-def]
    mount = make_mount("--upkeep-interval", "0.1")
    path = mount.seed("plan.md", "x")
    reader = run_py("import sys,os; open(sys.argv[1]).read(); print(os.getpid())", path)
    pid = reader.stdout.strip()
    deadline = time.monotonic() + 10
    while f"pid={pid}" in xattr(path, "claims"):
        assert time.monotonic() < deadline, "exited reader's claim was never dropped"
        time.sleep(0.05)
    # A live reader keeps its claim.
    with open(path) as f:
        f.read()
    mount.wait_upkeep()  # evidence: an upkeep ran after the read
    assert f"identity=pid:{os.getpid()} kind=read" in xattr(path, "claims")


def drop_kernel_caches() -> bool:
    """Make the kernel forget cached inodes (FUSE FORGET for each)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        return True
    except OSError:
        return False


def forgotten(path: str, ino: int | None = None) -> bool:
    """Drop the kernel's caches until it has forgotten ``path`` (known as
    ``ino``): looked up again, it has a new number (fencefs never reuses one)."""
    ino = os.stat(path).st_ino if ino is None else ino
    for _ in range(20):
        if not drop_kernel_caches():
            return False
        if os.stat(path).st_ino != ino:
            return True
        time.sleep(0.05)
    raise AssertionError(f"the kernel never forgot {path}")


def test_state_survives_the_kernel_forgetting_the_file(mount: Mount) -> None:
    path = mount.seed("plan.md", "v1\n")
    os.setxattr(path, "user.fencefs.reclaim", b"1")
    writer = os.open(mount.path("held.md"), os.O_WRONLY | os.O_CREAT)
    os.write(writer, b"held")
    if not forgotten(path):
        if os.environ.get("CI"):
            pytest.fail("cannot drop the kernel's caches")
        pytest.skip("cannot drop the kernel's caches here")
    # Forgotten state is re-read from the backing file, not reset.
    assert (xattr(path, "version"), xattr(path, "epoch")) == ("1", "1")
    # A claim keeps its file's state in memory: the handle still commits.
    os.close(writer)
    with open(mount.path("held.md")) as f:
        assert f.read() == "held"
    # A foreign write made while forgotten is still noticed.
    ino = os.stat(path).st_ino
    (mount.backing / "plan.md").write_text("foreign, longer\n")
    assert forgotten(path, ino)
    assert xattr(path, "version") == "2"
    assert any(e["event"] == "foreign" for e in mount.journal())
