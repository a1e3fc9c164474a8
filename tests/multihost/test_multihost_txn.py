"""Multi-file commits across hosts: two real daemons over one backing
directory, a real 3-member etcd (fencefs/etcd/txns.py, docs/multihost.md).

Which test catches which break (tried by hand): comparing only the first
member (``FENCEFS_TEST_TXN_FIRST_COMPARE_ONLY=1``, the spec's
``MultiHostTxn_FirstCompareOnly``) fails ``test_decision_compares_every_member``
(the race test does not catch it: its transactions all write the first
file, whose compare then suffices, and the host's own check against the view
read just before catches most races); ``HostTxns.roll`` disabled fails
``test_host_killed_between_decision_and_renames_is_rolled_forward`` and
``test_member_opened_on_b_is_rolled_forward_first``; ``HostTxns.recover``
ignoring the intent fails ``test_deciding_host_rolls_its_transaction_forward_at_restart``.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from fencefs.core.transaction import Member
from fencefs.etcd import coordination as co
from fencefs.etcd.client import EtcdClient
from fencefs.etcd.keys import Layout, Record
from fencefs.etcd.localcluster import LocalCluster
from fencefs.etcd.txns import Entry, many_txn, parse_intent
from tests.multihost.conftest import ready
from tests.support.mount import Mount

HostsFactory = Callable[..., tuple[Mount, Mount]]   # the hosts fixture (conftest.py)
COMMIT = "user.fencefs.commit"


def sh(script: str, agent: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env={**os.environ, "FENCEFS_AGENT": agent}, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def commit_errno(stage: Path, agent: str) -> int:
    code = ("import os, sys\ntry:\n    os.setxattr(sys.argv[1], 'user.fencefs.commit', b'1')\n"
            "except OSError as e:\n    print(e.errno)\nelse:\n    print(0)")
    proc = subprocess.run([sys.executable, "-c", code, str(stage)], capture_output=True,
                          text=True, env={**os.environ, "FENCEFS_AGENT": agent}, timeout=120)
    return int(proc.stdout)


def version(m: Mount, name: str) -> int:
    return int(os.getxattr(m.path(name), "user.fencefs.version"))


def events(m: Mount, kind: str) -> list[dict[str, object]]:
    return [e for e in m.journal() if e["event"] == kind]


def test_transaction_on_a_is_seen_whole_on_b(hosts: HostsFactory) -> None:
    a, b = hosts()
    a.seed("plan.md", "plan 0\n")
    b.seed("results.json", "[]\n")
    b.seed("old.txt", "old\n")
    stage = a.mnt / ".fencefs" / "txn" / "t1"
    sh(f"""cd {a.mnt}; mkdir {stage}; cat plan.md results.json >/dev/null
           echo 'plan 1' > {stage}/plan.md; echo '[1]' > {stage}/results.json
           echo 'new' > {stage}/notes.md; echo old.txt > {stage}/.fencefs-delete""", "a")
    assert commit_errno(stage, "a") == 0
    assert os.getxattr(stage, "user.fencefs.result").decode().startswith("ok committed")
    assert Path(b.path("plan.md")).read_text() == "plan 1\n"
    assert Path(b.path("results.json")).read_text() == "[1]\n"
    assert Path(b.path("notes.md")).read_text() == "new\n"
    assert not os.path.exists(b.path("old.txt"))
    assert (version(b, "plan.md"), version(b, "results.json"), version(b, "notes.md")) == \
        (2, 2, 1)
    assert os.listdir(stage) == []
    assert os.listdir(a.backing / ".fencefs" / "drafts") == []
    # B's writer rests on the versions the transaction made: its commit lands
    with open(b.path("plan.md"), "a") as f:
        f.write("plan 2 by B\n")
    assert version(a, "plan.md") == 3


def test_transaction_refused_when_a_member_moved_on_the_other_host(
        hosts: HostsFactory) -> None:
    """A reads both files, B commits the second, A's transaction is EAGAIN
    as a whole: neither file takes A's bytes, which are under rejected/."""
    a, b = hosts()
    a.seed("a.txt", "a0\n")
    a.seed("b.txt", "b0\n")
    stage = a.mnt / ".fencefs" / "txn" / "t1"
    sh(f"""cd {a.mnt}; mkdir {stage}; cat a.txt b.txt >/dev/null
           echo a1 > {stage}/a.txt; echo b1 > {stage}/b.txt""", "a")
    sh(f"cd {b.mnt}; cat b.txt > /dev/null; echo 'b1 by B' > b.txt", "b")
    rejected = len(a.rejected())
    assert commit_errno(stage, "a") in (errno.EAGAIN, errno.EOPNOTSUPP)
    answer = os.getxattr(stage, "user.fencefs.result").decode()
    assert answer.startswith("EAGAIN") and "moved=b.txt" in answer, answer
    assert Path(b.path("a.txt")).read_text() == "a0\n"
    assert Path(b.path("b.txt")).read_text() == "b1 by B\n"
    assert (version(b, "a.txt"), version(b, "b.txt")) == (1, 2)
    assert len(a.rejected()) == rejected + 2


RACER = r"""
cd "$MNT"
ok=""; refused=0
for i in $(seq 1 "$ROUNDS"); do
  d=.fencefs/txn/$FENCEFS_AGENT-$i
  mkdir "$d"
  for f in a b c; do      # one read per file: the line number comes from what is copied
    c=$(cat $f.txt); [ $f = a ] && n=$(printf '%s\n' "$c" | wc -l)
    printf '%s\n%s\n' "$c" "$n $FENCEFS_AGENT-$i" > "$d/$f.txt"
  done
  if setfattr -n user.fencefs.commit -v 1 "$d" 2>/dev/null; then ok="$ok $FENCEFS_AGENT-$i"
  else refused=$((refused + 1)); fi
  rmdir "$d"
done
echo "$refused$ok"
"""


def test_two_hosts_race_multi_file_transactions(hosts: HostsFactory) -> None:
    """An agent on each host appends one line to a.txt, b.txt and c.txt in
    one transaction, round after round. Every final state is a sequence of
    whole transactions: the three files are equal, line k is the k-th
    transaction that committed (numbered from the lines it read), and the
    transactions in it are exactly those whose commit succeeded."""
    a, b = hosts()
    for f in "abc":
        a.seed(f"{f}.txt", "0 seed\n")
    rounds = 25
    agents = [subprocess.Popen(["bash", "-c", RACER], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "FENCEFS_AGENT": name, "MNT": str(m.mnt),
                                    "ROUNDS": str(rounds)})
              for name, m in (("x", a), ("y", b))]
    outs = [p.communicate(timeout=600)[0].split() for p in agents]
    committed = {t for o in outs for t in o[1:]}
    refused = sum(int(o[0]) for o in outs)
    assert len(committed) + refused == 2 * rounds
    texts = [Path(b.path(f"{f}.txt")).read_text() for f in "abc"]
    assert texts[0] == texts[1] == texts[2], texts
    lines = texts[0].splitlines()
    assert [int(line.split()[0]) for line in lines] == list(range(len(lines)))
    assert {line.split()[1] for line in lines[1:]} == committed
    assert len(lines) - 1 == len(committed)
    assert 0 < len(committed)
    assert version(a, "a.txt") == 1 + len(committed)
    assert os.listdir(a.backing / ".fencefs" / "drafts") == []


@pytest.mark.parametrize("step", ["before-intent", "after-rename-1", "after-renames"])
def test_host_killed_between_decision_and_renames_is_rolled_forward(
        own_hosts: HostsFactory, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd decided A's transaction; A's daemon is SIGKILLed (its test hook)
    at ``step`` of the install, i.e. before any rename, after the first, or
    after every rename but before the delete. B's upkeep finds the intent in
    etcd and rolls the whole transaction forward: every file new, the
    deleted one gone; A, restarted, finds nothing left to recover."""
    a, b = own_hosts()
    for f in ("a.txt", "b.txt", "gone.txt"):
        a.seed(f, "old\n")
    a.stop()
    monkeypatch.setenv("FENCEFS_TEST_TXN_CRASH", step)
    a.start()
    monkeypatch.delenv("FENCEFS_TEST_TXN_CRASH")
    ready(a)
    stage = a.mnt / ".fencefs" / "txn" / "k"
    sh(f"""cd {a.mnt}; mkdir {stage}; cat a.txt b.txt >/dev/null
           echo new > {stage}/a.txt; echo new > {stage}/b.txt
           echo gone.txt > {stage}/.fencefs-delete""", "k")
    proc = sh(f"setfattr -n {COMMIT} -v 1 {stage}", "k", check=False)
    assert proc.returncode != 0   # the daemon died under it
    assert a.proc is not None and a.proc.wait(timeout=30) == -9
    a.kill()
    deadline = time.monotonic() + 60
    while not [e for e in events(b, "txn-recovered") if e.get("by") == "host-B"]:
        assert time.monotonic() < deadline, "host B never rolled the transaction forward"
        time.sleep(0.05)
    rolled = [e for e in events(b, "txn-recovered") if e.get("by") == "host-B"][-1]
    assert rolled["rolled"] == "forward" and rolled["decided_by"] == "host-A"
    assert sorted(rolled["files"]) == ["a.txt", "b.txt", "gone.txt"]   # type: ignore[arg-type]
    assert [Path(b.path(f)).read_text() for f in ("a.txt", "b.txt")] == ["new\n", "new\n"]
    assert not os.path.exists(b.path("gone.txt"))
    assert (version(b, "a.txt"), version(b, "b.txt")) == (2, 2)
    assert os.listdir(b.backing / ".fencefs" / "drafts") == []
    with open(b.path("a.txt"), "a") as f:   # B's writer rests on the decided version
        f.write("more by B\n")
    assert version(b, "a.txt") == 3
    a.start()
    ready(a)
    assert Path(a.path("a.txt")).read_text() == "new\nmore by B\n"
    assert a.rejected() == []


def test_member_opened_on_b_is_rolled_forward_first(own_hosts: HostsFactory,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The other way in: B opens a member for writing before its upkeep ran;
    the open rolls the WHOLE transaction forward (not just that file)."""
    a, b = own_hosts()
    a.seed("a.txt", "old\n")
    a.seed("b.txt", "old\n")
    a.stop()
    monkeypatch.setenv("FENCEFS_TEST_TXN_CRASH", "after-intent")
    a.start()
    monkeypatch.delenv("FENCEFS_TEST_TXN_CRASH")
    ready(a)
    stage = a.mnt / ".fencefs" / "txn" / "k"
    sh(f"""cd {a.mnt}; mkdir {stage}; echo new > {stage}/a.txt; echo new > {stage}/b.txt""",
       "k")
    sh(f"setfattr -n {COMMIT} -v 1 {stage}", "k", check=False)
    assert a.proc is not None and a.proc.wait(timeout=30) == -9
    a.kill()
    with open(b.path("b.txt"), "a") as f:
        f.write("by B\n")
    assert Path(b.path("a.txt")).read_text() == "new\n"
    assert Path(b.path("b.txt")).read_text() == "new\nby B\n"
    assert (version(b, "a.txt"), version(b, "b.txt")) == (2, 3)


async def test_decision_compares_every_member(etcd: LocalCluster) -> None:
    """The transaction itself, on the real etcd: the second member's
    revision moved, so the whole decision is refused and nothing is put;
    the intent key is never written."""
    layout = Layout(f"t{uuid.uuid4().hex[:10]}")
    first_only = os.environ.get("FENCEFS_TEST_TXN_FIRST_COMPARE_ONLY") == "1"
    async with EtcdClient(etcd.endpoints.split(",")) as client:
        await client.connect()
        for p in ("a", "b"):
            await client.put(layout.file(p), Record(1, 0, content="").to_bytes())
        va = await co.read(client, layout, "a")
        vb = await co.read(client, layout, "b")
        await client.put(layout.file("b"), Record(2, 0, content="other").to_bytes())
        entries = [Entry(v.path, True, 0, v.revision, Record(2, 0, None, f"d-{v.path}", "h",
                                                               "i", "tx1"))
                   for v in (va, vb)]
        members = [Member("a", 1, 0, content="d-a"), Member("b", 1, 0, content="d-b")]
        intent = json.dumps({"m": [{"file": m.path, "draft": m.content} for m in members]})
        res = await client.txn(*many_txn(layout, "tx1", entries, intent.encode(),
                                         first_only=first_only))
        assert not res.succeeded
        assert (await co.read(client, layout, "a")).version == 1
        assert (await co.read(client, layout, "b")).record == Record(2, 0, content="other")
        assert await client.get(layout.intent("tx1")) is None
        # the same with fresh revisions commits both and the intent, in one revision
        va, vb = await co.read(client, layout, "a"), await co.read(client, layout, "b")
        entries = [Entry(v.path, True, 0, v.revision, Record(v.version + 1, 0, None, "d", "h",
                                                               "i", "tx2"))
                   for v in (va, vb)]
        res = await client.txn(*many_txn(layout, "tx2", entries, intent.encode()))
        assert res.succeeded
        ka, kb = await client.get(layout.file("a")), await client.get(layout.file("b"))
        ki = await client.get(layout.intent("tx2"))
        assert ka and kb and ki and ka.mod_revision == kb.mod_revision == ki.mod_revision
        assert parse_intent(ki.value) is not None


def test_deciding_host_rolls_its_transaction_forward_at_restart(
        own_hosts: HostsFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No other host is up: A, killed after etcd decided (before any rename),
    finds its intent in etcd when it mounts again and finishes it."""
    a, b = own_hosts()
    a.seed("a.txt", "old\n")
    a.seed("b.txt", "old\n")
    b.stop()
    a.stop()
    monkeypatch.setenv("FENCEFS_TEST_TXN_CRASH", "before-intent")
    a.start()
    monkeypatch.delenv("FENCEFS_TEST_TXN_CRASH")
    ready(a)
    stage = a.mnt / ".fencefs" / "txn" / "k"
    sh(f"cd {a.mnt}; mkdir {stage}; echo new > {stage}/a.txt; echo new > {stage}/b.txt", "k")
    sh(f"setfattr -n {COMMIT} -v 1 {stage}", "k", check=False)
    assert a.proc is not None and a.proc.wait(timeout=30) == -9
    a.kill()
    assert (a.backing / "a.txt").read_text() == "old\n"   # decided, nothing renamed
    a.start()
    ready(a)
    assert [Path(a.path(f)).read_text() for f in ("a.txt", "b.txt")] == ["new\n", "new\n"]
    assert (version(a, "a.txt"), version(a, "b.txt")) == (2, 2)
    rolled = events(a, "txn-recovered")[-1]
    assert rolled["rolled"] == "forward" and rolled["by"] == "host-A"
    assert a.rejected() == []


async def test_lost_reply_is_resolved_by_the_intent_key(etcd: LocalCluster) -> None:
    """A reply lost: our intent in t/TXN means committed; no intent, and the
    transaction is marked aborted, after which it can never apply."""
    from fencefs.core import Coordinator
    from fencefs.etcd.engine import EtcdCoordination, EtcdSettings
    from fencefs.store.backing import Backing
    from fencefs.store.drafts import Drafts

    layout = Layout(f"t{uuid.uuid4().hex[:10]}")
    async with EtcdClient(etcd.endpoints.split(",")) as client:
        await client.connect()
        import tempfile

        with tempfile.TemporaryDirectory() as root:
            coord = EtcdCoordination(Coordinator(), EtcdSettings(
                etcd.endpoints.split(","), layout.cluster, "host-A"), Drafts(Backing(root)))
            txns = coord.txns
            # applied: the intent is there
            await client.put(layout.intent("tx1"), b'{"m":[]}')
            kv = await client.get(layout.intent("tx1"))
            assert kv is not None
            assert await txns._resolve(client, layout.intent("tx1"), b'{"m":[]}', "a") \
                == kv.mod_revision
            # not applied: aborted, then the late transaction is refused
            with pytest.raises(co.Unreachable):
                await txns._resolve(client, layout.intent("tx2"), b'{"m":[]}', "a")
            va = await co.read(client, layout, "a")
            late = await client.txn(*many_txn(layout, "tx2", [
                Entry("a", False, 0, va.revision, Record(1, 0, None, "d", "h", "i", "tx2"))],
                b'{"m":[]}'))
            assert not late.succeeded
            assert (await co.read(client, layout, "a")).record is None
