"""The shared policy: files written in place, as on a local filesystem.

For files whose writers coordinate among themselves with locks (SQLite's
database, journal, write-ahead log and shared-memory files): no drafts, no
claims, no fencing. A handle reads and writes the backing file itself, and
is opened without ``direct_io``, so the kernel keeps one page cache for the
file that every handle shares: writes are visible to the other handles at
once (the writeback cache stays off, so each write reaches the backing file
before ``write()`` returns), ``MAP_SHARED`` mappings work, and POSIX and
``flock`` locks, which the kernel keeps for the mount (pyfuse3 answers no
lock requests), work between processes.

Versions still count commits, so that ``user.fencefs.version`` changes
whenever the content did: in-place writes since the last commit become the
next version at an ``fsync`` of any handle of the file, and at the close of
a write handle. Its own in-place writes must not look like foreign writes:
while a file has uncommitted in-place writes, a changed fingerprint is
ours; each in-place commit stores the new one.

A file's policy never changes between shared and fenced while the file is
open through the mount (``EBUSY``): a drafted handle and an in-place handle
of one file would disagree about what its content is. For the same reason a
rename over a shared file that is open is refused (the open handles would
go on writing a file that is no longer there).

``SharedFiles`` is a mixin of ``FenceOperations``: the handlers call into it
at clearly marked places, and everything else about the policy is here.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyfuse3

from fencefs.core import Coordinator, FileState, Persisted
from fencefs.core.model import SHARED
from fencefs.fuse.identity import Caller
from fencefs.store.backing import Backing, Fingerprint
from fencefs.store.journal import Journal

if TYPE_CHECKING:
    from fencefs.fuse.operations import Handle

log = logging.getLogger("fencefs.fuse")

# Flags of an open() that carry over to the backing file's descriptor.
_PASSED_FLAGS = os.O_APPEND | os.O_TRUNC | os.O_SYNC | os.O_DSYNC


@dataclass
class SharedHandle:
    fh: int
    path: str
    ino: int
    caller: Caller
    fd: int  # the backing file itself
    # The state the file had when this handle opened it. Once the path holds
    # another file (unlinked, replaced), the handle is detached: its writes
    # still land in the inode it holds, but no longer make versions.
    file: FileState
    writable: bool
    dirty: bool = False  # in-place writes through this handle since the last commit


class SharedFiles:
    """The shared-policy half of ``FenceOperations`` (a mixin)."""

    # Provided by FenceOperations.
    core: Coordinator
    backing: Backing
    journal: Journal
    durable: bool
    handles: dict[int, Handle]
    _fh: Iterator[int]
    _fingerprints: dict[str, Fingerprint]
    _persist_state: Callable[..., None]
    _file: Callable[[str, os.stat_result], FileState]
    _commit_path: Callable[..., int]
    _durable: Callable[..., Awaitable[None]]

    def _init_shared(self) -> None:
        self._shared: dict[int, SharedHandle] = {}

    # -- which files ---------------------------------------------------------

    def _in_place(self, file: FileState) -> bool:
        return self.core.policy_of(file) == SHARED

    def _writing_in_place(self, file: FileState) -> bool:
        """True while ``file`` has uncommitted in-place writes: a fingerprint
        that moved is then our own doing, not a foreign write."""
        return any(h.file is file and h.dirty for h in self._shared.values())

    def _open_on(self, file: FileState) -> bool:
        """Any handle of ``file`` open through the mount, of either kind."""
        return (any(h.file is file for h in self._shared.values())
                or any(h.path == file.path and not h.meta for h in self.handles.values()))

    # -- open ----------------------------------------------------------------

    def _open_shared(self, ino: int, rel: str, file: FileState, flags: int,
                     caller: Caller) -> pyfuse3.FileInfo:
        """A handle on the backing file itself. No await."""
        writing = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        path = self.backing.abs(rel)
        extra = (flags & _PASSED_FLAGS) | os.O_NOFOLLOW | os.O_CLOEXEC
        if writing:
            try:  # read access too: the kernel reads pages to fill a mapping
                fd = os.open(path, os.O_RDWR | extra)
            except PermissionError:
                fd = os.open(path, (flags & os.O_ACCMODE) | extra)
        else:
            fd = os.open(path, os.O_RDONLY | (extra & ~os.O_TRUNC))
        handle = SharedHandle(next(self._fh), rel, ino, caller, fd, file, bool(writing))
        handle.dirty = bool(writing and flags & os.O_TRUNC)
        self._shared[handle.fh] = handle
        # No direct_io: one page cache shared by every handle of the file, so
        # writes are seen at once and MAP_SHARED works. keep_cache=False: a
        # new open starts from the backing file, whatever happened before.
        return pyfuse3.FileInfo(fh=handle.fh, direct_io=False, keep_cache=False)

    def _shared_open_or_none(self, inode: int, rel: str, flags: int,
                             caller: Caller) -> pyfuse3.FileInfo | None:
        """``open`` of a regular file whose policy is shared, else None."""
        warm = self.core.get(rel)
        if warm is not None and not self._in_place(warm):
            return None  # the common case, asked at every open: no syscall
        try:
            st = self.backing.lstat(rel)
        except FileNotFoundError:
            return None  # the caller reports it
        if not stat.S_ISREG(st.st_mode):
            return None
        file = self._file(rel, st)
        if not self._in_place(file):
            return None
        return self._open_shared(inode, rel, file, flags, caller)

    # -- read, write, truncate ----------------------------------------------

    def _read_shared(self, handle: SharedHandle, off: int, size: int) -> bytes:
        return os.pread(handle.fd, size, off)

    def _write_shared(self, handle: SharedHandle, off: int, buf: bytes) -> int:
        if not handle.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        # Mark first: from here on a changed fingerprint is our own write.
        handle.dirty = True
        return os.pwrite(handle.fd, buf, off)  # an O_APPEND descriptor appends

    async def _truncate_shared(self, rel: str, size: int, fh: int | None,
                               caller: Caller) -> bool:
        """Truncate of a shared file, in place; False if it is not one."""
        handle = self._shared.get(fh) if fh is not None else None
        if handle is not None and handle.writable:
            handle.dirty = True  # through a handle: committed with its writes
            os.ftruncate(handle.fd, size)
            return True
        st = self.backing.lstat(rel)
        if not stat.S_ISREG(st.st_mode):
            return False
        file = self._file(rel, st)
        if not self._in_place(file):
            return False

        def install(version: int, epoch: int) -> None:
            os.truncate(self.backing.abs(rel), size)
            self._persist_state(file, version=version, durable=False)

        # A truncate by path is a commit of its own (unfenced: commit_path
        # applies no guard to a shared file).
        self._commit_path(file, caller, install, "truncate", size=size, policy=SHARED)
        await self._durable(self._fsync_path, rel)
        return True

    def _fsync_path(self, rel: str) -> None:
        fd = os.open(self.backing.abs(rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- commits: fsync, close ---------------------------------------------

    def _commit_shared(self, handle: SharedHandle, op: str) -> int | None:
        """The file's in-place writes since its last commit become its next
        version. No await (the fingerprint stored must be the one of the
        content the version names). None if there was nothing to commit."""
        file = handle.file
        dirty = [h for h in self._shared.values() if h.file is file and h.dirty]
        if not dirty:
            return None
        if self.core.get(file.path) is not file:
            for h in dirty:  # unlinked or replaced: no path to version any more
                h.dirty = False
            return None
        before = file.version

        def persist(version: int, epoch: int) -> None:
            self._fingerprints[file.path] = self.backing.write_state_fd(
                handle.fd, Persisted(version, epoch, file.policy))

        version = self.core.commit_in_place(file.path, persist)
        for h in dirty:
            h.dirty = False
        self.journal.record("commit", file.path, identity=handle.caller.identity,
                            pid=handle.caller.pid, version=before, epoch=file.epoch,
                            new_version=version, op=op, policy=SHARED)
        return version

    async def _sync_shared(self, handle: SharedHandle) -> None:
        await self._durable(os.fsync, handle.fd)

    async def _flush_shared(self, handle: SharedHandle) -> None:
        """close(): a write handle's close commits the file's in-place writes."""
        if handle.writable and self._commit_shared(handle, "close") is not None:
            await self._sync_shared(handle)

    async def _fsync_shared(self, handle: SharedHandle) -> None:
        """fsync(): commits the file's in-place writes, and reaches the disk."""
        self._commit_shared(handle, "fsync")
        await self._sync_shared(handle)

    async def _release_shared(self, handle: SharedHandle) -> None:
        """The last reference is gone. Writes through a mapping can arrive
        after the close that flushed; they are committed here."""
        try:
            if handle.writable and self._commit_shared(handle, "release") is not None:
                await self._sync_shared(handle)
        except OSError as e:  # release cannot report errors: log them
            log.warning("in-place commit of %s at release failed: %s", handle.path, e)
        finally:
            self._shared.pop(handle.fh, None)
            os.close(handle.fd)

    # -- policy changes and renames ----------------------------------------

    def _check_policy_switch(self, file: FileState, own: str | None) -> None:
        """EBUSY if giving ``file`` its own policy ``own`` would switch it
        between shared and fenced while it is open through the mount."""
        before = self.core.policy_of(file) == SHARED
        after = self.core.policy_for(file.path, own) == SHARED
        if before != after and self._open_on(file):
            raise pyfuse3.FUSEError(errno.EBUSY)

    def _check_rename_shared(self, old: str, new: str, src_st: os.stat_result,
                             dst_st: os.stat_result | None) -> list[SharedHandle]:
        """Before a rename: EBUSY if it would switch an open file between
        shared and fenced, or replace a shared file that is open. Returns
        the in-place handles that move with it (for ``_moved_shared``)."""
        target = None
        if dst_st is not None and stat.S_ISREG(dst_st.st_mode) and stat.S_ISREG(src_st.st_mode):
            target = self._file(new, dst_st)  # what the rename commits over
            if self._in_place(target) and self._open_on(target):
                raise pyfuse3.FUSEError(errno.EBUSY)
        prefix = old + "/"
        moving: list[SharedHandle] = []
        for h in self._shared.values():
            if (h.path == old or h.path.startswith(prefix)) and self.core.get(h.path) is h.file:
                moving.append(h)
        if stat.S_ISREG(src_st.st_mode):
            src = self.core.get(old)
            if src is not None and self._open_on(src):
                # Over a regular file the moved content takes the target's own
                # policy (see FenceOperations.rename); else it keeps its own.
                own = target.policy if target is not None else src.policy
                if self._in_place(src) != (self.core.policy_for(new, own) == SHARED):
                    raise pyfuse3.FUSEError(errno.EBUSY)
        elif stat.S_ISDIR(src_st.st_mode):
            for path in {h.path for h in self.handles.values() if not h.meta} \
                    | {h.path for h in moving}:
                if not path.startswith(prefix):
                    continue
                file = self.core.get(path)
                if file is None:
                    continue
                moved = new + path[len(old):]
                if self._in_place(file) != (self.core.policy_for(moved, file.policy) == SHARED):
                    raise pyfuse3.FUSEError(errno.EBUSY)
        return moving

    def _moved_shared(self, moving: list[SharedHandle], old: str, new: str) -> None:
        """After a rename: in-place handles follow their file to its new path
        (over another file, they now belong to the state kept at ``new``)."""
        for h in moving:
            h.path = new + h.path[len(old):]
            current = self.core.get(h.path)
            if current is not None:
                h.file = current
