"""The multi-host transactions (fencefs.etcd.coordination) against a real etcd.

The guard tests name the compare they protect: break ``commit_txn``'s epoch
compare and ``test_reclaim_fences_zombie_with_version_unchanged`` fails;
break its version compare and ``test_racers_on_one_revision_one_winner``
fails (both also run with the compare switched off, to show that they can).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest
import trio

from fencefs.core.errors import Busy
from fencefs.etcd import coordination as co
from fencefs.etcd.client import EtcdClient
from fencefs.etcd.keys import ClaimRecord, Holder, Layout, Marker, Record, check_cluster_name
from fencefs.etcd.localcluster import LocalCluster, free_ports


@pytest.fixture
def layout(prefix: bytes) -> Layout:
    return Layout(prefix.decode().strip("/"))


@pytest.fixture
def installs() -> Iterator[list[tuple[Record, int]]]:
    yield []


def record_for(claim: co.EtcdClaim, host: str, n: int) -> Record:
    return Record(claim.version + 1, claim.epoch, None, f"draft-{host}-{n}", host, claim.identity)


async def race(c: EtcdClient, layout: Layout, claim: co.EtcdClaim, n: int,
               **guards: bool) -> tuple[list[str], list[co.Decision]]:
    installed: list[str] = []
    decisions: list[co.Decision] = []

    async def one(i: int) -> None:
        rec = record_for(claim, f"h{i % 2}", i)
        d = await co.commit(c, layout, claim, rec, lambda r, rev: installed.append(r.content),
                            **guards)
        decisions.append(d)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return installed, decisions


@pytest.mark.parametrize("version_guard", [True, False], ids=["guarded", "mutant-no-version"])
async def test_racers_on_one_revision_one_winner(etcd: LocalCluster, layout: Layout,
                                                 version_guard: bool) -> None:
    """G1: eight writers (two "hosts") resting on one revision: one commits."""
    async with EtcdClient(etcd.urls) as c:
        view = await co.read(c, layout, "plan.md")
        claim = co.EtcdClaim.on(view, "agent:a")
        installed, decisions = await race(c, layout, claim, 8, version_guard=version_guard)
        after = await co.read(c, layout, "plan.md")
    if not version_guard:
        assert len(installed) > 1        # the mutant loses updates: the test can fail
        return
    assert len(installed) == 1
    assert sorted(d.outcome.value for d in decisions) == ["committed"] + ["conflict"] * 7
    assert after.record is not None and after.record.content == installed[0]
    assert after.version == 1
    losers = [d for d in decisions if d.outcome is not co.Outcome.COMMITTED]
    assert all(d.error(claim) is not None and d.error(claim).errno == errno.EAGAIN  # type: ignore
               for d in losers)


@pytest.mark.parametrize("epoch_guard", [True, False], ids=["guarded", "mutant-no-epoch"])
async def test_reclaim_fences_zombie_with_version_unchanged(etcd: LocalCluster, layout: Layout,
                                                            epoch_guard: bool) -> None:
    """G2: a claim made before a reclaim on another host is fenced (ESTALE), although
    the version never moved; its install never runs."""
    installed: list[Record] = []
    async with EtcdClient(etcd.urls) as a, EtcdClient(list(reversed(etcd.urls))) as b:
        zombie = co.EtcdClaim.on(await co.read(a, layout, "f"), "agent:zombie")
        epoch, _ = await co.reclaim(b, layout, "f")            # host B reclaims
        assert epoch == 1
        d = await co.commit(a, layout, zombie, record_for(zombie, "A", 1),
                            lambda r, rev: installed.append(r), epoch_guard=epoch_guard)
        after = await co.read(b, layout, "f")
    if not epoch_guard:
        assert d.outcome is co.Outcome.COMMITTED   # the mutant lets the zombie in
        return
    assert d.outcome is co.Outcome.FENCED and installed == []
    err = d.error(zombie)
    assert err is not None and err.errno == errno.ESTALE
    assert after.version == 0 and after.record is None and after.epoch == 1


async def test_epoch_is_judged_before_version(etcd: LocalCluster, layout: Layout) -> None:
    async with EtcdClient(etcd.urls) as c:
        old = co.EtcdClaim.on(await co.read(c, layout, "f"), "x")
        other = co.EtcdClaim.on(await co.read(c, layout, "f"), "y")
        d = await co.commit(c, layout, other, record_for(other, "B", 1), lambda r, v: None)
        assert d.outcome is co.Outcome.COMMITTED
        await co.reclaim(c, layout, "f")
        d = await co.commit(c, layout, old, record_for(old, "A", 2), lambda r, v: None)
        assert d.outcome is co.Outcome.FENCED


async def test_commit_after_reclaim_rests_on_new_epoch(etcd: LocalCluster,
                                                       layout: Layout) -> None:
    async with EtcdClient(etcd.urls) as c:
        await co.reclaim(c, layout, "f")
        await co.reclaim(c, layout, "f")
        claim = co.EtcdClaim.on(await co.read(c, layout, "f"), "x")
        assert claim.epoch == 2
        got: list[int] = []
        d = await co.commit(c, layout, claim, record_for(claim, "A", 1),
                            lambda r, rev: got.append(rev))
        assert d.outcome is co.Outcome.COMMITTED and got == [d.revision]
        view = await co.read(c, layout, "f")
        assert view.version == 1 and view.revision == d.revision and view.epoch == 2


async def test_lost_reply_resolved_by_read_back(etcd: LocalCluster, layout: Layout) -> None:
    """The transaction applied but its reply was lost: the read-back finds our
    content id and reports the commit (G6: a decided version is never lost)."""
    async with EtcdClient(etcd.urls) as c:
        claim = co.EtcdClaim.on(await co.read(c, layout, "f"), "x")
        rec = record_for(claim, "A", 1)
        applied = await c.txn(*co.commit_txn(layout, claim, rec))   # reply "lost"
        assert applied.succeeded
        d = await co.resolve(c, layout, claim, rec)
        assert d.outcome is co.Outcome.COMMITTED and d.revision == applied.revision


async def test_lost_request_resolved_and_cannot_apply_late(etcd: LocalCluster,
                                                           layout: Layout) -> None:
    """The transaction did not apply (yet): the read-back makes sure it never will,
    and the writer gets the unreachable error, not a commit."""
    async with EtcdClient(etcd.urls) as c:
        claim = co.EtcdClaim.on(await co.read(c, layout, "f"), "x")
        rec = record_for(claim, "A", 1)
        with pytest.raises(co.Unreachable) as info:
            await co.resolve(c, layout, claim, rec)
        assert info.value.errno == co.UNREACHABLE_ERRNO
        late = await c.txn(*co.commit_txn(layout, claim, rec))     # arrives late
        assert not late.succeeded
        assert (await co.read(c, layout, "f")).version == 0


async def test_unreachable_etcd_decides_nothing(layout: Layout) -> None:
    dead = [f"http://127.0.0.1:{p}" for p in free_ports(3)]
    async with EtcdClient(dead) as c:
        claim = co.EtcdClaim("f", "x", 0, 0, 0)
        installed: list[Record] = []
        with pytest.raises(co.Unreachable) as info:
            await co.commit(c, layout, claim, record_for(claim, "A", 1),
                            lambda r, v: installed.append(r))
        assert info.value.errno == errno.EHOSTUNREACH and installed == []
        assert info.value.errno not in (errno.EAGAIN, errno.ESTALE, errno.EBUSY, errno.EIO)


async def test_exclusive_busy_across_hosts_then_lease_expiry_takeover(
        etcd: LocalCluster, layout: Layout) -> None:
    """Host A holds an exclusive claim; B gets EBUSY while A's lease lives. A
    freezes (no keepalive): etcd drops the hold at expiry, B takes over with an
    epoch bump, and A's commit is fenced."""
    async with EtcdClient(etcd.urls) as a, EtcdClient(etcd.urls) as b:
        lease_a, _ = await a.lease_grant(2)
        lease_b, _ = await b.lease_grant(30)
        ha, hb = Holder("A", "agent:a", "c1"), Holder("B", "agent:b", "c2")
        view_a, reclaimed = await co.acquire_exclusive(a, layout, "x", ha, lease_a)
        assert not reclaimed and view_a.holder == ha
        claim_a = co.EtcdClaim.on(view_a, "agent:a", lease_a)
        with pytest.raises(Busy) as info:
            await co.acquire_exclusive(b, layout, "x", hb, lease_b)
        assert info.value.errno == errno.EBUSY
        # the same identity on another host is the same claimant: never blocked
        same, _ = await co.acquire_exclusive(b, layout, "x", Holder("B", "agent:a", "c3"),
                                             lease_b)
        assert same.holder == ha
        with trio.fail_after(15):     # A is frozen: wait for etcd to expire its lease
            while (await co.read(b, layout, "x")).holder is not None:
                await trio.sleep(0.1)
        view_b, reclaimed = await co.acquire_exclusive(b, layout, "x", hb, lease_b)
        assert reclaimed and view_b.epoch == 1
        d = await co.commit(a, layout, claim_a, record_for(claim_a, "A", 1), lambda r, v: None)
        assert d.outcome is co.Outcome.FENCED
        claim_b = co.EtcdClaim.on(view_b, "agent:b", lease_b)
        d = await co.commit(b, layout, claim_b, record_for(claim_b, "B", 2), lambda r, v: None)
        assert d.outcome is co.Outcome.COMMITTED
        assert await co.release_exclusive(b, layout, "x", hb, lease_b)
        # a released hold leaves nothing to reclaim
        view, reclaimed = await co.acquire_exclusive(a, layout, "x", ha, lease_b)
        assert not reclaimed and view.epoch == 1
        await b.lease_revoke(lease_b)


async def test_exclusive_commit_needs_the_live_hold(etcd: LocalCluster, layout: Layout) -> None:
    async with EtcdClient(etcd.urls) as c:
        lease, _ = await c.lease_grant(30)
        view, _ = await co.acquire_exclusive(c, layout, "x", Holder("A", "i", "c1"), lease)
        claim = co.EtcdClaim.on(view, "i", lease)
        await c.lease_revoke(lease)             # the hold is gone, nobody reclaimed
        d = await co.commit(c, layout, claim, record_for(claim, "A", 1), lambda r, v: None)
        assert d.outcome is co.Outcome.LEASE_LOST


async def test_marker_claims_new_backing_and_refuses_others(etcd: LocalCluster,
                                                            layout: Layout) -> None:
    disk: dict[str, Marker] = {}
    other_disk: dict[str, Marker] = {}
    async with EtcdClient(etcd.urls) as c:
        m = await co.ensure_marker(c, layout, lambda: disk.get("m"),
                                   lambda mk: disk.__setitem__("m", mk))
        assert disk["m"] == m and m.cluster == layout.cluster
        again = await co.ensure_marker(c, layout, lambda: disk.get("m"),
                                       lambda mk: pytest.fail("wrote again"))
        assert again == m
        before = await c.get(layout.marker())
        with pytest.raises(ValueError, match="another backing directory"):
            await co.ensure_marker(c, layout, lambda: other_disk.get("m"),
                                   lambda mk: other_disk.__setitem__("m", mk))
        assert other_disk == {} and await c.get(layout.marker()) == before
        foreign = Layout(layout.cluster + "-other")
        with pytest.raises(ValueError, match="belongs to fencefs cluster"):
            await co.ensure_marker(c, foreign, lambda: disk.get("m"),
                                   lambda mk: pytest.fail("wrote"))
        assert await c.get(foreign.marker()) is None


def test_judge_marker() -> None:
    a1, a2, b1 = Marker("a", "1"), Marker("a", "2"), Marker("b", "1")
    assert co.judge_marker("a", None, None) is None
    assert co.judge_marker("a", a1, a1) is None
    assert "belongs to" in (co.judge_marker("a", b1, None) or "")
    assert "serves backing directory" in (co.judge_marker("a", a1, a2) or "")
    assert "another backing" in (co.judge_marker("a", None, a1) or "")
    assert "does not know" in (co.judge_marker("a", a1, None) or "")


def test_roll_forward_action() -> None:
    rec = Record(3, 1, None, "d3.draft", "A", "i")
    assert co.roll_forward_action(None, "", False) is co.Roll.NOTHING
    assert co.roll_forward_action(rec, "d3.draft", False) is co.Roll.NOTHING
    assert co.roll_forward_action(rec, "d2.draft", True) is co.Roll.INSTALL
    assert co.roll_forward_action(rec, "d2.draft", False) is co.Roll.MISSING


def test_layout_and_records_round_trip() -> None:
    lay = Layout("fleet")
    assert lay.file("a/b") == b"/fleet/f/a/b"
    assert not lay.claim("ab", "h", "1").startswith(lay.claims("a"))
    assert lay.parse_claim(lay.claim("d/x", "host:1", "c9")) == ("d/x", "host:1", "c9")
    assert lay.path_of(lay.file("d/x"), b"f") == "d/x"
    for rec in (Record(1, 0), Record(5, 2, "exclusive", "c.draft", "h", "agent:x")):
        assert Record.from_bytes(rec.to_bytes()) == rec
    cr = ClaimRecord("agent:a", 12, 3, 1, 99)
    assert ClaimRecord.from_bytes(cr.to_bytes()) == cr
    h = Holder("h", "i", "c")
    assert Holder.from_bytes(h.to_bytes()) == h
    for bad in ("", "a/b", " a", "x" * 200, "a\nb"):
        with pytest.raises(ValueError):
            check_cluster_name(bad)
    with pytest.raises(ValueError):
        Record.from_bytes(b'{"v": "1"}')
