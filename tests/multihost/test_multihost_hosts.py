"""Across hosts, what operators see and do: ``fencefs status`` lists every
host's claims and which hosts are alive; ``fencefs log`` merges the hosts'
journals by etcd revision (and ``scripts/check-trace --merged`` checks that
history); reclaim --expired and --sweep-after reach a dead host's claims;
a policy set on one host applies on the others. Two real daemons over one
backing directory, a real 3-member etcd.

Which test catches which break (tried by hand, see the branch notes):
no claims published (``EtcdCoordination._publish`` a no-op): the status
test; a dead host's claims not reclaimable (``hosts.reclaimable`` skipping
them): the reclaim --expired and sweep tests; no sweep in ``Hosts.tick``:
the sweep test; no revision on journal lines (``Revisions.revision_of``
returning None): the log test; the policy not applied at refresh
(``EtcdCoordination._saw``): ``test_policy_set_on_a_applies_on_b``; not
applied at the tick (``Hosts._apply_policies``): the test after it; no
identity match across hosts (``Hosts.reclaim_remote``), or no revision
on a refusal etcd decided (``Revisions.refused_at``): the --agent test; no
revision on an operator's reclaim (``EtcdCoordination.reclaim``): the
reclaim --expired test; on an exclusive takeover (``_hold``):
test_multihost_mount's frozen-host test. The
merge itself: tests/multihost/test_journal_merge.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.support.mount import ROOT, Mount

HostsFactory = Callable[..., tuple[Mount, Mount]]   # the hosts fixture (conftest.py)

HOLD = r"""
import os, sys
path, text = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
os.read(fd, 1 << 20)
os.lseek(fd, 0, 0); os.ftruncate(fd, 0); os.write(fd, text.encode())
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
try:
    os.close(fd)
    print("ok")
except OSError as e:
    print("err", e.errno)
"""

INCREMENT = r"""
import os, sys, errno, time
path, n = sys.argv[1], int(sys.argv[2])
done = 0
while done < n:
    try:
        with open(path) as f:
            value = int(f.read() or 0)
        with open(path, "w") as f:
            f.write(str(value + 1))
        done += 1
    except OSError as e:
        if e.errno != errno.EAGAIN:
            raise
        time.sleep(0.005)
print(done)
"""


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def fencefs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fencefs.cli", *args], capture_output=True,
                          text=True, timeout=60)


class Holder:
    """A process that opened a file for writing, wrote, and waits to close it."""

    def __init__(self, path: str, text: str, agent: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, path, text],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "FENCEFS_AGENT": agent})
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "ready\n"

    def close(self) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline().strip()
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc.wait(timeout=30)
        return out


@contextmanager
def frozen(m: Mount) -> Iterator[None]:
    """The host's daemon stopped (SIGSTOP) for the block: its lease runs out."""
    assert m.proc is not None
    m.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        m.proc.send_signal(signal.SIGCONT)


def status(m: Mount) -> list[dict[str, object]]:
    proc = fencefs("status", "--json", str(m.mnt))
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, object]] = json.loads(proc.stdout)
    return rows


def hosts_of(m: Mount) -> dict[str, dict[str, object]]:
    return {h["host"]: h for h in json.loads(os.getxattr(str(m.mnt), "user.fencefs.hosts"))}


def wait_for(what: Callable[[], bool], why: str, timeout: float = 30.0,
             *logs: Mount) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "\n".join([why, *(m.log() for m in logs)])
        time.sleep(0.05)


def claims_of(rows: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    """The write claims on ``name`` (observation claims stay on their host)."""
    for row in rows:
        if row["file"] == name:
            claims = row["claims"]
            assert isinstance(claims, list)
            return [c for c in claims if c["kind"] == "write"]
    return []


def test_status_shows_every_hosts_claims_and_which_hosts_are_alive(
        hosts: HostsFactory) -> None:
    a, b = hosts("--lease-ttl", "2")
    a.seed("plan.md", "0")
    a.seed("notes.md", "0")
    on_a = Holder(a.path("plan.md"), "from A", "agent-a")
    on_b = Holder(b.path("notes.md"), "from B", "agent-b")
    try:
        def both_seen(m: Mount) -> bool:
            rows = status(m)
            return bool(claims_of(rows, "plan.md")) and bool(claims_of(rows, "notes.md"))

        wait_for(lambda: both_seen(a) and both_seen(b), "a host's claim never showed")
        for m in (a, b):
            rows = status(m)
            (pa,) = claims_of(rows, "plan.md")
            (nb,) = claims_of(rows, "notes.md")
            assert (pa["host"], pa["identity"], pa["alive"]) == ("host-A", "agent:agent-a", True)
            assert (nb["host"], nb["identity"], nb["alive"]) == ("host-B", "agent:agent-b", True)
            assert {h: v["alive"] for h, v in hosts_of(m).items()} == {
                "host-A": True, "host-B": True}
        text = fencefs("status", str(a.mnt)).stdout
        assert "host-B" in text and "hosts: host-A (alive, this mount), host-B (alive)" in text
        with frozen(b):   # B's lease expires: A shows B dead, and B's claim as a dead host's
            wait_for(lambda: hosts_of(a)["host-B"]["alive"] is False,
                     "B's lease never expired")
            (nb,) = claims_of(status(a), "notes.md")
            assert nb["host"] == "host-B" and nb["alive"] is False
            text = fencefs("status", str(a.mnt)).stdout
            assert "host dead" in text and "host-B (dead: lease expired)" in text
    finally:
        assert on_a.close() == "ok"
        on_b.close()
    wait_for(lambda: not claims_of(status(b), "plan.md"),
             "A's released claim stayed published")


def test_log_merges_the_hosts_journals_by_etcd_revision(hosts: HostsFactory) -> None:
    """A contended counter, two incrementers per host: every decision line
    carries its etcd revision; ``fencefs log`` gives one history in which
    the versions follow each other; check-trace accepts the merged journals
    (and one host's journal alone is not a history)."""
    a, b = hosts()
    a.seed("counter", "0")
    n = 12
    procs = [subprocess.Popen([sys.executable, "-c", INCREMENT, m.path("counter"), str(n)],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "FENCEFS_AGENT": f"inc-{i}"})
             for i, m in enumerate((a, b, a, b))]
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0 and int(out) == n
    with open(b.path("counter")) as f:
        assert int(f.read()) == 4 * n
    own = {m.host_id(): [json.loads(line) for line in m.journal_path().read_text().splitlines()]
           for m in (a, b)}
    for host, events in own.items():
        commits = [e for e in events if e["event"] == "commit"]
        assert commits, f"{host} committed nothing"
        assert all(isinstance(e.get("rev"), int) for e in commits), commits
    proc = fencefs("log", "--json", str(a.mnt), "counter")
    assert proc.returncode == 0, proc.stderr
    merged = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {e["host"] for e in merged} == {"host-A", "host-B"}
    commits = [e for e in merged if e["event"] == "commit"]
    assert [e["new_version"] for e in commits] == list(range(1, 4 * n + 2))
    revs = [e["rev"] for e in commits if "rev" in e]
    assert revs == sorted(revs) and len(set(revs)) == len(revs)
    # refusals etcd decided carry the revision they were read at
    assert [e for e in merged if e["event"] == "conflict" and isinstance(e.get("rev"), int)]
    check = [str(ROOT / "scripts" / "check-trace")]
    paths = [str(m.journal_path()) for m in (a, b)]
    ok = subprocess.run([*check, "--merged", *paths], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    alone = subprocess.run([*check, paths[1]], capture_output=True, text=True)
    assert alone.returncode == 1, alone.stdout   # one host's decisions are not the history


def test_reclaim_expired_on_b_reclaims_a_dead_hosts_claim(hosts: HostsFactory) -> None:
    a, b = hosts("--lease-ttl", "2")
    a.seed("plan.md", "0")
    on_a = Holder(a.path("plan.md"), "stale from A", "agent-a")
    try:
        wait_for(lambda: bool(claims_of(status(b), "plan.md")), "A's claim never showed on B")
        with frozen(a):
            wait_for(lambda: hosts_of(b)["host-A"]["alive"] is False, "A's lease never expired")
            proc = fencefs("reclaim", "--expired", str(b.mnt))
            assert proc.returncode == 0, proc.stderr
            assert "plan.md: reclaimed, epoch 1" in proc.stdout
            assert claims_of(status(b), "plan.md") == []   # the dead host's claim is gone
            assert int(os.getxattr(b.path("plan.md"), "user.fencefs.epoch")) == 1
    finally:
        result = on_a.close()
    assert result == f"err {errno.ESTALE}"
    assert read(b.path("plan.md")) == "0"
    reclaims = [e for e in b.journal() if e["event"] == "reclaim"]
    assert [(e["host"], e["reason"], e["new_epoch"]) for e in reclaims] == [
        ("host-B", "host-dead", 1)]
    assert isinstance(reclaims[0].get("rev"), int)


def test_sweep_after_on_b_reclaims_a_dead_hosts_claim(hosts: HostsFactory) -> None:
    a, b = hosts("--lease-ttl", "2", "--sweep-after", "3s", "--upkeep-interval", "0.5")
    a.seed("plan.md", "0")
    on_a = Holder(a.path("plan.md"), "stale from A", "agent-a")
    try:   # claims are published just after the open (a batch): wait until it is
        wait_for(lambda: bool(claims_of(status(b), "plan.md")), "A's claim never showed on B")
        with frozen(a):
            wait_for(lambda: int(os.getxattr(b.path("plan.md"), "user.fencefs.epoch")) == 1,
                     "B's sweep never reclaimed the dead host's claim", 30.0, b)
            assert claims_of(status(b), "plan.md") == []
    finally:
        result = on_a.close()
    assert result == f"err {errno.ESTALE}"
    # (A, once awake, may sweep its own idle claim too: that is A's, not B's)
    (sweep,) = [e for e in b.journal() if e["event"] == "reclaim" and e["host"] == "host-B"]
    assert (sweep["host"], sweep["identity"], sweep["reason"]) == (
        "host-B", "fencefs-sweep", "host-dead")


def test_policy_set_on_a_applies_on_b(hosts: HostsFactory) -> None:
    """``setfattr user.fencefs.policy exclusive`` on A: B's next writer takes
    the hold in etcd, so a writer of another identity on A is EBUSY."""
    a, b = hosts("--upkeep-interval", "3600")   # no periodic pull: the write open learns it
    a.seed("plan.md", "0")
    assert read(b.path("plan.md")) == "0"          # B knows the file (optimistic)
    os.setxattr(a.path("plan.md"), "user.fencefs.policy", b"exclusive")
    on_b = Holder(b.path("plan.md"), "from B", "agent-b")
    try:
        assert os.getxattr(b.path("plan.md"), "user.fencefs.policy") == b"exclusive"
        with pytest.raises(OSError) as info:
            open(a.path("plan.md"), "r+")
        assert info.value.errno == errno.EBUSY
    finally:
        assert on_b.close() == "ok"


def test_policy_set_on_a_reaches_b_without_a_write(hosts: HostsFactory) -> None:
    """B learns the policy at its upkeep tick too: its readers see it."""
    a, b = hosts("--upkeep-interval", "0.2")
    a.seed("plan.md", "0")
    assert os.getxattr(b.path("plan.md"), "user.fencefs.policy") == b"optimistic"
    os.setxattr(a.path("plan.md"), "user.fencefs.policy", b"exclusive")
    wait_for(lambda: os.getxattr(b.path("plan.md"), "user.fencefs.policy") == b"exclusive",
             "B never applied the policy A set", 30.0, b)


def test_reclaim_agent_on_b_reaches_the_agents_claim_on_a(hosts: HostsFactory) -> None:
    """``fencefs reclaim --agent ID`` on B fences ID's writer on live host A."""
    a, b = hosts()
    a.seed("plan.md", "0")
    on_a = Holder(a.path("plan.md"), "stale from A", "planner")
    try:
        wait_for(lambda: bool(claims_of(status(b), "plan.md")), "A's claim never showed on B")
        proc = fencefs("reclaim", "--agent", "planner", str(b.mnt))
        assert proc.returncode == 0, proc.stderr
        assert "plan.md: reclaimed, epoch 1" in proc.stdout
    finally:
        result = on_a.close()
    assert result == f"err {errno.ESTALE}"
    assert read(a.path("plan.md")) == "0"
    history = b.journal()
    (reclaim,) = [e for e in history if e["event"] == "reclaim"]
    assert (reclaim["host"], reclaim["reason"]) == ("host-B", "identity=agent:planner")
    # A's refusal was decided by etcd (A had not heard of the reclaim): it
    # carries the revision it was read at, so the merge puts it after the reclaim
    (fenced,) = [e for e in history if e["event"] == "fenced"]
    assert fenced["host"] == "host-A" and fenced["rev"] >= reclaim["rev"]
    assert history.index(fenced) > history.index(reclaim)
