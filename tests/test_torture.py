"""Crash safety (issue 7, item 1).

scripts/torture kills the daemon with SIGKILL at random moments while
writers commit and a reclaimer reclaims, remounts, and checks after every
remount that no file is torn, versions and epochs match their contents and
never go down, no acknowledged commit is lost, and every draft the dead
daemon left is put away and journaled. CI runs a bounded form; the long
form is marked slow (pytest -m slow, or run scripts/torture by hand).

The crash-point test kills the daemon at one exact moment instead: its
first journal write of a commit (strace injects the SIGKILL).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mount import ROOT, Mount, require_fuse
from tests.support.procs import wait_traced
from tests.support.trace import assert_follows_the_specs


def require_strace() -> None:
    require_fuse()
    if shutil.which("strace") is None:
        if os.environ.get("CI"):
            pytest.fail("strace is missing (scripts/setup installs it)")
        pytest.skip("needs strace")


def kill_at(m: Mount, syscalls: str, when: int = 1) -> subprocess.Popen[bytes]:
    """strace on the daemon, which SIGKILLs it on entering the ``when``-th
    call of ``syscalls`` from now on (before that call runs); returns once
    strace is attached to every daemon thread (TracerPid)."""
    assert m.proc is not None
    inject = f"inject={syscalls}:signal=KILL" + (f":when={when}" if when > 1 else "")
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-p", str(m.proc.pid), "-o", os.devnull,
                               "-e", f"trace={syscalls}", "-e", inject],
                              stderr=subprocess.DEVNULL)
    wait_traced(m.proc.pid, tracer.pid)
    return tracer


def wait_killed(m: Mount, tracer: subprocess.Popen[bytes]) -> None:
    assert m.proc is not None
    m.proc.wait(timeout=10)
    assert m.proc.returncode == -9
    tracer.wait(timeout=10)


def remount(m: Mount) -> None:
    """Clear the dead daemon's mount and start a new daemon (its recovery)."""
    assert m.proc is not None
    subprocess.run(["fusermount3", "-u", "-z", str(m.mnt)], capture_output=True)
    if m.proc.stderr:
        m.proc.stderr.close()
    m.proc = None
    m.start()


def torture(tmp_path: Path, *args: str, timeout: float) -> dict[str, str]:
    require_fuse()
    if os.geteuid() != 0:
        pytest.skip("scripts/torture mounts FUSE filesystems: run as root")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "torture.py"),
                             "--workdir", str(tmp_path / "torture"), *args],
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert counts["torn files"] == "0"
    assert counts["other errors"] == "{}"
    assert counts["commits verified"] == counts["commits acknowledged"]
    assert int(counts["commits acknowledged"]) > 0
    assert_follows_the_specs(tmp_path / "torture" / "backing" / ".fencefs" / "journal.jsonl")
    return counts


def test_torture_bounded(tmp_path: Path) -> None:
    counts = torture(tmp_path, "--kills", "4", "--seconds", "1.5", "--writers", "4",
                     "--files", "6", "--seed", "7", timeout=300)
    assert counts["kills"] == "4"


@pytest.mark.slow
@pytest.mark.timeout(4000)
def test_torture_long(tmp_path: Path) -> None:
    counts = torture(tmp_path, "--kills", "60", "--seconds", "4", timeout=3600)
    assert counts["kills"] == "60"


def journal_net(m: Mount, name: str) -> dict[int, int]:
    """Per version: commits journaled, less those whose draft the next mount
    found unused (journaled ahead of an install that never happened)."""
    journal = m.journal()
    unused = {e.get("draft") for e in journal if e["event"] == "abandoned"} - {None}
    net: dict[int, int] = {}
    for e in journal:
        if e["file"] == name and e["event"] == "commit" and e.get("draft") not in unused:
            v = int(e["new_version"])  # type: ignore[call-overload]
            net[v] = net.get(v, 0) + 1
    return net


@pytest.mark.parametrize("op", ["close", "rename", "append"])
def test_killed_at_the_journal_write_of_a_commit(tmp_path: Path, op: str) -> None:
    """Killed at the journal write of a commit (before the line is written),
    the file keeps the version before, the journal has no commit of the next
    one, and the draft is put away at the next mount."""
    require_strace()
    m = Mount(tmp_path)
    m.start()
    try:
        path = m.seed("plan.md", "v1\n")
        if op == "rename":
            m.seed("plan.md.tmp", "v2 by rename\n")
        assert m.proc is not None
        # The daemon's first write(2) from now on is the commit's journal
        # line: strace kills it right there, before the syscall runs.
        tracer = kill_at(m, "write")
        try:
            if op == "close":
                with open(path, "w") as f:
                    f.write("v2\n")
            elif op == "rename":
                os.rename(m.path("plan.md.tmp"), path)
            else:
                with open(path, "a") as f:
                    f.write("v2 appended\n")
        except OSError:
            pass  # the daemon died under the call
        wait_killed(m, tracer)
        remount(m)
        with open(path) as f:
            content = f.read()
        version = int(os.getxattr(path, "user.fencefs.version"))
        # Killed before its journal line was written: the commit never
        # happened (not journaled, not installed), whatever the operation.
        assert (content, version) == ("v1\n", 1)
        net = journal_net(m, "plan.md")
        assert all(net.get(v, 0) == 1 for v in range(1, version + 1)), \
            f"v{version} is the content but the journal has {net}"
        assert all(v <= version for v in net), \
            f"the journal has commits that never landed: {net}"
        assert os.listdir(m.backing / ".fencefs" / "drafts") == []
        assert_follows_the_specs(m.journal_path())
    finally:
        m.stop()
    assert not re.search(r"Traceback| ERROR ", m.log())


@pytest.mark.parametrize("op", ["close", "rename", "unlink"])
def test_killed_between_keeping_history_and_the_rename(tmp_path: Path, op: str) -> None:
    """Killed at the install's rename, after the history link: the file
    keeps v1 and, once the next mount has recovered, its history holds no
    entry for v1 (that inode is the live content, not a past one), and the
    journal accounts for the commit that never landed (an abandoned draft;
    a ``failed`` line for a rename or unlink, which have no draft)."""
    require_strace()
    m = Mount(tmp_path)
    m.start()
    try:
        path = m.seed("plan.md", "v1\n")
        if op == "rename":
            m.seed("plan.md.tmp", "v2\n")
        # Another writer's draft, still open at the crash: an orphan that the
        # next mount journals before it looks at the journal's last line.
        other = open(m.path("other.md"), "w")
        other.write("a draft\n")
        other.flush()
        assert m.proc is not None
        # The first rename from now on is the commit's install, which runs
        # right after the link that keeps v1 in the history.
        tracer = kill_at(m, "rename,renameat,renameat2")
        try:
            if op == "close":
                with open(path, "w") as f:
                    f.write("v2\n")
            elif op == "rename":
                os.rename(m.path("plan.md.tmp"), path)
            else:
                os.unlink(path)
        except OSError:
            pass  # the daemon died under the call
        wait_killed(m, tracer)
        with pytest.raises(OSError) as gone:
            other.close()
        assert gone.value.errno == errno.ENOTCONN
        kept = m.backing / ".fencefs" / "versions" / "plan.md" / "1"
        live = os.stat(m.backing / "plan.md")
        # The crash left the link: the same inode as the live file.
        assert (os.stat(kept).st_ino, live.st_ino) == (live.st_ino, live.st_ino)
        remount(m)
        with open(path) as f:
            assert f.read() == "v1\n"
        assert int(os.getxattr(path, "user.fencefs.version")) == 1
        assert not kept.exists()
        assert os.listdir(m.backing / ".fencefs" / "drafts") == []
        undone = [(e["event"], e.get("op")) for e in m.journal()
                  if e.get("reason") == "daemon-restart"]
        assert sorted(undone) == sorted([("abandoned", None),
                                         ("abandoned", None) if op == "close"
                                         else ("failed", op)])
        with open(path, "w") as f:  # the next commit keeps v1 again, as history
            f.write("v2 again\n")
        assert kept.read_text() == "v1\n"
        assert_follows_the_specs(m.journal_path())
    finally:
        m.stop()
    assert not re.search(r"Traceback| ERROR ", m.log())


def test_killed_between_rejecting_and_journaling(tmp_path: Path) -> None:
    """Killed after a refused draft was renamed into rejected/ and before
    its journal line: the next mount journals that rejected write (G5: it is
    kept, and the journal names it)."""
    require_strace()
    m = Mount(tmp_path)
    m.start()
    try:
        path = m.seed("plan.md", "v1\n")
        # No fork while the loser's descriptor is open: a child's exec
        # closes its copy, and that close is a flush (a commit point) too.
        # So the winner (another process, another identity) and the tracer
        # start first.
        winner = subprocess.Popen(["sh", "-c", 'read go; printf "the winner\'s update\\n" > "$1"',
                                   "sh", path], stdin=subprocess.PIPE, text=True)
        assert m.proc is not None
        # From here, the daemon's first write(2) is the winner's journal
        # line, its second the loser's refusal, right after the loser's
        # draft was renamed into rejected/: strace kills it there.
        tracer = kill_at(m, "write", when=2)
        loser = open(path, "r+")  # rests on v1, as the winner will
        loser.write("the loser's update\n")
        loser.flush()
        assert winner.stdin is not None
        winner.stdin.write("go\n")
        winner.stdin.close()
        assert winner.wait(timeout=30) == 0
        with pytest.raises(OSError) as died:
            loser.close()  # refused, and the daemon dies journaling it
        assert died.value.errno == errno.ECONNABORTED  # the request in flight
        wait_killed(m, tracer)
        rejected = os.listdir(m.backing / ".fencefs" / "rejected")
        assert len(rejected) == 1 and ".conflict." in rejected[0]
        assert not [e for e in m.journal() if e.get("rejected") == rejected[0]]
        remount(m)
        [line] = [e for e in m.journal() if e.get("rejected") == rejected[0]]
        assert (line["event"], line["reason"], line["file"]) == (
            "rejected", "daemon-restart", "plan.md")
        with open(path) as f:
            assert f.read() == "the winner's update\n"
        assert_follows_the_specs(m.journal_path())
    finally:
        m.stop()
    assert not re.search(r"Traceback| ERROR ", m.log())
