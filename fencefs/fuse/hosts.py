"""The cluster-wide side of an ``--etcd`` mount's controls and upkeep.

- ``status``: the root's ``user.fencefs.status`` with the claims of every
  host (this host's from its own core, with exact leases; the others' as
  they published them in etcd), each tagged with its host and whether that
  host is alive (its etcd lease lives); ``hosts``: ``user.fencefs.hosts``.
- ``reclaim_remote``: ``fencefs reclaim --expired`` (and ``--agent``)
  across hosts: other hosts' claims that expired or whose host is dead are
  reclaimed here (one epoch bump in etcd each, journaled here).
- ``tick``, from the upkeep: republish this host's claims whose lease
  moved, apply policies other hosts set, and with ``--sweep-after`` reclaim
  the claims of dead hosts idle that long.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable

from fencefs import wire
from fencefs.core import Caller, FenceError, FileState
from fencefs.engine.commits import CommitEngine
from fencefs.engine.files import FileTable
from fencefs.etcd import hosts as hs
from fencefs.etcd.client import EtcdError
from fencefs.etcd.coordination import Unreachable
from fencefs.etcd.engine import EtcdCoordination
from fencefs.fuse import control
from fencefs.store.backing import Backing

log = logging.getLogger("fencefs.etcd")


class Hosts:
    def __init__(self, etcd: EtcdCoordination, files: FileTable, backing: Backing,
                 commits: CommitEngine) -> None:
        self.etcd = etcd
        self.files = files
        self.backing = backing
        self.commits = commits

    # -- status --------------------------------------------------------------------

    async def status(self, local: list[FileState], may_read: Callable[[str], bool],
                     now: float) -> bytes:
        try:
            cluster = await self._cluster()
        except Unreachable:   # etcd down: this host's claims still show
            cluster = hs.Cluster([], {}, {}, 0)
        me = self.etcd.host
        entries = {}
        for state in local:
            held = state.claims()
            if held:
                entries[state.path] = wire.StatusEntry(
                    file=state.path, version=state.version, epoch=state.epoch,
                    policy=self.etcd.policy_of(state),
                    claims=tuple(_mine(control.status_claim(c, now), me) for c in held))
        clock = time.time()
        remote: dict[str, list[wire.StatusClaim]] = {}
        for c in cluster.claims:
            if c.host == me or not may_read(c.path):
                continue
            r = c.record
            remote.setdefault(c.path, []).append(wire.StatusClaim(
                identity=r.identity, pid=r.pid, kind="write", version=r.version,
                epoch=r.epoch, lease_left=round(r.expires - clock, 3) if r.expires else None,
                host=c.host, alive=c.host in cluster.live))
        for path, claims in remote.items():
            version, epoch = cluster.files.get(path, (0, 0))
            mine = entries.get(path)
            if mine is not None:
                version, epoch = max(version, mine.version), max(epoch, mine.epoch)
            file = self.etcd.get(path)
            policy = (self.etcd.policy_of(file) if file is not None
                      else self.etcd.policy_for(path, None))
            entries[path] = wire.StatusEntry(
                file=path, version=version, epoch=epoch, policy=policy,
                claims=(mine.claims if mine is not None else ()) + tuple(claims))
        return wire.format_status(entries[p] for p in sorted(entries))

    async def hosts(self) -> bytes:
        cluster = await self._cluster()
        return wire.format_hosts(wire.HostEntry(h.host, h.alive, h.host == self.etcd.host,
                                                h.pid) for h in cluster.hosts())

    async def _cluster(self) -> hs.Cluster:
        try:
            return await self.etcd.cluster()
        except EtcdError as e:
            raise Unreachable("") from e

    # -- reclaims across hosts -------------------------------------------------------

    async def reclaim_remote(self, caller: Caller, may_write: Callable[[str], bool], *,
                             expired: bool, identity: str | None = None,
                             idle_after: float | None = None) -> int:
        """Reclaim other hosts' claims: a dead host's (idle ``idle_after``
        seconds, if given), with ``expired`` a live host's whose lease ended,
        with ``identity`` every claim of that identity. Returns how many
        files were reclaimed; a dead host's reclaimed claims are deleted."""
        cluster = await self._cluster()
        clock = time.time()
        if identity is not None:
            found = [c for c in cluster.claims
                     if c.host != self.etcd.host and c.record.identity == identity
                     and cluster.current(c)]
        else:
            found = hs.reclaimable(cluster, self.etcd.host, clock, expired=expired)
        if idle_after is not None:
            found = [c for c in found if c.host not in cluster.live
                     and clock - c.record.active >= idle_after]
        done = 0
        reason = f"identity={identity}" if identity is not None else "host-dead"
        for path in sorted({c.path for c in found if may_write(c.path)}):
            claims = [c for c in found if c.path == path]
            why = reason if identity is not None or any(
                c.host not in cluster.live for c in claims) else "lease-expired"
            file = self._load(path)
            if file is not None:
                await self.commits.reclaim(file, caller, reason=why)
                done += 1
            dead = [c for c in claims if c.host not in cluster.live]
            if dead:
                try:
                    await hs.forget(self.etcd._client(path), dead)
                except EtcdError as e:
                    raise Unreachable(path) from e
        return done

    def _load(self, path: str) -> FileState | None:
        """The file's state on this host (read from the backing if not loaded)."""
        file = self.etcd.get(path)
        if file is not None:
            return file
        try:
            st = self.backing.lstat(path)
        except OSError:
            return None
        return self.files.file(path, st) if stat.S_ISREG(st.st_mode) else None

    # -- upkeep ----------------------------------------------------------------------

    async def tick(self, now: float, sweep_after: float | None) -> None:
        """Republish claims, apply other hosts' policies, sweep dead hosts' claims."""
        self.etcd.republish(now)
        try:
            await self._apply_policies()
            if sweep_after is not None:
                await self.reclaim_remote(Caller("fencefs-sweep", os.getpid()),
                                          lambda p: True, expired=False,
                                          idle_after=sweep_after)
        except (EtcdError, FenceError, OSError) as e:
            log.warning("cluster upkeep: %s", e)
        except Exception as e:  # noqa: BLE001 - the upkeep must outlive a surprise
            log.warning("cluster upkeep failed (%s): %s", type(e).__name__, e)

    async def _apply_policies(self) -> None:
        for path, (policy, ino) in (await self.etcd.policies()).items():
            file = self.etcd.get(path)
            if file is None or file.policy == policy:
                continue
            try:
                if ino and self.backing.lstat(path).st_ino != ino:
                    continue  # another file at that path now
            except OSError:
                continue
            log.info("policy of %s set to %s by another host", path, policy or "-")
            file.policy = policy


def _mine(claim: wire.StatusClaim, host: str) -> wire.StatusClaim:
    return wire.StatusClaim(claim.identity, claim.pid, claim.kind, claim.version, claim.epoch,
                            claim.lease_left, host=host, alive=True)
