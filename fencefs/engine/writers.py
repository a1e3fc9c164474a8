"""A write handle before its commit: its draft, its writes, its early errors.

``Writers`` gives a fenced write handle its private draft (empty for
``O_TRUNC``, else a copy of the committed content, made at the first write),
writes into it, and reports a stale claim at the earliest call that can know
it (``check_live``: a write or close after a reclaim or a conflicting commit
gets ESTALE/EAGAIN at once). A refused handle's bytes are kept under
``rejected/`` (``reject``, G5); a handle whose draft hit an I/O error ends
there (``fail``): it must never commit what it no longer holds.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from typing import NoReturn

import trio

from fencefs.core import FenceError
from fencefs.engine.coordination import Coordination
from fencefs.engine.handles import Handle
from fencefs.engine.journaling import Journaling
from fencefs.store.drafts import Drafts

log = logging.getLogger("fencefs.engine")

# Copies bigger than this run on a worker thread.
BIG = 1 << 20


class HandleFailed(OSError):
    """A handle that can no longer do anything but repeat its errno."""


class Writers:
    def __init__(self, coord: Coordination, drafts: Drafts, journaling: Journaling) -> None:
        self.coord = coord
        self.drafts = drafts
        self.journaling = journaling

    # -- drafts ------------------------------------------------------------------

    async def make_draft(self, handle: Handle, *, copy: bool) -> None:
        source = handle.base_fd if copy and not (handle.claim and handle.claim.append) else None
        caller = handle.caller
        if source is not None and os.fstat(source).st_size > BIG:
            draft = await trio.to_thread.run_sync(
                self.drafts.create, handle.path, caller.identity, caller.pid, source)
        else:
            draft = self.drafts.create(handle.path, caller.identity, caller.pid, source)
        if handle.draft is not None:  # another request of this handle made one meanwhile
            self.drafts.discard(draft)
            return
        handle.draft = draft

    async def write(self, handle: Handle, off: int, buf: bytes, now: float) -> int:
        with self.failing_on_io(handle, "write"):
            if handle.draft is None and handle.error is None and handle.claim is not None:
                await self.make_draft(handle, copy=True)
        # Checked after the draft exists (its copy may have awaited), so a
        # refusal keeps what the handle wrote, this write included.
        self.check_live(handle, refused_write=(off, buf))
        with self.failing_on_io(handle, "write"):
            written = self._write_draft(handle, off, buf)
        handle.dirty = True
        assert handle.claim is not None
        self.coord.renew(handle.claim, now)
        return written

    @staticmethod
    def _write_draft(handle: Handle, off: int, buf: bytes) -> int:
        assert handle.draft is not None and handle.claim is not None
        if handle.claim.append:
            # Appends land after whatever is current at commit: keep them in order.
            written = os.pwrite(handle.draft.fd, buf, handle.append_at)
            handle.append_at += written
            return written
        return os.pwrite(handle.draft.fd, buf, off)

    async def truncate(self, handle: Handle, size: int) -> None:
        """ftruncate through a write handle: its draft, nothing committed."""
        self.check_live(handle)
        with self.failing_on_io(handle, "truncate"):
            if handle.draft is None:
                await self.make_draft(handle, copy=size > 0)
            assert handle.draft is not None
            os.ftruncate(handle.draft.fd, size)
        handle.dirty = True

    def draft_size(self, handle: Handle) -> int:
        """What the writer's own fstat sees: its draft (an appending
        handle's appends after the content it opened)."""
        assert handle.draft is not None
        if handle.claim is not None and handle.claim.append:
            base = os.fstat(handle.base_fd).st_size if handle.base_fd is not None else 0
            return base + handle.append_at
        return os.fstat(handle.draft.fd).st_size

    # -- early errors, refusals, failures ---------------------------------------

    def check_live(self, handle: Handle, op: str = "write",
                   refused_write: tuple[int, bytes] | None = None) -> None:
        """The earliest error: a handle that can no longer commit. A refused
        write's own bytes go to rejected/ with the draft."""
        if handle.error is not None:
            raise HandleFailed(handle.error, os.strerror(handle.error))
        if handle.claim is None:
            raise HandleFailed(errno.EBADF, "not open for writing")
        try:
            self.coord.check(handle.claim)
        except FenceError as e:
            if refused_write is not None and handle.draft is not None:
                self._write_draft(handle, *refused_write)
            self.reject(handle, e, op=op)
            raise

    @contextlib.contextmanager
    def failing_on_io(self, handle: Handle, op: str) -> Iterator[None]:
        try:
            yield
        except HandleFailed:
            raise
        except OSError as e:
            self.fail(handle, e, op)

    def fail(self, handle: Handle, exc: OSError, op: str) -> NoReturn:
        """An I/O error on a handle's draft (a full disk, a backing store
        gone read-only or failing) ends the handle: the draft no longer holds
        what the program wrote, so it must never commit. Every later write,
        fsync and close repeats the errno. The draft is discarded, not kept:
        on a full disk, keeping it would keep the disk full."""
        code = exc.errno or errno.EIO
        handle.error, handle.dirty = code, False
        if handle.draft is not None:
            self.drafts.discard(handle.draft)
            handle.draft = None
        log.warning("%s of %s failed: %s", op, handle.path, exc)
        self.journaling.claim_event("failed", handle.claim, self.coord.get(handle.path), op=op,
                                    errno=errno.errorcode.get(code, str(code)))
        raise HandleFailed(code, os.strerror(code)) from None

    def reject(self, handle: Handle, error: FenceError | None, *, op: str,
               reason: str | None = None, **fields: object) -> None:
        """Keep a refused handle's bytes under rejected/ and journal why."""
        reason = reason or (error.reason if error else "rejected")
        name = None
        if handle.draft is not None:
            try:
                name = self.drafts.reject(handle.draft, handle.caller.identity, reason)
            except OSError as e:
                log.error("could not keep rejected draft of %s: %s", handle.path, e)
                self.drafts.discard(handle.draft)
            handle.draft = None
        handle.dirty = False
        handle.error = error.errno if error else errno.EINTR
        file = self.coord.get(handle.path)
        if error is not None:  # across hosts: its etcd revision (journaling.py)
            fields = {**self.journaling.refusal_fields(error), **fields}
        self.journaling.claim_event(reason, handle.claim, file, op=op, rejected=name, **fields)
