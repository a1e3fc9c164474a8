"""The journal's records of decisions, and when they reach the disk.

Every commit, refusal and reclaim is recorded (G5) by one ``Journaling``;
``durable`` makes a change and the journal lines written so far durable
before a close/fsync/reclaim is answered (G6), with journal group commit:
one fsync serves every caller that arrived while it ran.

Namespace changes (unlink, rename, mkdir, rmdir, symlink, mknod, a create)
are not close() or fsync(), so G6 does not ask for them one by one: their
directories are only marked (``namespace_changed``) and synced with the next
durable step of any commit, fsync or fsyncdir, and at the latest by the
upkeep task (``flush_namespace``, every few seconds). A move onto a free
name is journaled (``moved``: a ``rename`` event, for readers of the journal
such as scripts/check-trace), with no fsync either. A commit therefore
never rests on a directory entry above it that a crash could lose: the
directories of every namespace change before it are synced with it
(docs/guide.md, "What a crash can lose").
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable
from typing import Any

import trio

from fencefs.core import Caller, Claim, FenceError, FileState
from fencefs.metrics import Metrics
from fencefs.store.backing import Backing
from fencefs.store.journal import Journal

# Journal events counted as metrics, under the same names (see fencefs.metrics).
_COUNTED = {"conflict": "conflicts", "fenced": "fenced", "busy": "busy", "killed": "killed",
            "foreign": "foreign", "abandoned": "abandoned"}


class Journaling:
    def __init__(self, journal: Journal, backing: Backing, *, durable: bool) -> None:
        self.journal = journal
        self.backing = backing
        self.durable = durable
        # The journal fsync in flight, if any (see sync_journal).
        self._syncing: trio.Event | None = None
        # Directories whose entries changed since they were last synced.
        self._pending: set[str] = set()
        # Every journaled decision is counted too (a dictionary update).
        self.metrics = Metrics()
        self.policy_for: Callable[[str], str] = lambda path: "?"
        # Across hosts: the etcd revision of the decision a line records
        # (event, path, the refusal if one) -> ``rev``, or None (docs/multihost.md)
        self.revision_of: Callable[[str, str, FenceError | None], int | None] | None = None

    # -- records ---------------------------------------------------------------

    def record(self, event: str, path: str, **fields: object) -> None:
        if self.revision_of is not None and "rev" not in fields:
            rev = self.revision_of(event, path, None)
            if rev:
                fields["rev"] = rev
        self.journal.record(event, path, **fields)
        self._count(event, path, fields)

    def _count(self, event: str, path: str, fields: dict[str, object]) -> None:
        if event == "commit":
            self.metrics.inc("commits", policy=self.policy_for(path),
                             op=str(fields.get("op") or "write"))
        elif event == "reclaim":
            reason = str(fields.get("reason") or "?").split("=", 1)[0]
            self.metrics.inc("reclaims", reason=reason)
        elif event in _COUNTED:
            self.metrics.inc(_COUNTED[event], policy=self.policy_for(path))

    def claim_event(self, event: str, claim: Claim | None, file: FileState | None,
                    **fields: object) -> None:
        """An event about a handle's claim, with the file's current state."""
        info: dict[str, object] = {}
        if claim is not None:
            info.update(identity=claim.identity, pid=claim.pid,
                        version=claim.version, epoch=claim.epoch)
        if file is not None:
            info.update(current_version=file.version, current_epoch=file.epoch)
        info.update(fields)
        path = claim.path if claim is not None else (file.path if file else "?")
        self.record(event, path, **info)

    def refusal(self, e: FenceError, rel: str, caller: Caller, op: str,
                **fields: object) -> None:
        rev = self.refusal_fields(e).get("rev")
        if rev:
            fields = {"rev": rev, **fields}
        self.record(e.reason, rel, identity=caller.identity, pid=caller.pid, op=op,
                            version=e.rested_version, epoch=e.rested_epoch,
                            current_version=e.current_version, current_epoch=e.current_epoch,
                            **fields)

    def refusal_fields(self, e: FenceError) -> dict[str, object]:
        """Across hosts: the etcd revision a refusal was decided at, and the
        state it saw then (this host's view may lag behind it)."""
        if self.revision_of is None:
            return {}
        rev = self.revision_of(e.reason, e.path, e)
        found: dict[str, object] = {"rev": rev} if rev else {}
        if e.current_version is not None:
            found.update(current_version=e.current_version, current_epoch=e.current_epoch)
        return found

    def room(self) -> None:
        """Refuse (ENOSPC) a commit or reclaim the journal has no room for."""
        if not self.journal.reserve():
            raise OSError(errno.ENOSPC, "no room left to journal the change")

    def moved(self, old: str, new: str, mode: int, file: FileState | None,
              caller: Callable[[], Caller]) -> None:
        """A regular file or a directory moved onto a free name: a ``rename``
        event (``kind`` file or dir, the moved file's version and epoch), so
        that a reader of the journal (scripts/check-trace) follows what moved.
        Not a commit: no fsync of its own (see the module's docstring)."""
        kind = "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else None
        if kind is None:
            return
        who = caller()
        self.record("rename", new, identity=who.identity, pid=who.pid, source=old, kind=kind,
                    version=file.version if file is not None else None,
                    epoch=file.epoch if file is not None else None)

    # -- durability ------------------------------------------------------------

    async def sync_journal(self) -> None:
        """Make every journal line written so far durable. Group commit:
        a caller whose lines an fsync already in flight will cover waits for
        that one; one fsync then serves all who arrived while it ran."""
        if not self.durable:
            return
        wanted = self.journal.written
        while self.journal.synced < wanted:
            running = self._syncing
            if running is not None:
                await running.wait()
                continue
            running = self._syncing = trio.Event()
            try:
                await trio.to_thread.run_sync(self.journal.sync)  # advances .synced
            finally:
                self._syncing = None
                running.set()

    # -- namespace changes: synced with the next durable step ------------------

    def namespace_changed(self, *rel_dirs: str) -> None:
        """Entries of these directories changed: sync them with the next
        durable step (not now)."""
        if self.durable:
            self._pending.update(rel_dirs)

    def namespace_moved(self, old: str, new: str) -> None:
        """A directory moved: pending directories below it moved with it."""
        if not self._pending:
            return
        prefix = old + "/"
        moved = {p for p in self._pending if p == old or p.startswith(prefix)}
        if moved:
            self._pending -= moved
            self._pending.update(new + p[len(old):] for p in moved)

    def _sync_dirs(self, dirs: set[str]) -> None:
        # Parents before children does not matter: each fsync makes its own
        # directory's entries durable. A directory gone since was removed
        # by a later change, itself pending (its parent is in the set).
        for rel in sorted(dirs):
            try:
                self.backing.sync_dir(rel)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    raise  # all of them stay pending (durable_with)

    async def flush_namespace(self) -> None:
        """Sync the pending directories now (the upkeep task's round)."""
        if self.durable and self._pending:
            await self.durable_with(lambda _: None, None)

    # -- durable steps ----------------------------------------------------------

    async def durable_dir(self, rel_dir: str) -> None:
        """The directory entry and the journal line of a commit reach the disk."""
        self.namespace_changed(rel_dir)
        await self.durable_with(lambda _: None, None)

    async def durable_with(self, sync: Callable[[Any], None], what: Any) -> None:
        """``sync(what)`` on a worker thread, with the pending directories,
        and the journal's group commit, at once (one filesystem commit can
        carry them all); nothing under --durability none."""
        if not self.durable:
            return
        dirs, self._pending = self._pending, set()

        def work() -> None:
            sync(what)
            self._sync_dirs(dirs)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.sync_journal)
            try:
                await trio.to_thread.run_sync(work)
            except BaseException:
                self._pending |= dirs  # not known synced: the next step retries
                raise
