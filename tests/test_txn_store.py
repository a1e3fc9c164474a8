"""The store side of multi-file commits: intent record, install, recover.

No mount: a real backing directory, real drafts and renames, and a real
process killed (SIGKILL, by the store's test hook) at every step of
``TxnStore.install``; the next ``recover`` must leave all files old or all new.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fencefs.core.model import Persisted
from fencefs.store.backing import Backing
from fencefs.store.drafts import Drafts
from fencefs.store.journal import Journal, read_journal
from fencefs.store.txn import (
    CRASH_ENV,
    STEPS,
    Item,
    TxnStore,
    delete_marker,
    find_intent,
    mark,
    new_id,
)

FILES = ("plan.md", "notes/memory.md", "results.json")


def setup_backing(root: Path) -> tuple[Backing, Drafts, Journal, TxnStore]:
    root.mkdir(exist_ok=True)
    backing = Backing(str(root))
    drafts = Drafts(backing)
    journal = Journal(os.path.join(backing.meta, "journal.jsonl"))
    return backing, drafts, journal, TxnStore(backing, drafts, journal)


def seed(backing: Backing, files: tuple[str, ...] = FILES, text: str = "old") -> None:
    for rel in files:
        path = Path(backing.abs(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{text} {rel}")
        backing.write_state(rel, Persisted(1, 0), durable=False)


def stage(drafts: Drafts, txn: str, files: tuple[str, ...], text: str = "new",
          delete: tuple[str, ...] = ()) -> list[Item]:
    items = []
    for rel in files:
        d = drafts.create(rel, "agent:t", os.getpid(), None)
        os.write(d.fd, f"{text} {rel}".encode())
        mark(d, txn)
        drafts.prepare(d, Persisted(2, 0), durable=True)
        items.append(Item(rel, d, 2, 0))
    for rel in delete:
        items.append(Item(rel, delete_marker(drafts, rel, "agent:t", os.getpid(), txn),
                          1, 0, delete=True))
    return items


def contents(backing: Backing, files: tuple[str, ...] = FILES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for rel in files:
        try:
            out[rel] = Path(backing.abs(rel)).read_text()
        except FileNotFoundError:
            out[rel] = None
    return out


def test_install_renames_all_and_journals_intent_before_commit(tmp_path: Path) -> None:
    backing, drafts, journal, store = setup_backing(tmp_path / "b")
    seed(backing)
    txn = new_id()
    store.install(txn, "agent:t", 1, stage(drafts, txn, FILES))
    assert contents(backing) == {rel: f"new {rel}" for rel in FILES}
    assert [backing.read_state(rel)[0].version for rel in FILES] == [2, 2, 2]
    events = [e["event"] for e in read_journal(journal.path)]
    assert events == ["txn-intent", "txn-commit"]
    intent = find_intent(journal.path, txn)
    assert intent is not None and [m["file"] for m in intent["members"]] == list(FILES)
    assert journal.synced >= 1  # the intent was fsynced before the renames
    assert os.listdir(drafts.dir) == []


def test_install_creates_and_deletes(tmp_path: Path) -> None:
    backing, drafts, journal, store = setup_backing(tmp_path / "b")
    seed(backing, ("gone.txt",))
    txn = new_id()
    store.install(txn, "agent:t", 1, stage(drafts, txn, ("deep/new/file.txt",),
                                             delete=("gone.txt",)))
    assert contents(backing, ("deep/new/file.txt", "gone.txt")) == {
        "deep/new/file.txt": "new deep/new/file.txt", "gone.txt": None}
    assert os.listdir(drafts.dir) == []


def test_find_intent_reads_backwards_over_chunks(tmp_path: Path) -> None:
    _, _, journal, _ = setup_backing(tmp_path / "b")
    journal.record("txn-intent", "a", txn="first", members=[])
    for n in range(300):
        journal.record("commit", f"f{n}", pad="x" * 100)
    journal.record("txn-intent", "b", txn="second", members=[{"file": "b"}])
    with open(journal.path, "ab") as f:
        f.write(b'{"event":"txn-intent","txn":"torn"')  # a torn last line
    assert find_intent(journal.path, "second", chunk=512)["file"] == "b"  # type: ignore[index]
    assert find_intent(journal.path, "first", chunk=512)["file"] == "a"  # type: ignore[index]
    assert find_intent(journal.path, "torn", chunk=512) is None
    assert find_intent(journal.path, "never", chunk=512) is None


CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from tests.test_txn_store import setup_backing, stage
    from fencefs.store.txn import new_id
    backing, drafts, journal, store = setup_backing(__import__("pathlib").Path(sys.argv[1]))
    files = ("plan.md", "notes/memory.md", "results.json")
    txn = new_id()
    store.install(txn, "agent:t", os.getpid(),
                  stage(drafts, txn, files[:2], delete=files[2:]))
    print("finished")
""")


@pytest.mark.parametrize("step", STEPS)
def test_killed_at_every_step_recovers_all_or_nothing(tmp_path: Path, step: str) -> None:
    """A process running install is SIGKILLed at ``step``; recover then rolls
    the transaction back (no intent) or forward (intent), and says which."""
    root = tmp_path / "b"
    backing, _, journal, _ = setup_backing(root)
    seed(backing)
    env = {**os.environ, CRASH_ENV: step}
    repo = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), repo], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr  # killed at the step, not finished
    old = {rel: f"old {rel}" for rel in FILES}
    new = {"plan.md": "new plan.md", "notes/memory.md": "new notes/memory.md",
           "results.json": None}
    torn = contents(backing)
    if step == "after-rename-1":
        assert torn not in (old, new)  # the crash really tore it
    _, drafts, journal, store = setup_backing(root)
    outcomes = store.recover()
    after = contents(backing)
    assert len(outcomes) == (0 if step == "after-deletes" else 1)
    if step == "before-intent":
        assert after == old
        assert outcomes[0]["rolled"] == "back"
        assert len(os.listdir(drafts.rejected_dir)) == 2  # the two drafts, abandoned
    else:
        assert after == new
        if outcomes:
            assert outcomes[0]["rolled"] == "forward"
        assert [backing.read_state(r)[0].version for r in FILES[:2]] == [2, 2]
    assert os.listdir(drafts.dir) == []
    recovered = [e for e in read_journal(journal.path) if e["event"] == "txn-recovered"]
    assert len(recovered) == len(outcomes)
    assert store.recover() == []  # idempotent


def test_recover_leaves_plain_orphans_alone(tmp_path: Path) -> None:
    backing, drafts, journal, store = setup_backing(tmp_path / "b")
    seed(backing, ("plain.txt",))
    d = drafts.create("plain.txt", "x", 1, None)
    os.close(d.fd)
    assert store.recover() == []
    assert os.listdir(drafts.dir) == [d.name]  # for the generic recovery to put away
    assert json.loads(os.getxattr(d.path, "user.fencefs.draft"))["path"] == "plain.txt"
