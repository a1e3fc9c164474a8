"""The coordination seam: what the engine and the handlers know of claims.

``Coordination`` is the one interface through which the commit engine and
the FUSE layer reach coordination state: versions, epochs, policies, write
claims and their leases, observation claims, and the decisions (open a
write claim, commit, commit a path operation, reclaim). ``LocalCoordination``
serves it from one daemon's memory, over ``fencefs.core.Coordinator``; a
distributed implementation (etcd, across hosts) serves the same methods.

The four decisions are ``async``: a distributed implementation may spend one
network round trip on each (one etcd transaction comparing epoch and
version). Each takes what must happen once the decision is made as a plain
callable: ``install(version, epoch)`` for commits, ``persist(epoch)`` for
reclaims. The local implementation calls it inside the core's check, in one
synchronous step under ``atomic()``, with no checkpoint between the check
and the install (G3); a distributed one calls it after its transaction
succeeded, and must roll the install forward after a crash in between.

Everything else here is synchronous and answers from this host's view:
lookups (``get``, ``files``, ``policy_of``), the early ``check`` a write
makes to report a stale claim at once (the decision at commit is still the
final judge), lease renewals, observation claims (kept on the host where the
read happened: the commit compares them against the file's version anyway),
and bookkeeping of paths that moved or went away.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from fencefs.core import Claim, Coordinator, FileState, Persisted
from fencefs.core.transaction import Member, Planned, commit_many
from fencefs.engine.atomic import atomic

Install = Callable[[int, int], None]


class Coordination(Protocol):
    """Coordination state as the engine and the handlers use it."""

    lease_ttl: float

    # -- this host's view ----------------------------------------------------

    def get(self, path: str) -> FileState | None: ...
    def files(self) -> Iterable[FileState]: ...
    def adopt(self, path: str, persisted: Persisted) -> FileState: ...
    def forget(self, path: str) -> bool: ...
    def policy_of(self, file: FileState) -> str: ...
    def policy_for(self, path: str, own: str | None) -> str: ...
    def check(self, claim: Claim) -> None: ...
    def observe(self, path: str, identity: str, pid: int, version: int,
                epoch: int) -> Claim: ...
    def renew(self, claim: Claim, now: float) -> None: ...
    def release(self, claim: Claim) -> None: ...
    def idle_writers(self, now: float, idle_for: float) -> list[Claim]: ...
    def expired_writers(self, now: float) -> list[Claim]: ...
    def claims_of(self, identity: str) -> list[Claim]: ...
    def drop_identity(self, identity: str) -> int: ...
    def moved(self, old: str, new: str) -> None: ...
    def removed(self, path: str) -> FileState | None: ...

    # -- unfenced changes: no guard to check, the state just moves -----------

    def adopt_foreign(self, path: str, persist: Install) -> int: ...
    def commit_in_place(self, path: str, persist: Install) -> int: ...
    def set_policy(self, path: str, policy: str | None,
                   persist: Callable[[str | None], None]) -> None: ...

    # -- the decisions (one round trip each, for a distributed store) --------

    async def open_write(self, path: str, identity: str, pid: int, *, rewrite: bool,
                         append: bool, now: float,
                         persist_epoch: Callable[[int], None]) -> Claim: ...
    async def commit(self, claim: Claim, install: Install, content: str = "") -> int: ...
    async def commit_path(self, path: str, identity: str, pid: int, install: Install,
                          now: float) -> int: ...
    async def reclaim(self, path: str, persist: Callable[[int], None]) -> int: ...
    async def sync_many(self, paths: Sequence[str]) -> None: ...
    async def commit_many(self, files: Mapping[str, FileState | None],
                          members: Sequence[Member], identity: str,
                          install_all: Callable[[list[Planned]], None],
                          txn: str = "") -> list[Planned]: ...


class LocalCoordination:
    """``Coordination`` for one host: the core's state in this daemon's memory.

    The queries are the core's own methods; each decision runs the core's
    synchronous action inside ``atomic()``, so the check, the install and the
    state change are one step that no other request can observe half-done.
    """

    def __init__(self, core: Coordinator) -> None:
        self.core = core
        self.lease_ttl = core.lease_ttl
        self.get = core.get
        self.files = core.files
        self.adopt = core.adopt
        self.forget = core.forget
        self.policy_of = core.policy_of
        self.policy_for = core.policy_for
        self.check = core.check
        self.observe = core.observe
        self.renew = core.renew
        self.release = core.release
        self.idle_writers = core.idle_writers
        self.expired_writers = core.expired_writers
        self.claims_of = core.claims_of
        self.drop_identity = core.drop_identity
        self.moved = core.moved
        self.removed = core.removed
        self.adopt_foreign = core.adopt_foreign
        self.commit_in_place = core.commit_in_place
        self.set_policy = core.set_policy

    async def open_write(self, path: str, identity: str, pid: int, *, rewrite: bool,
                         append: bool, now: float,
                         persist_epoch: Callable[[int], None]) -> Claim:
        with atomic():
            return self.core.open_write(path, identity, pid, rewrite=rewrite, append=append,
                                        now=now, persist_epoch=persist_epoch)

    async def commit(self, claim: Claim, install: Install, content: str = "") -> int:
        # content: the draft's name (a distributed store records it, for
        # roll-forward); one host needs it not.
        with atomic():
            return self.core.commit(claim, install)

    async def commit_path(self, path: str, identity: str, pid: int, install: Install,
                          now: float) -> int:
        with atomic():
            return self.core.commit_path(path, identity, pid, install, now=now)

    async def reclaim(self, path: str, persist: Callable[[int], None]) -> int:
        with atomic():
            return self.core.reclaim(path, persist)

    async def sync_many(self, paths: Sequence[str]) -> None:
        """Before a multi-file commit: bring this host's view of its members
        up to date. One host's view is the truth: nothing to do."""

    async def commit_many(self, files: Mapping[str, FileState | None],
                          members: Sequence[Member], identity: str,
                          install_all: Callable[[list[Planned]], None],
                          txn: str = "") -> list[Planned]:
        """A multi-file commit: every member's guard, then one install of
        all (``fencefs.core.transaction.commit_many``), in one step. Across
        hosts this is one etcd transaction: a compare of epoch and version
        per member, a put per member on success (fencefs/etcd/txns.py)."""
        with atomic():
            return commit_many(files, members, identity, install_all,
                               self.core.adopt, self.core.removed)
