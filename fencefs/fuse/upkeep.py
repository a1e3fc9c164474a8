"""Start-up recovery and the daemon's background upkeep.

At mount: roll interrupted multi-file commits forward or back, drop
half-made snapshots, put orphaned drafts away (across hosts, ask etcd
first). While mounted, ``maintain`` runs next to the FUSE loop: retention
sweeps (at once when a file's history reaches its bound), pending namespace
syncs, pruning of exited identities' observation claims, and the idle sweep.
"""

from __future__ import annotations

import time

import trio

from fencefs.engine.commits import CommitEngine
from fencefs.engine.coordination import Coordination
from fencefs.engine.history import History
from fencefs.engine.journaling import Journaling
from fencefs.engine.readers import Readers
from fencefs.engine.txns import Transactions
from fencefs.etcd.engine import EtcdCoordination
from fencefs.etcd.recovery import recover_drafts
from fencefs.fuse.hosts import Hosts
from fencefs.fuse.identity import alive, anchor_alive
from fencefs.store.backing import META_DIR
from fencefs.store.drafts import Drafts
from fencefs.store.journal import last_record
from fencefs.store.retention import Dropped
from fencefs.store.snapshots import Snapshots


class Upkeep:
    def __init__(self, coord: Coordination, readers: Readers, commits: CommitEngine,
                 history: History, journaling: Journaling, txns: Transactions,
                 snapshots: Snapshots, drafts: Drafts, etcd: EtcdCoordination | None, *,
                 sweep_after: float | None) -> None:
        self.coord = coord
        self.readers = readers
        self.commits = commits
        self.history = history
        self.journaling = journaling
        self.txns = txns
        self.snapshots = snapshots
        self.drafts = drafts
        self.etcd = etcd
        self.sweep_after = sweep_after
        self.hosts: Hosts | None = None
        if etcd is not None:   # a host that rolls another's transaction forward journals it
            etcd.txns.record = journaling.record

    def recover(self) -> int:
        """Roll interrupted transactions forward or back, drop half-made
        snapshots, then put drafts orphaned by a crash away as abandoned.
        Across hosts: later, by ``recover_across_hosts``, which asks etcd
        first (a transaction is rolled forward if etcd decided it), and a half-made
        snapshot on the shared backing may be another host's, still building."""
        # What a mount makes in .fencefs/ (the journal, drafts/, trash/...)
        # reaches the disk with the first durable step, before any reply
        # says a commit is durable: the journal and the drafts are found there.
        self.journaling.namespace_changed("", META_DIR)
        if self.etcd is not None:
            return 0
        # What the dead daemon journaled last, before recovery journals more.
        last = last_record(self.journaling.journal.path)
        rolled = len(self.txns.store.recover())
        self.snapshots.recover()
        return rolled + self.commits.recover(last)

    async def recover_across_hosts(self) -> int:
        """This host's orphaned drafts, with etcd (``etcd/recovery.py``)."""
        assert self.etcd is not None
        return await recover_drafts(self.etcd, self.drafts, self.journaling,
                                    self.history.unkeep)

    async def maintain(self, interval: float = 2.0) -> None:
        """Background upkeep: drop claims of identities that have exited;
        apply the retention bounds (flat: only paths committed since)."""
        await self.history.scan()
        # trio's clock, not time.monotonic(): trio's starts at a random
        # offset, and a monotonic deadline handed to move_on_at is long past,
        # which made this loop spin (a third of a busy daemon's CPU)
        tick = trio.current_time() + interval
        while True:
            with trio.move_on_at(tick):  # or earlier, when a file's history is full
                await self.history.wanted.wait()
            await self.history.sweep(time.time())
            if trio.current_time() < tick:
                continue
            tick = trio.current_time() + interval
            await self.sweep_snapshots(time.time())  # a listing: once per tick
            await self.journaling.flush_namespace()
            if self.etcd is not None:   # transactions decided by a host that died
                await self.etcd.txns.sweep(time.monotonic())
            self.txns.sweep_abandoned(self.owner_alive, time.monotonic(),
                                      self.history.policy.keep_staging_for)
            self.prune_identities()
            if self.sweep_after is not None:
                await self.commits.sweep(time.monotonic(), self.sweep_after)
            if self.hosts is not None:  # claims, policies and dead hosts (fuse/hosts.py)
                await self.hosts.tick(time.monotonic(), self.sweep_after)

    async def sweep_snapshots(self, now: float) -> Dropped:
        """The snapshot bounds (``--keep-snapshots``, ``--keep-snapshots-for``):
        the oldest snapshots past them are deleted (on a worker thread: a big
        tree takes a while), journaled as one ``retention`` line."""
        policy = self.history.policy
        dropped = Dropped("snapshots")
        for info in self.snapshots.over_bounds(policy.keep_snapshots,
                                               policy.keep_snapshots_for, now):
            try:
                await trio.to_thread.run_sync(self.snapshots.delete, info.name)
            except FileNotFoundError:
                continue   # deleted meanwhile (by a person, or another host)
            dropped.add(info.bytes, info.name)
        if dropped.count:
            self.history._journal_drop(dropped, "sweep")
            self.history.flush_drops(force=True)
        return dropped

    def owner_alive(self, identity: str, anchors: list[tuple[int, int]]) -> bool:
        """A staging directory's owner lives while a process recorded at its
        mkdir does, or a process that read as its identity."""
        return (any(anchor_alive(a) for a in anchors)
                or any(alive(pid) for pid in self.readers.identity_pids.get(identity, ())))

    def prune_identities(self) -> int:
        dropped = 0
        pids_of = self.readers.identity_pids
        for identity, pids in list(pids_of.items()):
            live = {pid for pid in pids if alive(pid)}
            if live:
                pids_of[identity] = live
            else:
                del pids_of[identity]
                dropped += self.coord.drop_identity(identity)
        return dropped
