"""``EtcdCoordination``: the engine's coordination seam, decided by etcd.

This host keeps the local core (``fencefs.core.Coordinator``) for what
stays per host: write claims of local handles and their leases, observation
claims of local readers, the files' state as this host last saw it. The
decisions go to etcd, each as one transaction (``fencefs.etcd.coordination``):

- ``open_write`` first refreshes the file from etcd (version, epoch, the
  revision claims rest on; it waits for, or makes, a roll-forward when
  the record is ahead of the installed file), takes the exclusive hold in
  etcd for an exclusive file (EBUSY across hosts; a hold whose lease
  expired is taken over with an epoch bump in the same transaction), then
  makes the claim with the local core, with no await.
- ``commit`` and ``commit_path``: the local early check, then the commit
  transaction (epoch compare, mod_revision compare, [exclusive] the hold's
  lease); once etcd says yes, with no await: the local state is set to what
  the claim rested on and the core's own commit runs ``install``.
- ``reclaim``: the reclaim transaction, then ``persist`` and the local bump.

etcd unreachable: ``Unreachable`` (``EHOSTUNREACH``), a ``FenceError``, so
the engine keeps the bytes under ``rejected/`` and the writer gets a typed
errno distinct from EAGAIN, ESTALE and EBUSY. The rest (queries, renewals,
observations, unfenced changes) is the local core's.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from fencefs.core import Claim, Coordinator, FenceError, FileState, Persisted
from fencefs.core.coordinator import decide
from fencefs.core.model import EXCLUSIVE
from fencefs.core.transaction import Member, Planned
from fencefs.engine.atomic import atomic
from fencefs.engine.coordination import Install, LocalCoordination
from fencefs.etcd import coordination as co
from fencefs.etcd import hosts as hs
from fencefs.etcd.client import EtcdClient, EtcdError, EtcdUnreachable, LeaseNotFound, Put
from fencefs.etcd.journals import Revisions
from fencefs.etcd.keys import ClaimRecord, Holder, Layout, Marker, Record
from fencefs.etcd.patience import patiently
from fencefs.etcd.reads import Reads
from fencefs.etcd.txns import HostTxns
from fencefs.store.drafts import Drafts

log = logging.getLogger("fencefs.etcd")

MARKER_FILE = "cluster.json"
# How long a host waits for the deciding host to install a decided draft
# before it rolls it forward itself.
ROLL_GRACE = 2.0


@dataclass(frozen=True)
class EtcdSettings:
    urls: list[str]
    cluster: str
    host: str
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    timeout: float = 5.0
    # how long the daemon's start-up steps wait for an unreachable etcd
    start_timeout: float = 30.0

    def client(self) -> EtcdClient:
        return EtcdClient(self.urls, timeout=self.timeout, cacert=self.cacert, cert=self.cert,
                          key=self.key, user=self.user, password=self.password)


def read_marker(meta: str) -> Marker | None:
    try:
        with open(os.path.join(meta, MARKER_FILE), "rb") as f:
            return Marker.from_bytes(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"unreadable {os.path.join(meta, MARKER_FILE)}: {e}") from None


def write_marker(meta: str, marker: Marker) -> None:
    os.makedirs(meta, mode=0o700, exist_ok=True)
    tmp = os.path.join(meta, MARKER_FILE + ".tmp")
    with open(tmp, "wb") as f:
        f.write(marker.to_bytes())
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(meta, MARKER_FILE))


async def check_mount(settings: EtcdSettings, backing: str, create: bool) -> str | None:
    """Can this backing be mounted in this cluster? None, or a one-line reason.

    With ``create`` False nothing is written (the CLI's check before it
    starts the daemon); the daemon calls it with ``create`` True."""
    layout = Layout(settings.cluster)
    meta = os.path.join(backing, ".fencefs")

    async def check(client: EtcdClient) -> str | None:
        await client.connect()
        if create:
            await co.ensure_marker(client, layout, lambda: read_marker(meta),
                                   lambda m: write_marker(meta, m))
            return None
        kv = await client.get(layout.marker())
        in_etcd = Marker.from_bytes(kv.value) if kv else None
        return co.judge_marker(layout.cluster, read_marker(meta), in_etcd)

    try:
        async with settings.client() as client:
            if not create:   # the mount command: etcd must answer now
                return await check(client)
            # the daemon: etcd may be away for a moment since the command's check
            return await patiently("checking the backing marker", lambda: check(client),
                                   settings.start_timeout)
    except EtcdUnreachable as e:
        return f"etcd is unreachable at {','.join(settings.urls)}: {e}"
    except EtcdError as e:
        return f"etcd refused: {e}"
    except ValueError as e:
        return str(e)


class EtcdCoordination(LocalCoordination):
    """``Coordination`` across hosts (see the module docstring)."""

    def __init__(self, core: Coordinator, settings: EtcdSettings, drafts: Drafts) -> None:
        super().__init__(core)
        self.settings = settings
        self.layout = Layout(settings.cluster)
        self.host = settings.host
        # drafts/ (daemon-owned, on the shared backing) and the tree: a
        # roll-forward renames a draft by descriptor onto a path the tree
        # resolves, never following a symlink out of the backing directory
        self.drafts = drafts
        self.client: EtcdClient | None = None
        self.reads: Reads | None = None   # the opens' reads, batched
        self.lease = 0
        # per path: (version, the file key's mod_revision at that version)
        self._rev: dict[str, tuple[int, int]] = {}
        # exclusive holds this host has in etcd: path -> (holder, local claim ids)
        self._holds: dict[str, tuple[Holder, set[int]]] = {}
        self._nursery: trio.Nursery | None = None
        self.release = self._release  # type: ignore[method-assign]
        # across hosts (fencefs/etcd/hosts.py): this host's published claims
        # (claim id -> the lease end published) and the journal's revisions
        self.board = hs.Board()
        self._published: dict[int, tuple[bytes, float, int]] = {}
        self.revs = Revisions()
        # multi-file commits and their roll-forward (fencefs/etcd/txns.py)
        self.txns = HostTxns(self, ROLL_GRACE)

    # -- life ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Connect, take this host's lease, keep it alive until cancelled."""
        ttl = max(2, int(round(self.lease_ttl)))
        async with self.settings.client() as client:
            self.client = client
            # before the nursery: a failure here is the caller's, not a group
            await patiently("taking this host's lease", lambda: self._grant(ttl),
                            self.settings.start_timeout)
            await client.prefer_leader()
            await self._keep(client, ttl, task_status)

    async def _keep(self, client: EtcdClient, ttl: int,
                    task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            self.reads = Reads(client, self.layout)
            self._nursery = nursery
            await self._start_board(client, nursery)
            task_status.started()
            try:
                while True:
                    await trio.sleep(ttl / 3)
                    try:
                        await client.lease_keepalive(self.lease)
                        await client.prefer_leader()   # (a new one after an election)
                    except LeaseNotFound:
                        log.warning("lease %x of host %s expired: its holds are gone",
                                    self.lease, self.host)
                        self._holds.clear()
                        try:
                            await self._grant(ttl)
                        except EtcdError as e:   # the next round tries again (its
                            log.warning("no new lease yet: %s", e)   # keepalive fails)
                    except EtcdError as e:
                        log.warning("lease keepalive failed: %s", e)
            finally:
                if self.reads is not None and self.reads.served:
                    log.info("etcd: %d open reads in %d transactions", self.reads.served,
                             self.reads.sent)
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await client.lease_revoke(self.lease)
                    except EtcdError:
                        pass
                nursery.cancel_scope.cancel()

    async def _grant(self, ttl: int) -> None:
        assert self.client is not None
        self.lease, _ = await self.client.lease_grant(ttl)
        await self.client.put(self.layout.host(self.host),
                              Record(0, 0, host=self.host,
                                     identity=f"pid:{os.getpid()}").to_bytes(), self.lease)

    def _client(self, path: str, claim: Claim | None = None) -> EtcdClient:
        if self.client is None:
            raise co.Unreachable(path, rested_version=claim.version if claim else None,
                                 rested_epoch=claim.epoch if claim else None)
        return self.client

    # -- syncing this host's view ------------------------------------------------

    async def refresh(self, path: str) -> co.View:
        """Read the file from etcd and bring this host's view up to it,
        rolling the installed file forward to the record if needed."""
        client = self._client(path)
        view = await (self.reads.read(path) if self.reads is not None
                      else co.read(client, self.layout, path))
        file = self.core.get(path)
        if view.record is None and file is not None and (file.version or file.epoch):
            # first use in the cluster of a file that already has history
            seed = Record(file.version, file.epoch, file.policy, "", self.host, "")
            ops = [Put(self.layout.file(path), seed.to_bytes())]
            if file.epoch:
                ops.append(Put(self.layout.epoch(path), str(file.epoch).encode()))
            await client.txn([co.absent(self.layout.file(path))], ops)
            view = await co.read(client, self.layout, path)
        await self._roll_forward(view)
        self._sync(path, view)
        return view

    def _sync(self, path: str, view: co.View) -> None:
        with atomic():
            file = self.core.get(path)
            if file is not None:
                if view.version >= file.version:
                    file.version = view.version
                file.epoch = max(file.epoch, view.epoch)
            self._rev[path] = (view.version, view.revision)
            self._saw(path, file, view)

    def _learn_epoch(self, path: str, view: co.View) -> None:
        """After a refusal: take the newer epoch (more fencing is safe), but
        not the version: the record may be ahead of the installed file, and
        only ``refresh`` (which waits for or makes the install) may move it."""
        with atomic():
            file = self.core.get(path)
            if file is not None:
                file.epoch = max(file.epoch, view.epoch)
            self.revs.seen.pop(path, None)

    async def _roll_forward(self, view: co.View) -> None:
        """Make the installed file the record's before anyone rests on it.

        A decided draft still in drafts/ is being installed by the host that
        decided it (this one too: another request's commit between its
        transaction and its rename): wait for that, then, after
        ``ROLL_GRACE``, install it ourselves (a dead or frozen host). Taking
        the record's version while the file still holds the one before would
        let a reader be served old content under the new version: a lost
        update (specs/MultiHost.tla, mutant NoRollForward)."""
        rec = view.record
        if self.txns.pending_member(rec, view.path):
            assert rec is not None
            await self.txns.roll(rec.txn)   # the whole transaction, not one file
            return
        if rec is None or not rec.content:
            return
        name = rec.content
        deadline = trio.current_time() + ROLL_GRACE
        while self._draft_there(name) and trio.current_time() < deadline:
            await trio.sleep(0.005)
        if co.roll_forward_action(rec, "", self._draft_there(name)) is co.Roll.INSTALL:
            try:
                self._install(name, view.path)
                log.warning("rolled %s forward to v%d (decided by %s, not installed)",
                            view.path, rec.version, rec.host)
            except FileNotFoundError:
                pass   # installed meanwhile

    def _draft_there(self, name: str) -> bool:
        """Is the draft a record names still in drafts/? (A name from etcd
        is one file name, never a path: anything else is not a draft.)"""
        if not name or "/" in name or name in (".", ".."):
            return False
        try:
            os.stat(name, dir_fd=self.drafts.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _install(self, name: str, target: str) -> None:
        """Roll a decided draft forward: rename it, by descriptor, onto
        ``target`` as the tree resolves it (a symlink on the way is ELOOP)."""
        if not self._draft_there(name):
            raise FileNotFoundError(errno.ENOENT, "no such draft", name)
        self.drafts.trash.keep(target)   # as Drafts.install: frees nothing here
        self.drafts.backing.tree.rename_from(self.drafts.dir_fd, name, target)

    async def _revision(self, claim: Claim) -> int:
        known = self._rev.get(claim.path)
        if known is not None and known[0] == claim.version:
            return known[1]
        view = await self.refresh(claim.path)
        if view.version == claim.version:
            return view.revision
        return -1   # etcd is past the claim: the transaction will say why

    # -- decisions -------------------------------------------------------------------

    async def open_write(self, path: str, identity: str, pid: int, *, rewrite: bool,
                         append: bool, now: float,
                         persist_epoch: Callable[[int], None]) -> Claim:
        try:
            await self.refresh(path)
            file = self.core.get(path)
            if file is not None and self.core.policy_of(file) == EXCLUSIVE:
                await self._hold(path, identity, persist_epoch)
        except EtcdError as e:
            raise co.Unreachable(path) from e
        with atomic(), self.revs.local_refusal(path):
            claim = self.core.open_write(path, identity, pid, rewrite=rewrite, append=append,
                                         now=now, persist_epoch=persist_epoch)
        held = self._holds.get(path)
        if held is not None:
            held[1].add(claim.id)
        self._publish(claim, now)
        return claim

    async def _hold(self, path: str, identity: str,
                    persist_epoch: Callable[[int], None]) -> None:
        client = self._client(path)
        holder = Holder(self.host, identity, f"{self.host}\0{identity}")
        mine = self._holds.get(path)
        if mine is not None and mine[0].identity == identity:
            return
        view, reclaimed = await co.acquire_exclusive(client, self.layout, path, holder,
                                                     self.lease)
        if view.holder == holder:
            self._holds.setdefault(path, (holder, set()))
        if reclaimed:
            self.revs.stamp_next(path, view.read_revision)
            with atomic():
                file = self.core.get(path)
                if file is not None and view.epoch > file.epoch:
                    persist_epoch(view.epoch)
                    file.epoch = view.epoch
            log.info("took over %s from an expired hold (epoch %d)", path, view.epoch)

    def _release(self, claim: Claim) -> None:
        self.core.release(claim)
        self._unpublish(claim)
        held = self._holds.get(claim.path)
        if held is None:
            return
        held[1].discard(claim.id)
        if not held[1] and self._nursery is not None and self.client is not None:
            del self._holds[claim.path]
            self._nursery.start_soon(self._let_go, claim.path, held[0])

    async def _let_go(self, path: str, holder: Holder) -> None:
        assert self.client is not None
        try:
            await co.release_exclusive(self.client, self.layout, path, holder, self.lease)
        except EtcdError as e:
            log.warning("could not release the hold on %s: %s", path, e)

    def check(self, claim: Claim) -> None:
        with self.revs.local_refusal(claim.path):   # its journal line: the revision seen
            super().check(claim)

    async def commit(self, claim: Claim, install: Install, content: str = "") -> int:
        with atomic(), self.revs.local_refusal(claim.path):
            self.core.check(claim)
        file = self.core.get(claim.path)
        policy = file.policy if file is not None else None
        lease = self.lease if claim.path in self._holds else 0
        try:
            client = self._client(claim.path, claim)
            rev = await self._revision(claim)
            eclaim = co.EtcdClaim(claim.path, claim.identity, claim.version, claim.epoch,
                                  rev, lease)
            record = Record(claim.version + 1, claim.epoch, policy, content, self.host,
                            claim.identity)
            result: list[int] = []

            def installed(rec: Record, revision: int) -> None:
                with atomic(), self.revs.decided(claim.path, revision, rec):
                    self._rested_on(claim.path, claim.version, claim.epoch)
                    result.append(self.core.commit(claim, install))
                self._rev[claim.path] = (rec.version, revision)

            decision = await co.commit(client, self.layout, eclaim, record, installed)
        except FenceError:
            raise
        except EtcdError as e:
            raise co.Unreachable(claim.path, rested_version=claim.version,
                                 rested_epoch=claim.epoch) from e
        if decision.outcome is co.Outcome.COMMITTED:
            return result[0]
        self._learn_epoch(claim.path, decision.view)
        error = decision.error(eclaim)
        assert error is not None
        raise self.revs.refused_at(error, decision)

    def _rested_on(self, path: str, version: int, epoch: int) -> FileState:
        """etcd decided on (version, epoch): this host's view is made to agree."""
        file = self.core.get(path)
        assert file is not None
        file.version, file.epoch = version, epoch
        return file

    async def commit_path(self, path: str, identity: str, pid: int, install: Install,
                          now: float) -> int:
        try:
            await self.refresh(path)
        except EtcdError as e:
            raise co.Unreachable(path) from e
        with atomic():
            file = self.core.get(path)
            assert file is not None
            seen = file.readers.get(identity)
            if seen is not None and self.core.policy_of(file) != "shared":
                error = decide(file, seen)
                if error is not None:
                    raise error(path, rested_version=seen.version, rested_epoch=seen.epoch,
                                current_version=file.version, current_epoch=file.epoch)
            version, epoch = file.version, file.epoch
        rev = self._rev.get(path, (version, 0))[1]
        eclaim = co.EtcdClaim(path, identity, version, epoch, rev)
        record = Record(version + 1, epoch, file.policy, "", self.host, identity)
        result: list[int] = []

        def installed(rec: Record, revision: int) -> None:
            with atomic(), self.revs.decided(path, revision, rec):
                self._rested_on(path, version, epoch)
                result.append(self.core.commit_path(path, identity, pid, install, now=now))
            self._rev[path] = (rec.version, revision)

        try:
            decision = await co.commit(self._client(path), self.layout, eclaim, record,
                                       installed)
        except EtcdError as e:
            raise co.Unreachable(path) from e
        if decision.outcome is co.Outcome.COMMITTED:
            return result[0]
        self._learn_epoch(path, decision.view)
        refusal = decision.error(eclaim)
        assert refusal is not None
        raise self.revs.refused_at(refusal, decision)

    async def reclaim(self, path: str, persist: Callable[[int], None]) -> int:
        try:
            epoch, revision = await co.reclaim(self._client(path), self.layout, path)
        except EtcdError as e:
            raise co.Unreachable(path) from e
        self._holds.pop(path, None)
        self.revs.stamp_next(path, revision)   # the engine journals it next, with no await
        with atomic():
            file = self.core.get(path)
            if file is not None and epoch > file.epoch:
                persist(epoch)
                file.epoch = epoch
        return epoch

    async def sync_many(self, paths: Sequence[str]) -> None:
        await self.txns.sync(paths)

    async def commit_many(self, files: Mapping[str, FileState | None],
                          members: Sequence[Member], identity: str,
                          install_all: Callable[[list[Planned]], None],
                          txn: str = "") -> list[Planned]:
        """One etcd transaction for every member (fencefs/etcd/txns.py)."""
        return await self.txns.commit_many(files, members, identity, install_all, txn)

    # -- across hosts: published claims, policies (etcd/hosts.py) ---------------

    def _saw(self, path: str, file: FileState | None, view: co.View) -> None:
        """After a refresh: the revision this host's view holds at, and the
        policy another host set (``p/PATH``), if it is still this file's."""
        if file is None:
            return
        if view.policy is not None and view.policy[0] != file.policy:
            try:
                ino = self.drafts.backing.lstat(path).st_ino
            except OSError:
                ino = -1
            if view.policy[1] in (0, ino):
                file.policy = view.policy[0]
        if (file.version, file.epoch) == (view.version, view.epoch) and view.read_revision:
            self.revs.seen[path] = (view.read_revision, view.version, view.epoch)
        else:
            self.revs.seen.pop(path, None)

    async def _start_board(self, client: EtcdClient, nursery: trio.Nursery) -> None:
        for key in await hs.own_claims(client, self.layout, self.host):
            self.board.delete(key)   # published by this host id's earlier life
        nursery.start_soon(self.board.run, client)

    def _publish(self, claim: Claim, now: float) -> None:
        key = hs.claim_key(self.layout, claim.path, self.host, claim.id)
        old = self._published.get(claim.id)
        if old is not None and old[0] != key:
            self.board.delete(old[0])    # the file was renamed
        clock = time.time()
        expires = hs.wall(claim.lease_expiry, now, clock)
        rec = ClaimRecord(claim.identity, claim.pid, claim.version, claim.epoch,
                          self._rev.get(claim.path, (0, 0))[1], expires,
                          hs.wall(claim.last_active, now, clock))
        self.board.put(key, rec.to_bytes())
        self._published[claim.id] = (key, expires, claim.epoch)

    def _unpublish(self, claim: Claim) -> None:
        old = self._published.pop(claim.id, None)
        if old is not None:
            self.board.delete(old[0])

    def republish(self, now: float) -> None:
        """Claims whose lease end moved (by writes), epoch or path changed
        since published: sent again (the upkeep calls this every tick)."""
        clock = time.time()
        for file in self.core.files():
            for claim in file.writers.values():
                old = self._published.get(claim.id)
                if old is None:
                    continue
                key = hs.claim_key(self.layout, claim.path, self.host, claim.id)
                if (key != old[0] or claim.epoch != old[2]
                        or abs(hs.wall(claim.lease_expiry, now, clock) - old[1]) >= 1.0):
                    self._publish(claim, now)

    async def share_policy(self, path: str, policy: str | None, ino: int) -> None:
        """A policy set here: every host applies it (at its next write open of
        the file, or its next upkeep tick, whichever comes first)."""
        self.board.put(self.layout.policy(path), hs.policy_value(policy, ino))
        with trio.move_on_after(self.settings.timeout):
            await self.board.flushed()

    async def cluster(self) -> hs.Cluster:
        """Every host's claims and which hosts are alive (one read)."""
        return await hs.read_cluster(self._client(""), self.layout)

    async def policies(self) -> dict[str, tuple[str | None, int]]:
        return await hs.read_policies(self._client(""), self.layout)

def host_prefix(host: str) -> str:
    """A draft name prefix that tells this host's drafts from others' on the
    shared drafts/ directory."""
    import hashlib

    return hashlib.sha256(host.encode()).hexdigest()[:10] + "-"


def persisted_of(record: Record) -> Persisted:
    return Persisted(record.version, record.epoch, record.policy)
