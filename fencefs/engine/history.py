"""History, restore, retention and metrics: the engine's side.

- ``keep``: called by every install (rewrite, append, rename over, truncate,
  unlink) inside the commit's atomic step, just before the rename or unlink:
  one ``link(2)`` of the content being replaced into the history tree
  (``store.versions``). It never raises and never awaits.
- restore is an ordinary commit: the client (``fencefs.client_history``)
  opens the file for writing, checks through the descriptor that its claim
  rests on the state it read, marks the handle (``mark_restore``: the
  commit's journal line then says ``restored_from``), writes version N's
  bytes and fsyncs; a commit or reclaim in between refuses it with EAGAIN
  or ESTALE like any writer's. ``floor`` lets a deleted path continue its
  numbering when it is created again.
- ``sweep``: the retention bounds, applied from the upkeep task; ``gc``: all
  at once on demand. Every sweep that removed something is journaled as one
  ``retention`` line per kind.
- ``stats``: the metrics snapshot with the gauges of what is kept.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from typing import Any

import trio

from fencefs.core import FileState
from fencefs.core.model import SHARED
from fencefs.engine.coordination import Coordination
from fencefs.engine.files import FileTable
from fencefs.engine.handles import Handle
from fencefs.engine.journaling import Journaling
from fencefs.history import encode_history
from fencefs.metrics import Metrics
from fencefs.store.drafts import Drafts
from fencefs.store.retention import Dropped, Retention
from fencefs.store.versions import Version, VersionStore

log = logging.getLogger("fencefs.engine")

JOURNAL_EVERY = 10.0  # seconds: retention drops are journaled at most this often


class History:
    def __init__(self, versions: VersionStore, drafts: Drafts, coord: Coordination,
                 files: FileTable, journaling: Journaling, metrics: Metrics,
                 policy: Retention, *, durable: bool) -> None:
        self.versions = versions
        self.drafts = drafts
        self.coord = coord
        self.files = files
        self.journaling = journaling
        self.metrics = metrics
        self.policy = policy
        self.durable = durable
        self.backing = files.backing
        self.last_gc: dict[str, Any] = {"dropped": []}
        self._unjournaled: dict[str, Dropped] = {}  # drops not journaled yet, by kind
        self._journaled_at = 0.0
        self.scanned = False
        # Set when a file's new versions reach its bound: the upkeep sweeps
        # at once instead of at its next tick (see fuse/operations.maintain).
        self.wanted = trio.Event()
        versions.on_due = self.wanted.set
        self._register_gauges()

    # -- keeping (inside a commit's atomic step) ----------------------------------

    def keep(self, file: FileState, version: int) -> None:
        """Retain the content now at ``file.path`` as ``version``, just
        before a commit replaces or unlinks it. Never raises."""
        if not self.policy.history or self.coord.policy_of(file) == SHARED:
            return  # shared files change in place: their inode is no version
        try:
            with self.backing.tree.parent(file.path) as (dir_fd, name):
                if version <= 0 and os.stat(name, dir_fd=dir_fd,
                                            follow_symlinks=False).st_size == 0:
                    return  # the empty file a create() made: nothing to look back at
                fp = self.files.fingerprints.get(file.path)
                self.versions.keep(file.path, (dir_fd, name), version, time.time(),
                                   fp.size if fp is not None else None)
        except OSError:
            return  # gone, or not reachable without following a link: nothing to keep

    def unkeep(self, rel: str) -> None:
        """At mount, for a path whose commit a crash cut short after
        ``keep`` and before its rename or unlink (an abandoned draft, or the
        journal's last path commit, see ``Commits.recover``): an entry kept
        for the live file's own version is the live content, not history."""
        try:
            persisted, _ = self.backing.read_state(rel)
            with self.backing.tree.parent(rel) as (dir_fd, name):
                self.versions.unkeep(rel, (dir_fd, name), persisted.version)
        except (OSError, ValueError):
            return

    def moved(self, old: str, new: str, *, is_dir: bool) -> None:
        if self.policy.history:
            self.versions.moved(old, new, is_dir=is_dir)

    # -- reading -----------------------------------------------------------------------

    def current(self, rel: str, kept: list[Version]) -> dict[str, Any] | None:
        """The path's state a restore must rest on: the live file's, or for
        a deleted path the version its unlink made (a tombstone), or one past
        its last retained version."""
        try:
            st = self.backing.lstat(rel)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            file = self.files.file(rel, st)
            return {"version": file.version, "epoch": file.epoch, "exists": True}
        tomb = self.files.tombstones.get(rel)
        if tomb is not None:
            return {"version": tomb[0], "epoch": tomb[1], "exists": False}
        if kept:
            return {"version": self.floor(rel), "epoch": 0, "exists": False}
        return None

    def history_of(self, rel: str) -> bytes:
        kept = self.versions.entries(rel)
        return encode_history(rel, self.current(rel, kept), [v.row() for v in kept])

    # -- restore ---------------------------------------------------------------------

    def floor(self, rel: str) -> int:
        """The version a path without state continues from: one past its
        last retained version (a deleted file recreated after its tombstone
        was forgotten, e.g. by a restart, does not start over at 0)."""
        kept = self.versions.numbers(rel)
        return kept[-1] + 1 if kept else 0

    def mark_restore(self, handle: Handle, version: int) -> None:
        """The caller's write handle will commit retained ``version``'s
        bytes: its commit is journaled with ``restored_from`` (ENOENT if no
        such version is retained). The commit itself is an ordinary one,
        resting on what the handle's claim rests on."""
        if self.versions.get(handle.path, version) is None:
            raise OSError(errno.ENOENT, f"no retained version {version} of {handle.path}")
        handle.restored_from = version
        self.metrics.inc("restores")

    # -- retention ---------------------------------------------------------------------

    async def scan(self) -> None:
        """Once per mount, on a worker thread: what history is there already
        (counts, and each path's oldest version for the age bound)."""
        count, size, oldest = await trio.to_thread.run_sync(self.versions.scan)
        self.versions.count, self.versions.bytes = count, size
        for rel, when in oldest:
            self.versions.note(rel, when)
        self.scanned = True

    async def sweep(self, now: float) -> None:
        """The bounds, from the upkeep task: only the paths that got versions
        since the last sweep and those whose oldest version aged out (their
        trims on a worker thread: freeing inodes is slow), then rejected
        writes (an in-memory index: no listing). The journal bounds itself."""
        self.wanted = trio.Event()
        self.versions.on_due = self.wanted.set
        paths = self.versions.due_paths(now)
        if paths:
            dropped, oldest = await trio.to_thread.run_sync(
                self.versions.trim_paths, paths, now)
            self.versions.settle(dropped, oldest)
            self._journal_drop(dropped)
        self._journal_drop(self.drafts.rejected.sweep(self.policy, now))
        self.flush_drops()

    async def gc(self, now: float, *, dry_run: bool) -> dict[str, Any]:
        """Every bound applied now, over the whole history (a walk, on a
        worker thread): ``fencefs gc``."""
        versions = await trio.to_thread.run_sync(
            lambda: self.versions.gc(now, dry_run=dry_run))
        rejected = self.drafts.rejected.sweep(self.policy, now, dry_run=dry_run)
        journal = Dropped("journal")
        if not dry_run:
            count, size = self.journaling.journal.trim()
            journal.count, journal.bytes = count, size
            self.versions.settle(versions, [])
            self._journal_drop(versions, "gc")
            self._journal_drop(rejected, "gc")
        else:
            journal.count, journal.bytes = self.journaling.journal.would_trim()
        self.last_gc = {"dry_run": dry_run, "ts": time.time(),
                        "dropped": [d.fields() for d in (versions, rejected, journal)]}
        return self.last_gc

    def _journal_drop(self, dropped: Dropped, by: str = "sweep") -> None:
        """Count a sweep's drops now; journal them in aggregate: one line per
        kind at most every JOURNAL_EVERY seconds (sweeps can run often when
        files fill their history fast), and at once for gc."""
        if not dropped.count:
            return
        self.metrics.inc("retention_dropped", dropped.count, kind=dropped.kind)
        self.metrics.inc("retention_dropped_bytes", dropped.bytes, kind=dropped.kind)
        pending = self._unjournaled.setdefault(dropped.kind, Dropped(dropped.kind))
        pending.count += dropped.count
        pending.bytes += dropped.bytes
        pending.files |= set(list(dropped.files)[:1000 - len(pending.files)])
        self.flush_drops(force=by == "gc", by=by)

    def flush_drops(self, *, force: bool = False, by: str = "sweep") -> None:
        now = time.monotonic()
        if not force and now < self._journaled_at + JOURNAL_EVERY:
            return
        self._journaled_at = now
        for pending in self._unjournaled.values():
            if pending.count:
                self.journaling.record("retention", "-", by=by, **pending.fields())
        self._unjournaled = {}

    # -- metrics -----------------------------------------------------------------------

    def _register_gauges(self) -> None:
        m = self.metrics
        m.gauge("versions_retained", lambda: self.versions.count)
        m.gauge("versions_bytes", lambda: self.versions.bytes)
        m.gauge("rejected_writes", lambda: len(self.drafts.rejected))
        m.gauge("rejected_bytes", lambda: self.drafts.rejected.bytes)
        m.gauge("journal_bytes", lambda: self.journaling.journal.size)
        m.gauge("files_tracked", lambda: sum(1 for _ in self.coord.files()))

        def claims() -> dict[tuple[tuple[str, str], ...], float]:
            writes = reads = 0
            for f in list(self.coord.files()):
                writes += len(f.writers)
                reads += len(f.readers)
            return {(("kind", "write"),): writes, (("kind", "read"),): reads}

        m.gauge("claims_outstanding", claims)

    def stats(self) -> bytes:
        snap = self.metrics.snapshot()
        snap["retention"] = {
            "keep_versions": self.policy.keep_versions, "keep_for": self.policy.keep_for,
            "keep_rejected": self.policy.keep_rejected,
            "keep_rejected_bytes": self.policy.keep_rejected_bytes,
            "keep_rejected_for": self.policy.keep_rejected_for,
            "journal_max": self.policy.journal_max,
            "keep_snapshots": self.policy.keep_snapshots,
            "keep_snapshots_for": self.policy.keep_snapshots_for,
            "history_scanned": self.scanned}
        return json.dumps(snap, separators=(",", ":")).encode()
