"""Durability (G6) of path commits, shared-policy fsyncs, transactions,
snapshots and journal rotation, at the system-call level (the tracer and
the request/reply matching are tests/test_durability.py's).

What each request must have on disk before its reply reaches /dev/fuse:

- truncate by path: the new draft (data and state attribute) before its
  rename; the commit's journal line written before the rename, the
  directory and the journal synced after it;
- rename over a file: the moved file's new state attribute (and data)
  synced before the rename, the journal line written before it; a rename
  is a namespace change (docs/guide.md, "What a crash can lose"): the next
  durable step (here the fsync of the directory) syncs the directory and
  the journal before its reply;
- unlink: journaled before the name goes; the next durable step syncs;
- shared policy: fsync() and the close of a write handle write the new
  state attribute through the descriptor and sync the file (after the
  attribute) and the journal (after the commit's line); a truncate by path
  syncs the file too;
- a transaction's commit: every draft synced before the intent line, the
  intent synced before the first rename, the directories and the journal
  synced after the last rename;
- a snapshot: its manifest synced before its rename, the directories and
  the journal after;
- a journal rotation: the rotated-out segment is synced before the reply;
- a reclaim under --durability none still syncs its epoch (epochs never go
  down); nothing else syncs under none.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fencefs import client
from tests.support.agent import Agent
from tests.support.mount import Mount
from tests.support.procs import wait_traced
from tests.test_durability import (
    FLUSH,
    FSYNC,
    SETXATTR,
    Call,
    Traced,
    commit_order,
    need_strace,
    parse,
    synced,
)

SETATTR, UNLINK, RENAME, FSYNCDIR, RENAME2 = 4, 10, 12, 30, 45  # FUSE opcodes
MORE = ("fsync,fdatasync,syncfs,rename,renameat,renameat2,write,writev,read,pwrite64,"
        "fsetxattr,setxattr,unlink,unlinkat,link,linkat,ftruncate")


class Trace(Traced):
    """Traced, with the path and link calls too."""

    def __enter__(self) -> Trace:
        self.tracer = subprocess.Popen(
            ["strace", "-f", "-tt", "-y", "-xx", "-s", "4096", "-o", str(self.out),
             "-e", f"trace={MORE}", "-p", str(self.pid)], stderr=subprocess.DEVNULL)
        wait_traced(self.pid, self.tracer.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.tracer.terminate()
        self.tracer.wait(timeout=30)
        self.calls = parse(self.out.read_text())

    def window(self, *opcodes: int, having: str = "") -> tuple[int, int, list[Call]]:
        """The one request of these opcodes (whose calls include one whose
        text has ``having``): (read index, reply index, calls between)."""
        found = [(s, e) for op in opcodes for s, e in self.requests(op)
                 if not having or any(mentions(c, having) for c in self.between(s, e))]
        assert len(found) == 1, f"one request of {opcodes} expected, found {found}"
        start, end = found[0]
        return start, end, self.between(start, end)

    def syncs(self) -> list[Call]:
        return [c for c in self.calls if c.name in ("fsync", "fdatasync", "syncfs")]


def mentions(call: Call, text: str) -> bool:
    """The call's arguments (or, for a rename, its joined paths) hold ``text``."""
    return text in call.text or (call.name.startswith("rename")
                                 and any(text in p for p in call.renamed()))


def journal_of(mount: Mount) -> str:
    return str(mount.backing / ".fencefs" / "journal.jsonl")


def journaled(calls: list[Call], journal: str, what: str) -> list[int]:
    return [c.index for c in calls if c.name == "write" and c.path == journal
            and what in c.text]


def state_writes(calls: list[Call], path: str) -> list[int]:
    return [c.index for c in calls if c.name == "fsetxattr" and c.path == path
            and '"user.fencefs.state"' in c.text]


def renames_to(calls: list[Call], dest: str) -> list[Call]:
    return [c for c in calls if c.name.startswith("rename") and c.renamed()[1] == dest]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_step(traced: Trace, mount: Mount) -> list[str]:
    """What the directory fsync that follows a namespace change fails to sync."""
    problems = []
    start, reply, calls = traced.window(FSYNCDIR)
    if not synced(calls, str(mount.backing)):
        problems.append("the directory is not synced before the fsyncdir reply")
    if not synced(calls, journal_of(mount)):
        problems.append("the journal is not synced before the fsyncdir reply")
    return problems


# -- path commits ---------------------------------------------------------------


def test_a_truncate_by_path_is_on_disk_before_its_reply(mount: Mount, tmp_path: Path) -> None:
    need_strace()
    path = mount.seed("plan.md", "version one\n")
    with Trace(mount, tmp_path / "trace") as traced:
        os.truncate(path, 3)
    assert os.getxattr(path, "user.fencefs.version") == b"2"
    assert commit_order(traced, SETATTR, mount.backing, "plan.md") == []


def test_the_first_durable_step_syncs_what_the_mount_made(mount: Mount,
                                                          tmp_path: Path) -> None:
    """.fencefs/ (the names of the journal, drafts/, ...) and the root reach
    the disk before the first reply that says a commit is durable."""
    need_strace()
    with Agent() as agent:
        fd = agent.ok("open", mount.path("plan.md"), "O_WRONLY|O_CREAT|O_TRUNC")
        agent.ok("write", fd, "v1\n")
        with Trace(mount, tmp_path / "trace") as traced:
            agent.ok("close", fd)
        agent.close()
    start, reply, calls = traced.window(FLUSH, having="plan.md")
    for d in (mount.backing / ".fencefs", mount.backing):
        assert synced(calls, str(d)), f"{d} is not synced before the first commit's reply"


def test_an_append_is_on_disk_before_its_reply(mount: Mount, tmp_path: Path) -> None:
    need_strace()
    log = mount.seed("log.txt", "one\n")
    with Agent() as agent:
        fd = agent.ok("open", log, "O_WRONLY|O_APPEND")
        agent.ok("write", fd, "two\n")
        with Trace(mount, tmp_path / "trace") as traced:
            agent.ok("close", fd)
        agent.close()
    assert os.getxattr(log, "user.fencefs.version") == b"2"
    assert commit_order(traced, FLUSH, mount.backing, "log.txt") == []


def test_a_rename_over_a_file_carries_its_state_to_disk_first(mount: Mount,
                                                               tmp_path: Path) -> None:
    need_strace()
    plan = mount.seed("plan.md", "v1\n")
    tmp = mount.seed("plan.tmp", "replacement\n")
    journal = journal_of(mount)
    source, target = str(mount.backing / "plan.tmp"), str(mount.backing / "plan.md")
    with Trace(mount, tmp_path / "trace") as traced:
        os.rename(tmp, plan)
        fsync_dir(mount.mnt)
    assert os.getxattr(plan, "user.fencefs.version") == b"2"
    start, reply, calls = traced.window(RENAME, RENAME2, having=target)
    [rename] = renames_to(calls, target)
    assert journaled(calls, journal, '"op":"rename"') and \
        journaled(calls, journal, '"op":"rename"')[0] < rename.index, \
        "the rename is not journaled before it happens"
    state = state_writes(calls, source)
    assert state and state[0] < rename.index, "the new state is not written before the rename"
    assert [i for i in synced(calls, source) if state[0] < i < rename.index], \
        "the moved file (data and new state) is not synced before the rename"
    assert [i for i in synced(calls, source) if i < state[0]], \
        "the moved data is not synced before the decision (off the event loop)"
    assert durable_step(traced, mount) == []


def test_an_unlink_is_journaled_first_and_synced_by_the_next_durable_step(
        mount: Mount, tmp_path: Path) -> None:
    need_strace()
    gone = mount.seed("gone.txt", "x\n")
    journal = journal_of(mount)
    with Trace(mount, tmp_path / "trace") as traced:
        os.unlink(gone)
        fsync_dir(mount.mnt)
    assert not os.path.exists(gone)
    start, reply, calls = traced.window(UNLINK)
    moved = [c for c in calls if c.name.startswith("rename")
             and c.renamed()[0] == str(mount.backing / "gone.txt")]
    assert moved, "the file did not leave the tree"
    line = journaled(calls, journal, '"op":"unlink"')
    assert line and line[0] < moved[0].index, "the unlink is not journaled before it happens"
    assert durable_step(traced, mount) == []


# -- the shared policy ------------------------------------------------------------


def shared_order(traced: Trace, mount: Mount, opcode: int, name: str) -> list[str]:
    """What is wrong with an in-place commit's syncs (fsync, close, truncate)."""
    problems = []
    path, journal = str(mount.backing / name), journal_of(mount)
    start, reply, calls = traced.window(opcode, having=journal)
    state = state_writes(calls, path)
    line = journaled(calls, journal, '"event":"commit"')
    if not state:
        problems.append("the new state attribute is not written")
    elif not [i for i in synced(calls, path) if i > state[0]]:
        problems.append("the file (data and state) is not synced after its new state")
    if not line:
        problems.append("the commit is not journaled")
    elif not [i for i in synced(calls, journal) if i > line[0]]:
        problems.append("the journal is not synced after the commit's line")
    return problems


@pytest.mark.parametrize("how", ["fsync", "close"])
def test_a_shared_commit_is_on_disk_before_its_reply(mount: Mount, tmp_path: Path,
                                                     how: str) -> None:
    need_strace()
    db = mount.path("state.db")  # shared by the default globs
    with Agent() as agent:
        fd = agent.ok("open", db, "O_RDWR|O_CREAT")
        agent.ok("write", fd, "page one")
        with Trace(mount, tmp_path / "trace") as traced:
            agent.ok(how, fd)
        if how == "fsync":
            agent.ok("close", fd)
        agent.close()
    assert os.getxattr(db, "user.fencefs.policy") == b"shared"
    assert shared_order(traced, mount, FSYNC if how == "fsync" else FLUSH, "state.db") == []


def test_a_shared_truncate_by_path_is_on_disk_before_its_reply(mount: Mount,
                                                               tmp_path: Path) -> None:
    need_strace()
    db = mount.seed("state.db", "0123456789")
    with Trace(mount, tmp_path / "trace") as traced:
        os.truncate(db, 4)
    assert os.path.getsize(db) == 4
    assert shared_order(traced, mount, SETATTR, "state.db") == []


# -- transactions and snapshots -----------------------------------------------------


def test_a_transaction_is_on_disk_before_its_reply(mount: Mount, tmp_path: Path) -> None:
    need_strace()
    mount.seed("a.md", "a1\n")
    mount.seed("b.md", "b1\n")
    journal = journal_of(mount)
    targets = [str(mount.backing / n) for n in ("a.md", "b.md")]
    with Trace(mount, tmp_path / "trace") as traced:
        with client.transaction(mount.mnt) as tx:
            tx.write("a.md", b"a2\n")
            tx.write("b.md", b"b2\n")
    assert os.getxattr(mount.path("a.md"), "user.fencefs.version") == b"2"
    start, reply, calls = traced.window(SETXATTR, having='"txn-intent"')
    intent = journaled(calls, journal, '"event":"txn-intent"')
    renames = [r for t in targets for r in renames_to(calls, t)]
    assert len(intent) == 1 and len(renames) == 2, (intent, renames)
    first, last = min(r.index for r in renames), max(r.index for r in renames)
    for rename in renames:
        draft = rename.renamed()[0]
        state = state_writes(traced.calls[:rename.index], draft)
        assert state, f"{draft}: no state attribute before its rename"
        assert [i for i in synced(traced.calls, draft) if state[-1] < i < intent[0]], \
            f"{draft} (data and state) is not synced before the intent"
    drafts = str(mount.backing / ".fencefs" / "drafts")
    assert [i for i in synced(calls, drafts) if i < intent[0]], \
        "drafts/ (where a roll forward finds the drafts the intent names) is not synced " \
        "before the intent"
    assert [i for i in synced(calls, journal) if intent[0] < i < first], \
        "the intent is not synced before the first rename"
    assert [i for i in synced(calls, str(mount.backing)) if last < i], \
        "the directory is not synced between the renames and the reply"
    done = journaled(calls, journal, '"event":"txn-commit"')
    assert done and [i for i in synced(calls, journal) if done[0] < i], \
        "the txn-commit line is not synced before the reply"


def test_a_snapshot_is_on_disk_before_its_reply(mount: Mount, tmp_path: Path) -> None:
    need_strace()
    mount.seed("plan.md", "v1\n")
    meta = mount.backing / ".fencefs" / "snapshot-meta"
    with Trace(mount, tmp_path / "trace") as traced:
        os.setxattr(mount.mnt, "user.fencefs.snapshot-create", b"s1")
    assert (meta / "s1.json").exists()
    start, reply, calls = traced.window(SETXATTR, having="s1.json")
    [rename] = renames_to(calls, str(meta / "s1.json"))
    manifest = rename.renamed()[0]
    assert [i for i in synced(calls, manifest) if i < rename.index], \
        "the manifest is not synced before its rename"
    for d in (meta, mount.backing / ".fencefs" / "snapshots"):
        assert [i for i in synced(calls, str(d)) if i > rename.index], f"{d} is not synced"
    line = journaled(calls, journal_of(mount), '"event":"snapshot"')
    assert line and [i for i in synced(calls, journal_of(mount)) if i > line[0]], \
        "the snapshot's journal line is not synced before the reply"


def test_a_rotated_journal_segment_is_on_disk_before_the_reply(make_mount,  # type: ignore[no-untyped-def]
                                                               tmp_path: Path) -> None:
    need_strace()
    # A journal just past one segment (1 MiB with --journal-max 2M): the next
    # line rotates it.
    journal = tmp_path / "m" / "backing" / ".fencefs" / "journal.jsonl"
    journal.parent.mkdir(parents=True)
    filler = '{"ts":0,"event":"note","file":"-"}\n'
    journal.write_text(filler * ((1 << 20) // len(filler) + 1))
    mount = make_mount("--journal-max", "2M")
    path = mount.path("plan.md")
    with Agent() as agent:
        fd = agent.ok("open", path, "O_WRONLY|O_CREAT|O_TRUNC")
        agent.ok("write", fd, "v1\n")
        with Trace(mount, tmp_path / "trace") as traced:
            agent.ok("close", fd)
        agent.close()
    segment = str(mount.backing / ".fencefs" / "journal" / "000001.jsonl")
    assert os.path.exists(segment)
    start, reply, calls = traced.window(FLUSH, having=segment)
    assert synced(calls, segment), "the rotated-out segment is not synced before the reply"
    assert synced(calls, journal_of(mount)), "the new segment is not synced before the reply"


# -- --durability none ----------------------------------------------------------------


def test_no_path_shared_or_transaction_syncs_under_durability_none(
        make_mount, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    need_strace()
    mount = make_mount("--durability", "none")
    plan = mount.seed("plan.md", "version one\n")
    tmp = mount.seed("plan.tmp", "replacement\n")
    gone = mount.seed("gone.txt", "x\n")
    mount.seed("a.md", "a1\n")
    with Agent() as agent, Trace(mount, tmp_path / "trace") as traced:
        os.truncate(plan, 3)
        os.rename(tmp, plan)
        os.unlink(gone)
        fsync_dir(mount.mnt)
        fd = agent.ok("open", mount.path("state.db"), "O_RDWR|O_CREAT")
        agent.ok("write", fd, "page")
        agent.ok("fsync", fd)
        agent.ok("close", fd)
        os.truncate(mount.path("state.db"), 2)
        with client.transaction(mount.mnt) as tx:
            tx.write("a.md", b"a2\n")
        os.setxattr(mount.mnt, "user.fencefs.snapshot-create", b"s1")
        agent.close()
    assert os.getxattr(plan, "user.fencefs.version") == b"3"
    assert os.getxattr(mount.path("a.md"), "user.fencefs.version") == b"2"
    for opcodes in ((SETATTR,), (RENAME, RENAME2), (UNLINK,), (FSYNCDIR,), (FSYNC,), (FLUSH,),
                    (SETXATTR,)):
        assert any(traced.requests(op) for op in opcodes), f"no request {opcodes} traced"
    assert traced.syncs() == [], f"--durability none synced: {traced.syncs()}"


def test_a_reclaim_syncs_its_epoch_even_under_durability_none(make_mount,  # type: ignore[no-untyped-def]
                                                              tmp_path: Path) -> None:
    need_strace()
    mount = make_mount("--durability", "none")
    path = mount.seed("plan.md", "v1\n")
    target = str(mount.backing / "plan.md")
    with Trace(mount, tmp_path / "trace") as traced:
        os.setxattr(path, "user.fencefs.reclaim", b"1")
    assert os.getxattr(path, "user.fencefs.epoch") == b"1"
    start, reply, calls = traced.window(SETXATTR, having=target)
    state = state_writes(calls, target)
    assert state and [i for i in synced(calls, target) if i > state[0]], \
        "the new epoch is not synced (epochs never go down, whatever --durability says)"
    assert [i for i in synced(calls, str(mount.backing)) if i > state[0]], \
        "the file's directory is not synced after its new epoch"


# -- recovery at mount ---------------------------------------------------------------


@pytest.mark.parametrize("left", ["orphan", "transaction", "both"])
def test_recovery_is_on_disk_before_the_mount_serves(tmp_path: Path, left: str) -> None:
    """Drafts a dead daemon left: an orphan (put away as abandoned), a
    transaction's draft whose intent is journaled (rolled forward), or both.
    What recovery did (the renames, their directories, its journal lines)
    is synced before the first reply on /dev/fuse (the mount's INIT)."""
    import json
    import sys
    import time

    from tests.support.mount import mounted, require_fuse

    require_fuse()
    need_strace()
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    drafts = backing / ".fencefs" / "drafts"
    drafts.mkdir(parents=True)
    mnt.mkdir()
    orphan, rolled = drafts / "1-1.draft", drafts / "1-txn-T1-x.draft"
    if left != "transaction":
        orphan.write_text("orphaned")
        os.setxattr(orphan, "user.fencefs.draft",
                    json.dumps({"path": "plan.md", "identity": "x", "pid": 1}).encode())
    if left != "orphan":
        rolled.write_text("rolled forward")
        os.setxattr(rolled, "user.fencefs.draft", json.dumps(
            {"path": "a.md", "identity": "x", "pid": 1, "txn": "T1"}).encode())
    (backing / ".fencefs" / "journal.jsonl").write_text(json.dumps(
        {"ts": 0, "event": "txn-intent", "file": "a.md", "txn": "T1", "identity": "x",
         "pid": 1, "members": [{"file": "a.md", "draft": rolled.name, "version": 1,
                                "epoch": 0, "delete": False}]},
        separators=(",", ":")) + "\n")
    out = tmp_path / "trace"
    daemon = subprocess.Popen(
        ["strace", "-f", "-tt", "-y", "-xx", "-s", "4096", "-o", str(out), "-e", f"trace={MORE}",
         sys.executable, "-m", "fencefs.cli", "mount", "--foreground", "--log-file",
         str(tmp_path / "daemon.log"), str(backing), str(mnt)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not mounted(str(mnt)):
            assert daemon.poll() is None, "the daemon died at start"
            assert time.monotonic() < deadline, "no mount within 30 s"
            time.sleep(0.02)
        os.listdir(mnt)  # served: the mount's INIT was answered
        if left != "orphan":
            assert (mnt / "a.md").read_text() == "rolled forward"
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        daemon.wait(timeout=30)
    calls = parse(out.read_text())
    first_reply = min(c.index for c in calls if c.name == "writev" and c.path == "/dev/fuse")
    calls = calls[:first_reply]
    journal = str(backing / ".fencefs" / "journal.jsonl")
    wanted = {"orphan": ['"event":"abandoned"'], "transaction": ['"event":"txn-recovered"'],
              "both": ['"event":"abandoned"', '"event":"txn-recovered"']}[left]
    for what in wanted:
        line = journaled(calls, journal, what)
        assert line and [i for i in synced(calls, journal) if i > line[0]], \
            f"the {what} line is not synced before the mount serves"
    if left != "orphan":
        [rename] = renames_to(calls, str(backing / "a.md"))
        assert [i for i in synced(calls, str(backing)) if i > rename.index], \
            "the rolled-forward rename's directory is not synced before the mount serves"
