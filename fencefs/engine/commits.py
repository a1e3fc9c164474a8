"""The commit engine: every change of a fenced file's content or epoch.

One path for each kind of commit, all ending in the same step: the
coordination's decision with an ``install`` callable that journals the
commit, renames the new content into place, and records its fingerprint,
with no checkpoint from the check to the end of the install (G3; the local
coordination runs it inside ``atomic()``). Slow work (copying, fsync of a
draft) happens before, on a worker thread, and the check is made afresh
after it.

- ``commit``: a write handle's close or fsync, in the file's commit turn
  (one commit per path at a time gets past the turn, so a writer whose
  claim went stale while it waited is refused before it pays for an fsync);
  a rewrite installs the draft, an append rebuilds current content plus its
  bytes.
- ``commit_path``: rename over a file, truncate by path, unlink.
- ``reclaim``: the epoch bump, persisted before anyone can observe it.
- ``acquire``: a write handle's claim, waiting out an exclusive holder.
- ``release``: the last reference to a handle; a commit left by a deferred
  flush happens here (errors cannot reach the caller from release).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from fencefs.core import Busy, Caller, Claim, FenceError, FileState, Persisted
from fencefs.engine.coordination import Coordination
from fencefs.engine.files import FileTable
from fencefs.engine.handles import Handle
from fencefs.engine.journaling import Journaling
from fencefs.engine.writers import BIG, Writers
from fencefs.store.backing import Backing, Fingerprint
from fencefs.store.drafts import Draft, Drafts, close_quietly
from fencefs.store.txn import is_staged

log = logging.getLogger("fencefs.engine")


def file_size(backing: Backing, rel: str) -> int:
    try:
        return backing.lstat(rel).st_size
    except OSError:
        return 0


class CommitEngine:
    def __init__(self, coord: Coordination, files: FileTable, writers: Writers,
                 drafts: Drafts, journaling: Journaling, *, durable: bool,
                 wait: float = 0.0) -> None:
        self.coord = coord
        self.files = files
        self.writers = writers
        self.drafts = drafts
        self.journaling = journaling
        self.backing = files.backing
        self.durable = durable
        self.wait = wait
        # Per path: the turn to prepare and install a commit (see commit).
        self._turns: dict[str, trio.Lock] = {}
        # Keeps the content a commit replaces (engine/history.py), called in
        # the install just before the rename or unlink; never raises.
        self.keep: Callable[[FileState, int], None] = lambda file, version: None
        # At recovery: drops what ``keep`` retained for a commit a crash cut
        # short before its rename (engine/history.py).
        self.unkeep: Callable[[str], None] = lambda rel: None
        self.metrics = journaling.metrics

    # -- start-up ----------------------------------------------------------------

    def recover(self, last: dict[str, Any] | None) -> int:
        """Put drafts orphaned by a crash away as abandoned writes (and
        delete what an earlier daemon left in the trash); journal what the
        dead daemon did last but could not journal. ``last`` is the
        journal's last record as the dead daemon left it (read before any
        recovery writes to the journal)."""
        self.drafts.trash.empty()
        count = self._journal_unjournaled_rejections(last)
        for path, meta in self.drafts.orphans():
            target = str(meta.get("path", "?"))
            identity = str(meta.get("identity", "?"))
            name = self.drafts.put_away(path, target, identity, "abandoned")
            # A commit journaled with this draft (write-ahead, see _install)
            # never happened: the draft names it.
            self.journaling.record("abandoned", target, identity=identity,
                                   pid=meta.get("pid"), rejected=name, reason="daemon-restart",
                                   draft=os.path.basename(path))
            self.unkeep(target)
            count += 1
        count += self._undo_unlanded_path_commit(last)
        if count:
            self.journaling.journal.sync()
        return count

    def _journal_unjournaled_rejections(self, last: dict[str, Any] | None) -> int:
        """A refused draft is renamed into rejected/ and then journaled (the
        very next step): a crash in between leaves a rejected write newer
        than the journal's last line (names sort by the time they were
        made). Each is journaled now (a ``rejected`` line: the refusal's own
        fields are lost with it; the name still says which kind it was)."""
        if last is None or not isinstance(last.get("ts"), (int, float)):
            return 0
        unjournaled = self.drafts.rejected.newer_than(float(last["ts"]))
        for name, target in unjournaled:
            self.journaling.record("rejected", target, rejected=name, reason="daemon-restart")
        return len(unjournaled)

    def _undo_unlanded_path_commit(self, last: dict[str, Any] | None) -> int:
        """A path commit (rename over a file, unlink) is journaled ahead of
        its rename or unlink, like any commit, but has no draft to name it
        if a crash comes in between. Installs run one at a time on the
        event loop, each right after its journal line, so only the
        journal's last record can be one that never landed: if the path
        still holds an older version than it names, the commit is recorded
        as ``failed`` (and what history kept for it is dropped)."""
        if (last is None or last.get("event") != "commit" or last.get("draft")
                or last.get("op") not in ("rename", "unlink")):
            return 0
        rel, new = str(last.get("file")), int(last.get("new_version") or 0)
        try:
            persisted, _ = self.backing.read_state(rel)
        except (OSError, ValueError):
            return 0  # gone: the unlink (or a later one) landed
        if persisted.version >= new:
            return 0
        self.journaling.record("failed", rel, identity=last.get("identity"),
                               pid=last.get("pid"), op=last.get("op"), new_version=new,
                               reason="daemon-restart")
        self.unkeep(rel)
        return 1

    # -- claims ------------------------------------------------------------------

    async def acquire(self, locate: Callable[[], tuple[str, FileState]], caller: Caller,
                      *, rewrite: bool, append: bool,
                      interrupted: Callable[[], bool]) -> tuple[Claim, str, FileState]:
        """A write claim for the file ``locate()`` finds, waiting out an
        exclusive holder for up to --wait seconds (EBUSY after that, EINTR
        if ``interrupted()`` says the caller is signalled meanwhile).

        The sleep is a checkpoint: afterwards the file may have been renamed,
        replaced, reclaimed or given another policy, so every round locates
        it afresh and decides again."""
        deadline = time.monotonic() + self.wait
        while True:
            rel, file = locate()
            now = time.monotonic()
            before = file.epoch
            try:
                claim = await self.coord.open_write(
                    rel, caller.identity, caller.pid, rewrite=rewrite, append=append,
                    now=now, persist_epoch=self.files.epoch_persister(file))
            except Busy as e:
                if now < deadline:
                    if interrupted():
                        raise OSError(errno.EINTR, "interrupted while waiting") from None
                    await trio.sleep(min(0.02, deadline - now))
                    continue  # re-validate everything after the checkpoint
                self.journaling.refusal(e, rel, caller, "open")
                raise
            except FenceError as e:
                self.journaling.refusal(e, rel, caller, "open")
                raise
            if file.epoch != before:
                self.journaling.record("reclaim", rel, identity=caller.identity,
                                       pid=caller.pid, version=file.version, epoch=before,
                                       new_epoch=file.epoch, reason="lease-expired")
            return claim, rel, file

    # -- handle commits ------------------------------------------------------------

    async def commit(self, handle: Handle) -> None:
        """Commit a dirty write handle (its close or fsync)."""
        assert handle.claim is not None
        started = time.monotonic()
        check = self.writers.check_live
        check(handle, "commit")
        async with self._turn(handle.path):
            check(handle, "commit")
            if handle.draft is None:
                with self.writers.failing_on_io(handle, "commit"):
                    await self.writers.make_draft(handle, copy=False)
                check(handle, "commit")
            if handle.claim.append:
                await self._commit_append(handle)
            else:
                await self._commit_rewrite(handle)
        if not is_staged(handle.path):  # a staged draft is made durable at its txn
            await self.journaling.durable_dir(os.path.dirname(handle.path))
        done = time.monotonic()
        policy = self.journaling.policy_for(handle.path)
        self.metrics.observe("commit_seconds", done - started, policy=policy)
        self.metrics.observe("open_to_commit_seconds", done - handle.opened, policy=policy)

    @contextlib.asynccontextmanager
    async def _turn(self, path: str) -> AsyncIterator[None]:
        lock = self._turns.get(path)
        if lock is None:
            lock = self._turns[path] = trio.Lock()
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._turns.get(path) is lock:
                del self._turns[path]

    async def _commit_rewrite(self, handle: Handle) -> None:
        claim, draft = handle.claim, handle.draft
        assert claim is not None and draft is not None
        file = self.coord.get(handle.path)
        assert file is not None
        predicted = Persisted(claim.version + 1, claim.epoch, file.policy)
        # Slow part first, off the event loop: the draft gets the state it
        # will commit as, and reaches the disk.
        with self.writers.failing_on_io(handle, "commit"):
            if self.durable and not is_staged(handle.path):
                await trio.to_thread.run_sync(
                    lambda: self.drafts.prepare(draft, predicted, durable=True))
            else:  # no fsync: cheaper here than a trip to a worker thread
                self.drafts.prepare(draft, predicted, durable=False)
            self.journaling.room()
        install = self._installer(handle, draft, file, predicted, claim.version)
        try:
            with self.writers.failing_on_io(handle, "commit"):
                version = await self.coord.commit(claim, install, draft.name)
        except FenceError as e:
            self.writers.reject(handle, e, op="commit")
            raise
        # The draft is now the committed content this handle reads.
        if handle.base_fd is not None:
            close_quietly(handle.base_fd)
        handle.base_fd, handle.draft, handle.dirty = draft.fd, None, False
        handle.served = (version, file.epoch)

    def _installer(self, handle: Handle, draft: Draft, file: FileState,
                   predicted: Persisted, rested: int) -> Callable[[int, int], None]:
        def install(version: int, epoch: int) -> None:
            """Journal -> rename -> remember: runs once the commit is decided,
            inside the decision's step (no checkpoint)."""
            if (version, epoch, file.policy) != (predicted.version, predicted.epoch,
                                                 predicted.policy):
                self.drafts.prepare(draft, Persisted(version, epoch, file.policy),
                                    durable=self.durable)
            # The record goes to the journal ahead of the rename: a daemon
            # killed in between leaves a journaled commit whose draft the
            # next mount puts away as abandoned, with the same version (never
            # a content in place that the journal does not account for).
            self.journaling.record("commit", handle.path, identity=handle.caller.identity,
                                   pid=handle.caller.pid, version=rested, epoch=epoch,
                                   new_version=version, draft=draft.name,
                                   op="restore" if handle.restored_from is not None else None,
                                   restored_from=handle.restored_from)
            handle.restored_from = None
            self.keep(file, version - 1)
            self.drafts.install(draft)
            self._installed(handle.path, draft.fd, handle.ino)
        return install

    def _installed(self, rel: str, fd: int, ino: int | None) -> None:
        """The content at ``rel`` is ours now: not a foreign write; the
        kernel's cached attributes of it are stale."""
        self.files.fingerprints[rel] = Fingerprint.of(os.fstat(fd))
        self.files.content_changed(rel, ino)

    async def _commit_append(self, handle: Handle) -> None:
        """Append: the draft's bytes go after whatever content is current.

        The combined content is built against the version seen before, on a
        worker thread unless it is small and needs no fsync; if another
        commit landed meanwhile it is rebuilt. After a few lost races the
        build runs inline, in the same step as the decision, so an append
        always lands (only a reclaim can refuse it).
        """
        claim, appended = handle.claim, handle.draft
        assert claim is not None and appended is not None
        rel = handle.path
        for attempt in range(4):
            file = self.coord.get(rel)
            if file is None:  # unlinked meanwhile: the claim conflicts
                self.writers.check_live(handle, "append")
            assert file is not None
            seen = file.version
            persisted = Persisted(seen + 1, claim.epoch, file.policy)
            with self.writers.failing_on_io(handle, "append"):
                if attempt < 3 and (self.durable or file_size(self.backing, rel) > BIG):
                    combined = await trio.to_thread.run_sync(
                        self._build_append, rel, appended, handle.caller, persisted)
                else:  # inline: from the build to the rename, no checkpoint
                    combined = self._build_append(rel, appended, handle.caller, persisted)
            if file.version != seen or self.coord.get(rel) is not file:
                self.drafts.discard(combined)  # someone committed meanwhile: rebuild
                continue
            try:
                self.journaling.room()
                version = await self.coord.commit(
                    claim, self._append_installer(handle, file, combined, seen), combined.name)
            except FenceError as e:
                self.drafts.discard(combined)
                self.writers.reject(handle, e, op="append")
                raise
            except OSError as e:
                self.drafts.discard(combined)
                self.writers.fail(handle, e, "append")
            # The handle now reads the content it installed, appends included.
            if handle.base_fd is not None:
                close_quietly(handle.base_fd)
            handle.base_fd, handle.served = combined.fd, (version, claim.epoch)
            self.drafts.discard(appended)
            handle.draft, handle.dirty, handle.append_at = None, False, 0
            return
        raise AssertionError("an inline append build cannot lose a race")

    def _append_installer(self, handle: Handle, file: FileState, combined: Draft,
                          seen: int) -> Callable[[int, int], None]:
        def install(version: int, epoch: int) -> None:
            self.journaling.record("commit", handle.path, identity=handle.caller.identity,
                                   pid=handle.caller.pid, version=seen, epoch=epoch,
                                   new_version=version, op="append", size=handle.append_at,
                                   draft=combined.name)
            self.keep(file, version - 1)
            self.drafts.install(combined)
            self._installed(handle.path, combined.fd, handle.ino)
        return install

    def _build_append(self, rel: str, appended: Draft, caller: Caller,
                      persisted: Persisted) -> Draft:
        src = self.backing.open(rel, os.O_RDONLY)
        try:
            combined = self.drafts.create(rel, caller.identity, caller.pid, src)
        finally:
            os.close(src)
        try:
            end = os.fstat(combined.fd).st_size
            offset = 0
            while True:
                chunk = os.pread(appended.fd, 1 << 20, offset)
                if not chunk:
                    break
                os.pwrite(combined.fd, chunk, end + offset)
                offset += len(chunk)
            self.drafts.prepare(combined, persisted, durable=self.durable)
        except BaseException:
            self.drafts.discard(combined)  # never leave a half-built draft behind
            raise
        return combined

    async def release(self, handle: Handle) -> None:
        """The handle's last reference is gone (already out of the table)."""
        if handle.dirty and handle.error is None and handle.claim is not None:
            # Left dirty by a deferred flush: commit now. Errors cannot reach
            # the caller from release: a refusal is journaled and the bytes
            # kept, as always.
            try:
                await self.commit(handle)
            except (FenceError, OSError) as e:
                log.info("commit of %s at release refused: %s", handle.path, e)
        if handle.dirty and handle.draft is not None:
            self.writers.reject(handle, None, op="release", reason="abandoned")
        if handle.claim is not None:
            self.coord.release(handle.claim)
        if handle.draft is not None:
            self.drafts.discard(handle.draft)
        if handle.base_fd is not None:
            close_quietly(handle.base_fd)

    # -- path commits ----------------------------------------------------------------

    async def commit_path(self, file: FileState, caller: Caller,
                          install: Callable[[int, int], None], event: str,
                          draft: Draft | None = None, **fields: object) -> int:
        """The decision and install of a path operation (rename over,
        truncate, unlink). A refused ``draft`` is kept under rejected/."""
        self.journaling.room()
        journaling = self.journaling

        def journaled(version: int, epoch: int) -> None:
            # Journaled ahead of the install (see _installer).
            journaling.record("commit", file.path, identity=caller.identity, pid=caller.pid,
                              op=event, new_version=version, epoch=epoch,
                              draft=draft.name if draft is not None else None, **fields)
            try:
                install(version, epoch)
            except OSError as e:
                journaling.record("failed", file.path, identity=caller.identity,
                                  pid=caller.pid, op=event, new_version=version,
                                  errno=errno.errorcode.get(e.errno or 0, str(e.errno)))
                raise

        try:
            return await self.coord.commit_path(file.path, caller.identity, caller.pid,
                                                journaled, now=time.monotonic())
        except FenceError as e:
            name = (self.drafts.reject(draft, caller.identity, e.reason)
                    if draft is not None else None)
            journaling.refusal(e, file.path, caller, event, rejected=name)
            raise

    async def unlink(self, file: FileState, caller: Caller) -> None:
        """Unlinking a regular file is a commit of it (it rests on what the
        caller read); the path keeps its version and epoch in a tombstone."""
        rel = file.path

        def install(version: int, epoch: int) -> None:
            self.keep(file, version - 1)  # a deleted file stays restorable
            self.drafts.trash.put(rel)  # one rename; deleted off the request path

        await self.commit_path(file, caller, install, "unlink")
        self.files.bury(rel)  # with the version the unlink made

    async def rename_over(self, old: str, target: FileState, caller: Caller) -> None:
        """Renaming a regular file over another is a commit of the target:
        the moved content becomes its next version."""
        new = target.path
        if self.durable:  # the moved data first, off the event loop
            await trio.to_thread.run_sync(self.backing.sync_file, old)

        def install(version: int, epoch: int) -> None:
            fp = self.backing.write_state(
                old, Persisted(version, epoch, target.policy), durable=False)
            if self.durable:
                # The new state reaches the disk before the rename can: a
                # crash never leaves the moved content at ``new`` carrying
                # the state it had at ``old`` (only metadata is left to sync).
                self.backing.sync_file(old)
            self.keep(target, version - 1)
            self.drafts.trash.keep(new)  # the replaced content is freed off the request path
            self.backing.tree.rename(old, new)
            self.files.fingerprints[new] = fp
            self.files.fingerprints.pop(old, None)
            self.coord.removed(old)

        await self.commit_path(target, caller, install, "rename", source=old)

    async def truncate_path(self, file: FileState, size: int, caller: Caller) -> None:
        """truncate() by path: a new draft of the given size, committed."""
        rel = file.path
        src = self.backing.open(rel, os.O_RDONLY)
        try:
            draft = self.drafts.create(rel, caller.identity, caller.pid,
                                       src if size > 0 else None)
        finally:
            os.close(src)
        os.ftruncate(draft.fd, size)

        def install(version: int, epoch: int) -> None:
            self.drafts.prepare(draft, Persisted(version, epoch, file.policy),
                                durable=self.durable)
            self.keep(file, version - 1)
            self.drafts.install(draft)
            self.files.fingerprints[rel] = Fingerprint.of(os.fstat(draft.fd))

        try:
            await self.commit_path(file, caller, install, "truncate", draft=draft, size=size)
        except FenceError:
            raise
        except BaseException:
            self.drafts.discard(draft)
            raise
        close_quietly(draft.fd)
        await self.journaling.durable_dir(os.path.dirname(rel))

    # -- reclaim -----------------------------------------------------------------------

    async def reclaim(self, file: FileState, caller: Caller, *, reason: str) -> int:
        """Reclaim: the new epoch is on disk before anyone can observe it."""
        before = file.epoch
        self.journaling.room()
        epoch = await self.coord.reclaim(file.path, self.files.epoch_persister(file))
        self.journaling.record("reclaim", file.path, identity=caller.identity, pid=caller.pid,
                               version=file.version, epoch=before, new_epoch=epoch,
                               reason=reason, revoked=len(file.writers))
        await self.journaling.sync_journal()
        return epoch

    async def reclaim_paths(self, paths: set[str], caller: Caller, reason: str) -> None:
        for path in sorted(paths):
            file = self.coord.get(path)
            if file is not None:
                await self.reclaim(file, caller, reason=reason)

    async def sweep(self, now: float, idle_after: float) -> None:
        """Reclaim files whose write claims sat idle past --sweep-after."""
        idle = {c.path for c in self.coord.idle_writers(now, idle_after)}
        await self.reclaim_paths(idle, Caller("fencefs-sweep", os.getpid()), "idle")
