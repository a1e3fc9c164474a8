"""The fencing core: every decision about claims and commits.

Pure and synchronous: no pyfuse3, no trio, no file I/O of its own. Anything
that must be persisted in the same step as a decision is passed in as a
plain callable (``install``, ``persist``) and called *between* the check and
the state change, so a caller that never awaits around these methods gets
check-and-install as one atomic step (G3). The method names are the actions
of ``specs/Fencing.tla`` and ``specs/Observation.tla``.

``Coordinator`` is the local coordination state. The engine and the FUSE
layer reach it only through ``fencefs.engine.coordination.Coordination``
(``LocalCoordination`` wraps this class), the seam a distributed
implementation serves too.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable

from fencefs.core.errors import Busy, Conflict, Fenced, FenceError
from fencefs.core.model import EXCLUSIVE, OPTIMISTIC, SHARED, Claim, FileState, Kind, Persisted
from fencefs.core.policy import PolicyRules


def decide(file: FileState, claim: Claim) -> type[FenceError] | None:
    """The guard of every commit: None if ``claim`` may commit to ``file``.

    EpochGuard first: a revoked claim is fenced even when the version never
    moved (G2). Then VersionGuard: the file must still be at the version the
    claim rests on (G1). Appends do not depend on the content they land on,
    so only the epoch guard applies to them.
    """
    if claim.epoch != file.epoch:
        return Fenced
    if not claim.append and claim.version != file.version:
        return Conflict
    return None


def _refuse(error: type[FenceError], file: FileState, claim: Claim) -> FenceError:
    return error(
        file.path,
        rested_version=claim.version,
        rested_epoch=claim.epoch,
        current_version=file.version,
        current_epoch=file.epoch,
    )


class Coordinator:
    """Versions, epochs and claims of every known file, in memory."""

    def __init__(
        self,
        max_observations: int = 100_000,
        *,
        default_policy: str = OPTIMISTIC,
        lease_ttl: float = 60.0,
        shared_globs: Iterable[str] = (),
    ) -> None:
        self.default_policy = default_policy
        self.rules = PolicyRules(default_policy, shared_globs)
        self.lease_ttl = lease_ttl
        self._files: dict[str, FileState] = {}
        self._ids = itertools.count(1)
        # Observation claims, oldest first: the table is bounded, and when it
        # is full the least recently refreshed one is dropped (its identity
        # then writes that file blind).
        self.max_observations = max_observations
        self._observed: OrderedDict[tuple[str, str], None] = OrderedDict()

    # -- state -------------------------------------------------------------

    def get(self, path: str) -> FileState | None:
        return self._files.get(path)

    def files(self) -> Iterable[FileState]:
        return self._files.values()

    def adopt(self, path: str, persisted: Persisted) -> FileState:
        """Register a file's persisted state (Restart, or first sight)."""
        file = self._files.get(path)
        if file is None:
            file = FileState(path, persisted.version, persisted.epoch, persisted.policy)
            self._files[path] = file
        return file

    def forget(self, path: str) -> bool:
        """Drop a file's in-memory state once nothing rests on it."""
        file = self._files.get(path)
        if file is not None and not file.writers and not file.readers:
            del self._files[path]
            return True
        return False

    # -- actions -----------------------------------------------------------

    def observe(
        self, path: str, identity: str, pid: int, version: int, epoch: int
    ) -> Claim:
        """Observe: record the (version, epoch) that was served to ``identity``.

        A handle opened before a commit still serves the version it opened, so
        the served version may be older than the file's: a later rewrite by
        the same identity then conflicts, as it should.
        """
        file = self._files[path]
        claim = file.readers.get(identity)
        if claim is None:
            claim = Claim(next(self._ids), path, identity, pid, Kind.READ, version, epoch)
            file.readers[identity] = claim
        else:
            claim.version, claim.epoch, claim.pid = version, epoch, pid
        key = (path, identity)
        self._observed[key] = None
        self._observed.move_to_end(key)
        while len(self._observed) > self.max_observations:
            (old_path, old_identity), _ = self._observed.popitem(last=False)
            old = self._files.get(old_path)
            if old is not None:
                old.readers.pop(old_identity, None)
        return claim

    def observations(self) -> int:
        return len(self._observed)

    def policy_of(self, file: FileState) -> str:
        """The file's own policy, else the mount's globs, else its default."""
        return self.rules.effective(file.path, file.policy)

    def policy_for(self, path: str, own: str | None) -> str:
        """The policy a file with its own policy ``own`` would have at ``path``."""
        return self.rules.effective(path, own)

    def live_holder(self, file: FileState, identity: str, now: float) -> Claim | None:
        """Another identity's write claim that still holds the file: unrevoked
        and with its lease running."""
        for claim in file.writers.values():
            if (claim.identity != identity and claim.epoch == file.epoch
                    and claim.lease_expiry is not None and claim.lease_expiry > now):
                return claim
        return None

    def _exclusive_guard(self, file: FileState, identity: str, now: float) -> None:
        """ExclusiveGuard: Busy while another identity's live claim holds it."""
        holder = self.live_holder(file, identity, now)
        if holder is not None:
            raise Busy(file.path, rested_version=holder.version, rested_epoch=holder.epoch,
                       current_version=file.version, current_epoch=file.epoch)

    def expired_holders(self, file: FileState, now: float) -> list[Claim]:
        return [c for c in file.writers.values()
                if c.epoch == file.epoch and c.lease_expiry is not None
                and c.lease_expiry <= now]

    def open_write(
        self,
        path: str,
        identity: str,
        pid: int,
        *,
        rewrite: bool,
        append: bool = False,
        now: float = 0.0,
        persist_epoch: Callable[[int], None] | None = None,
    ) -> Claim:
        """OpenWrite: give a new write handle its claim.

        A ``rewrite`` (O_TRUNC: the new content is computed elsewhere) rests
        on what the identity last read, and is refused now if that is already
        stale. Other opens start from the current content, so they rest on
        the current version. Appends rest on nothing but the epoch.

        Under the exclusive policy another identity's live write claim makes
        this Busy (ExclusiveGuard); once that claim's lease has expired, the
        file is reclaimed first (LeaseExpiredReclaim, ``persist_epoch``) so
        the old holder is fenced, and this claim rests on the new epoch.
        """
        file = self._files[path]
        if self.policy_of(file) == EXCLUSIVE:
            self._exclusive_guard(file, identity, now)
            if persist_epoch is not None and any(
                    c.identity != identity for c in self.expired_holders(file, now)):
                self.reclaim(path, persist_epoch)
        seen = file.readers.get(identity)
        if rewrite and not append and seen is not None:
            error = decide(file, seen)
            if error is not None:
                raise _refuse(error, file, seen)
        claim = Claim(
            next(self._ids), path, identity, pid, Kind.WRITE, file.version, file.epoch,
            append=append, lease_expiry=now + self.lease_ttl, last_active=now,
        )
        file.writers[claim.id] = claim
        return claim

    def renew(self, claim: Claim, now: float) -> None:
        """A write, fsync or explicit renew extends the claim's lease."""
        claim.lease_expiry = now + self.lease_ttl
        claim.last_active = now

    def idle_writers(self, now: float, idle_for: float) -> list[Claim]:
        """Unrevoked write claims with no activity for ``idle_for`` seconds."""
        return [c for f in self._files.values() for c in f.writers.values()
                if c.epoch == f.epoch and c.last_active is not None
                and now - c.last_active >= idle_for]

    def expired_writers(self, now: float) -> list[Claim]:
        return [c for f in self._files.values() for c in self.expired_holders(f, now)]

    def claims_of(self, identity: str) -> list[Claim]:
        return [c for f in self._files.values() for c in f.claims() if c.identity == identity]

    def _file_of(self, claim: Claim) -> FileState:
        """The file a claim rests on. A path that was unlinked (or replaced
        by something that is not a regular file) since the claim was made
        moved past it: its claims conflict."""
        file = self._files.get(claim.path)
        if file is None:
            raise Conflict(claim.path, rested_version=claim.version, rested_epoch=claim.epoch)
        return file

    def check(self, claim: Claim) -> None:
        """Raise the typed error if ``claim`` could not commit now."""
        file = self._file_of(claim)
        error = decide(file, claim)
        if error is not None:
            raise _refuse(error, file, claim)

    def commit(self, claim: Claim, install: Callable[[int, int], None]) -> int:
        """Commit: check, install and advance, as one step (G1, G2, G3).

        ``install(new_version, epoch)`` makes the new content and its version
        durable-on-rename in the store; if it raises, nothing changed here.
        Returns the new version. The committing identity's observation moves
        to the version it created.
        """
        file = self._file_of(claim)
        error = decide(file, claim)
        if error is not None:
            raise _refuse(error, file, claim)
        before = file.version
        new_version = before + 1
        install(new_version, file.epoch)
        file.version = new_version
        claim.version = new_version
        seen = file.readers.get(claim.identity)
        # The identity now knows the content it created, unless this was an
        # append onto content it never read: then what it read stays stale.
        if seen is not None and (not claim.append or
                                 (seen.version, seen.epoch) == (before, file.epoch)):
            seen.version, seen.epoch = new_version, file.epoch
        return new_version

    def commit_path(
        self,
        path: str,
        identity: str,
        pid: int,
        install: Callable[[int, int], None],
        now: float = 0.0,
    ) -> int:
        """A commit made by a path operation (rename over, truncate, unlink).

        It rests on what the identity last read of the path, or on the
        current version when it never read it (a blind write).
        """
        file = self._files[path]
        policy = self.policy_of(file)
        if policy == EXCLUSIVE:
            self._exclusive_guard(file, identity, now)  # path commits too
        seen = file.readers.get(identity)
        base = seen if seen is not None else Claim(
            0, path, identity, pid, Kind.WRITE, file.version, file.epoch
        )
        error = decide(file, base) if policy != SHARED else None  # shared: unfenced
        if error is not None:
            raise _refuse(error, file, base)
        new_version = file.version + 1
        install(new_version, file.epoch)
        file.version = new_version
        if seen is not None:
            seen.version = new_version
        return new_version

    def commit_in_place(self, path: str, persist: Callable[[int, int], None]) -> int:
        """A commit of a shared file: in-place writes became a version.

        No guard: shared files are not fenced, their writers coordinate with
        their own locks. The version still counts commits, so that it
        changes whenever the content did. ``persist(new_version, epoch)``
        records the new version with the content; if it raises, nothing
        changed here.
        """
        file = self._files[path]
        new_version = file.version + 1
        persist(new_version, file.epoch)
        file.version = new_version
        return new_version

    def reclaim(self, path: str, persist: Callable[[int], None]) -> int:
        """Reclaim: revoke every outstanding claim by bumping the epoch.

        ``persist(new_epoch)`` must make the epoch durable before returning,
        so that epochs never go down, not even across a crash.
        """
        file = self._files[path]
        new_epoch = file.epoch + 1
        persist(new_epoch)
        file.epoch = new_epoch
        return new_epoch

    def adopt_foreign(self, path: str, persist: Callable[[int, int], None]) -> int:
        """A write made straight into the backing file becomes a version."""
        file = self._files[path]
        new_version = file.version + 1
        persist(new_version, file.epoch)
        file.version = new_version
        return new_version

    def release(self, claim: Claim) -> None:
        """Release: the write handle is gone."""
        file = self._files.get(claim.path)
        if file is not None:
            file.writers.pop(claim.id, None)

    def set_policy(self, path: str, policy: str | None,
                   persist: Callable[[str | None], None]) -> None:
        file = self._files[path]
        persist(policy)
        file.policy = policy

    # -- paths -------------------------------------------------------------

    def moved(self, old: str, new: str) -> None:
        """A path (and everything below it) was renamed; claims follow it."""
        prefix = old + "/"
        for path in [p for p in self._files if p == old or p.startswith(prefix)]:
            file = self._files.pop(path)
            target = new + path[len(old):]
            file.path = target
            for claim in file.claims():
                claim.path = target
            for identity in file.readers:
                self._observed.pop((path, identity), None)
                self._observed[(target, identity)] = None
            self._files[target] = file

    def removed(self, path: str) -> FileState | None:
        """The path is gone (unlinked, or replaced by a rename)."""
        file = self._files.pop(path, None)
        if file is not None:
            for identity in file.readers:
                self._observed.pop((path, identity), None)
        return file

    def drop_identity(self, identity: str) -> int:
        """Drop the observation claims of an identity that has exited."""
        dropped = 0
        for key in [k for k in self._observed if k[1] == identity]:
            del self._observed[key]
            file = self._files.get(key[0])
            if file is not None and file.readers.pop(identity, None) is not None:
                dropped += 1
        return dropped

