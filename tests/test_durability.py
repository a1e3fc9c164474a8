"""Durability (G6) at the system-call level: the daemon is traced with
strace while it commits and reclaims, each FUSE request is matched to its
reply by its unique id (the headers read from and written to /dev/fuse), and
the order of the syncs in between is checked:

- a commit (close, fsync): the draft's data and state attribute are synced
  before the rename; the directory and the journal are synced after it and
  before the reply reaches the kernel;
- a reclaim: the new epoch (the state attribute) and the journal are synced
  before the reply;
- under --durability none a commit syncs nothing.

Killing the daemon keeps the page cache, so no kill test can see a missing
fsync; this one can.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.agent import Agent
from tests.support.mount import Mount
from tests.support.procs import wait_traced

FLUSH, FSYNC, SETXATTR = 25, 20, 21  # FUSE opcodes
SYSCALLS = "fsync,fdatasync,syncfs,rename,renameat,renameat2,write,writev,read,fsetxattr"


@dataclass
class Call:
    index: int
    name: str
    args: str
    ret: str

    @property
    def text(self) -> str:
        """The arguments with strace's \\xNN escapes (-xx) undone."""
        return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), self.args)

    @property
    def path(self) -> str:
        """The file of the first argument (strace -y), or the first string."""
        m = re.match(r'\d+<([^>]*)>', self.text) or re.match(r'"([^"]*)"', self.text)
        return m.group(1) if m else ""

    def renamed(self) -> tuple[str, str]:
        """(source, destination) of a rename, renameat or renameat2 as full
        paths (an ``*at`` call's names joined to their directories, strace -y)."""
        text = self.text
        if self.name == "rename":
            names = re.findall(r'"([^"]*)"', text)
            return (names[0], names[1]) if len(names) >= 2 else ("", "")
        pairs = re.findall(r'(?:\d+<([^>]*)>|AT_FDCWD), "([^"]*)"', text)
        if len(pairs) < 2:
            return "", ""
        (sdir, sname), (ddir, dname) = pairs[:2]
        return (os.path.join(sdir, sname) if sdir else sname,
                os.path.join(ddir, dname) if ddir else dname)

    def fuse_header(self) -> tuple[int, int] | None:
        """(opcode or error, unique) of a request read from or a reply written
        to /dev/fuse (the first 16 bytes, strace -xx)."""
        if self.path != "/dev/fuse":
            return None
        m = re.search(r'"((?:\\x[0-9a-f]{2}){16})', self.args)
        if m is None:
            return None
        raw = bytes.fromhex(m.group(1).replace("\\x", ""))
        return int.from_bytes(raw[4:8], "little"), int.from_bytes(raw[8:16], "little")


def parse(trace: str) -> list[Call]:
    """Completed calls, in the order they completed (strace -f joins an
    ``<unfinished ...>`` call with its ``<... resumed>`` line)."""
    calls: list[Call] = []
    pending: dict[str, tuple[str, str]] = {}
    for line in trace.splitlines():
        m = re.match(r"(\d+)\s+\S+ (.*)$", line)
        if m is None:
            continue
        pid, rest = m.groups()
        if rest.endswith("<unfinished ...>"):
            call = re.match(r"(\w+)\((.*) <unfinished \.\.\.>$", rest)
            if call:
                pending[pid] = (call.group(1), call.group(2))
            continue
        resumed = re.match(r"<\.\.\. (\w+) resumed>(.*)\) += (.*)$", rest)
        if resumed:
            name, args = pending.pop(pid, (resumed.group(1), ""))
            calls.append(Call(len(calls), name, args + resumed.group(2), resumed.group(3)))
            continue
        call = re.match(r"(\w+)\((.*)\) += (.*)$", rest)
        if call:
            calls.append(Call(len(calls), *call.groups()))
    return calls


class Traced:
    """The calls the daemon made while serving a block of the test."""

    def __init__(self, mount: Mount, out: Path) -> None:
        assert mount.proc is not None
        self.pid, self.out = mount.proc.pid, out

    def __enter__(self) -> Traced:
        self.tracer = subprocess.Popen(
            ["strace", "-f", "-tt", "-y", "-xx", "-s", "4096", "-o", str(self.out),
             "-e", f"trace={SYSCALLS}", "-p", str(self.pid)], stderr=subprocess.DEVNULL)
        wait_traced(self.pid, self.tracer.pid)  # attached to every thread
        return self

    def __exit__(self, *exc: object) -> None:
        self.tracer.terminate()
        self.tracer.wait(timeout=30)
        self.calls = parse(self.out.read_text())

    def requests(self, opcode: int) -> list[tuple[int, int]]:
        """(index of the request's read, index of its reply) for each request
        of this opcode."""
        found = []
        for call in self.calls:
            header = call.fuse_header()
            if call.name == "read" and header is not None and header[0] == opcode:
                unique = header[1]
                reply = next(c.index for c in self.calls[call.index + 1:]
                             if c.name == "writev" and (h := c.fuse_header()) is not None
                             and h[1] == unique)
                found.append((call.index, reply))
        return found

    def between(self, start: int, end: int) -> list[Call]:
        return self.calls[start + 1:end]


def need_strace() -> None:
    if shutil.which("strace") is None:
        if os.environ.get("CI"):
            pytest.fail("strace is missing (scripts/setup installs it)")
        pytest.skip("needs strace")


def synced(calls: list[Call], path: str) -> list[int]:
    return [c.index for c in calls if c.name in ("fsync", "fdatasync") and c.path == path
            and c.ret == "0"]


def commit_order(traced: Traced, opcode: int, backing: Path, name: str) -> list[str]:
    """What is wrong with the syncs of the one commit served by a request."""
    problems = []
    journal = str(backing / ".fencefs" / "journal.jsonl")
    commits = []
    for start, end in traced.requests(opcode):
        calls = traced.between(start, end)
        renames = [c for c in calls if c.name.startswith("rename")
                   and c.renamed()[1] == str(backing / name)]
        if renames:
            commits.append((calls, renames[0], end))
    assert len(commits) == 1, f"one commit expected, found {len(commits)}"
    calls, rename, reply = commits[0]
    draft = rename.renamed()[0]
    state = [c.index for c in calls if c.name == "fsetxattr" and c.path == draft
             and '"user.fencefs.state"' in c.text]
    if not state or state[0] > rename.index:
        problems.append("the draft's state attribute is not written before the rename")
    if not [i for i in synced(calls, draft) if state and state[0] < i < rename.index]:
        problems.append("the draft (data and state) is not synced before the rename")
    if not [c for c in calls if c.name == "write" and c.path == journal
            and c.index < rename.index]:
        problems.append("the commit is not journaled before the rename")
    if not [i for i in synced(calls, str(backing)) if rename.index < i < reply]:
        problems.append("the directory is not synced between the rename and the reply")
    if not [i for i in synced(calls, journal) if rename.index < i < reply]:
        problems.append("the journal is not synced between the rename and the reply")
    return problems


@pytest.mark.parametrize("how", ["close", "fsync"])
def test_a_commit_is_on_disk_before_its_reply(mount: Mount, tmp_path: Path, how: str) -> None:
    need_strace()
    path = mount.seed("plan.md", "v1\n")
    with Agent() as agent:
        fd = agent.ok("open", path, "O_WRONLY|O_TRUNC")
        agent.ok("write", fd, "v2\n")
        with Traced(mount, tmp_path / "trace") as traced:
            agent.ok(how, fd)
        if how == "fsync":
            agent.ok("close", fd)
        agent.close()
    assert os.getxattr(path, "user.fencefs.version") == b"2"
    opcode = FLUSH if how == "close" else FSYNC
    assert commit_order(traced, opcode, mount.backing, "plan.md") == []


def test_a_reclaim_is_on_disk_before_its_reply(mount: Mount, tmp_path: Path) -> None:
    need_strace()
    path = mount.seed("plan.md", "v1\n")
    with Traced(mount, tmp_path / "trace") as traced:
        os.setxattr(path, "user.fencefs.reclaim", b"1")
    assert os.getxattr(path, "user.fencefs.epoch") == b"1"
    journal = str(mount.backing / ".fencefs" / "journal.jsonl")
    target = str(mount.backing / "plan.md")
    [(start, reply)] = [(s, e) for s, e in traced.requests(SETXATTR)
                        if any(c.name == "fsetxattr" and c.path == target
                               for c in traced.between(s, e))]
    calls = traced.between(start, reply)
    epoch = [c.index for c in calls if c.name == "fsetxattr" and c.path == target
             and '"user.fencefs.state"' in c.text]
    assert epoch, "the new epoch is not written"
    assert [i for i in synced(calls, target) if i > epoch[0]], \
        "the new epoch is not synced before the reply"
    written = [c.index for c in calls if c.name == "write" and c.path == journal]
    assert written and [i for i in synced(calls, journal) if i > written[0]], \
        "the reclaim's journal line is not synced before the reply"


def test_no_syncs_under_durability_none(make_mount, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    need_strace()
    mount = make_mount("--durability", "none")
    path = mount.seed("plan.md", "v1\n")
    with Agent() as agent:
        fd = agent.ok("open", path, "O_WRONLY|O_TRUNC")
        agent.ok("write", fd, "v2\n")
        with Traced(mount, tmp_path / "trace") as traced:
            agent.ok("close", fd)
        agent.close()
    assert os.getxattr(path, "user.fencefs.version") == b"2"
    [(start, reply)] = [(s, e) for s, e in traced.requests(FLUSH)
                        if any(c.name.startswith("rename") for c in traced.between(s, e))]
    syncs = [c for c in traced.between(start, reply)
             if c.name in ("fsync", "fdatasync", "syncfs")]
    assert syncs == [], f"--durability none synced: {syncs}"
