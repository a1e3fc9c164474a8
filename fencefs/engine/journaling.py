"""The journal's records of decisions, and when they reach the disk.

Every commit, refusal and reclaim is recorded (G5) by one ``Journaling``;
``durable`` makes a change and the journal lines written so far durable
before a close/fsync/reclaim is answered (G6), with journal group commit:
one fsync serves every caller that arrived while it ran.
"""

from __future__ import annotations

import errno
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
        # Every journaled decision is counted too (a dictionary update).
        self.metrics = Metrics()
        self.policy_for: Callable[[str], str] = lambda path: "?"

    # -- records ---------------------------------------------------------------

    def record(self, event: str, path: str, **fields: object) -> None:
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
        self.record(e.reason, rel, identity=caller.identity, pid=caller.pid, op=op,
                            version=e.rested_version, epoch=e.rested_epoch,
                            current_version=e.current_version, current_epoch=e.current_epoch,
                            **fields)

    def room(self) -> None:
        """Refuse (ENOSPC) a commit or reclaim the journal has no room for."""
        if not self.journal.reserve():
            raise OSError(errno.ENOSPC, "no room left to journal the change")

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

    async def durable_dir(self, rel_dir: str) -> None:
        """The directory entry and the journal line of a commit reach the disk."""
        await self.durable_with(self.backing.sync_dir, rel_dir)

    async def durable_with(self, sync: Callable[[Any], None], what: Any) -> None:
        """``sync(what)`` on a worker thread and the journal's group commit,
        at once (one filesystem commit can carry both); nothing under
        --durability none."""
        if not self.durable:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.sync_journal)
            await trio.to_thread.run_sync(sync, what)
