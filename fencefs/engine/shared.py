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

``SharedFiles`` is one object that the handlers call at clearly marked
places ("shared policy"); everything else about the policy is here.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from fencefs.core import Caller, FileState, Persisted
from fencefs.core.model import SHARED
from fencefs.engine.commits import CommitEngine
from fencefs.engine.coordination import Coordination
from fencefs.engine.files import FileTable
from fencefs.engine.handles import HandleTable, SharedHandle
from fencefs.engine.journaling import Journaling

log = logging.getLogger("fencefs.engine")

# Flags of an open() that carry over to the backing file's descriptor.
_PASSED_FLAGS = os.O_APPEND | os.O_TRUNC | os.O_SYNC | os.O_DSYNC


class SharedFiles:
    """The shared policy's handles, reads, writes and commits."""

    def __init__(self, coord: Coordination, files: FileTable, handles: HandleTable,
                 journaling: Journaling, commits: CommitEngine) -> None:
        self.coord = coord
        self.files = files
        self.handles = handles
        self.backing = files.backing
        self.journaling = journaling
        self.commits = commits

    def get(self, fh: int) -> SharedHandle | None:
        return self.handles.shared.get(fh)

    # -- which files ---------------------------------------------------------

    def in_place(self, file: FileState) -> bool:
        return self.coord.policy_of(file) == SHARED

    # -- open ----------------------------------------------------------------

    def open(self, ino: int, rel: str, file: FileState, flags: int,
             caller: Caller) -> SharedHandle:
        """A handle on the backing file itself. No await. The FUSE layer
        opens it without direct_io: one page cache shared by every handle of
        the file, so writes are seen at once and MAP_SHARED works."""
        writing = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        extra = flags & _PASSED_FLAGS
        if writing:
            try:  # read access too: the kernel reads pages to fill a mapping
                fd = self.backing.open(rel, os.O_RDWR | extra)
            except PermissionError:
                fd = self.backing.open(rel, (flags & os.O_ACCMODE) | extra)
        else:
            fd = self.backing.open(rel, os.O_RDONLY | (extra & ~os.O_TRUNC))
        handle = SharedHandle(self.handles.next_fh(), rel, ino, caller, fd, file,
                              bool(writing))
        handle.dirty = bool(writing and flags & os.O_TRUNC)
        self.handles.shared[handle.fh] = handle
        return handle

    def open_or_none(self, inode: int, rel: str, flags: int,
                     caller: Caller) -> SharedHandle | None:
        """``open`` of a regular file whose policy is shared, else None."""
        warm = self.coord.get(rel)
        if warm is not None and not self.in_place(warm):
            return None  # the common case, asked at every open: no syscall
        try:
            st = self.backing.lstat(rel)
        except FileNotFoundError:
            return None  # the caller reports it
        if not stat.S_ISREG(st.st_mode):
            return None
        file = self.files.file(rel, st)
        if not self.in_place(file):
            return None
        return self.open(inode, rel, file, flags, caller)

    # -- read, write, truncate ----------------------------------------------

    def read(self, handle: SharedHandle, off: int, size: int) -> bytes:
        return os.pread(handle.fd, size, off)

    def write(self, handle: SharedHandle, off: int, buf: bytes) -> int:
        if not handle.writable:
            raise OSError(errno.EBADF, "not open for writing")
        # Mark first: from here on a changed fingerprint is our own write.
        handle.dirty = True
        return os.pwrite(handle.fd, buf, off)  # an O_APPEND descriptor appends

    async def truncate(self, rel: str, size: int, fh: int | None, caller: Caller) -> bool:
        """Truncate of a shared file, in place; False if it is not one."""
        handle = self.handles.shared.get(fh) if fh is not None else None
        if handle is not None and handle.writable:
            handle.dirty = True  # through a handle: committed with its writes
            os.ftruncate(handle.fd, size)
            return True
        st = self.backing.lstat(rel)
        if not stat.S_ISREG(st.st_mode):
            return False
        file = self.files.file(rel, st)
        if not self.in_place(file):
            return False

        def install(version: int, epoch: int) -> None:
            fd = self.backing.open(rel, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
            self.files.persist_state(file, version=version, durable=False)

        # A truncate by path is a commit of its own (unfenced: commit_path
        # applies no guard to a shared file).
        await self.commits.commit_path(file, caller, install, "truncate", size=size,
                                       policy=SHARED)
        await self.journaling.durable_with(self._fsync_path, rel)
        return True

    def _fsync_path(self, rel: str) -> None:
        fd = self.backing.open(rel, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- commits: fsync, close ---------------------------------------------

    def _commit(self, handle: SharedHandle, op: str) -> int | None:
        """The file's in-place writes since its last commit become its next
        version. No await (the fingerprint stored must be the one of the
        content the version names). None if there was nothing to commit."""
        file = handle.file
        dirty = [h for h in self.handles.shared.values() if h.file is file and h.dirty]
        if not dirty:
            return None
        if self.coord.get(file.path) is not file:
            for h in dirty:  # unlinked or replaced: no path to version any more
                h.dirty = False
            return None
        before = file.version

        def persist(version: int, epoch: int) -> None:
            self.files.fingerprints[file.path] = self.backing.write_state_fd(
                handle.fd, Persisted(version, epoch, file.policy))

        version = self.coord.commit_in_place(file.path, persist)
        for h in dirty:
            h.dirty = False
        self.journaling.record("commit", file.path, identity=handle.caller.identity,
                               pid=handle.caller.pid, version=before, epoch=file.epoch,
                               new_version=version, op=op, policy=SHARED)
        return version

    async def _sync(self, handle: SharedHandle) -> None:
        await self.journaling.durable_with(os.fsync, handle.fd)

    async def flush(self, handle: SharedHandle) -> None:
        """close(): a write handle's close commits the file's in-place writes."""
        if handle.writable and self._commit(handle, "close") is not None:
            await self._sync(handle)

    async def fsync(self, handle: SharedHandle) -> None:
        """fsync(): commits the file's in-place writes, and reaches the disk."""
        self._commit(handle, "fsync")
        await self._sync(handle)

    async def release(self, handle: SharedHandle) -> None:
        """The last reference is gone. Writes through a mapping can arrive
        after the close that flushed; they are committed here."""
        try:
            if handle.writable and self._commit(handle, "release") is not None:
                await self._sync(handle)
        except OSError as e:  # release cannot report errors: log them
            log.warning("in-place commit of %s at release failed: %s", handle.path, e)
        finally:
            self.handles.shared.pop(handle.fh, None)
            os.close(handle.fd)

    # -- policy changes and renames ----------------------------------------

    def check_policy_switch(self, file: FileState, own: str | None) -> None:
        """EBUSY if giving ``file`` its own policy ``own`` would switch it
        between shared and fenced while it is open through the mount."""
        before = self.coord.policy_of(file) == SHARED
        after = self.coord.policy_for(file.path, own) == SHARED
        if before != after and self.handles.open_on(file):
            raise OSError(errno.EBUSY, "the file is open: its policy cannot switch")

    def check_rename(self, old: str, new: str, src_st: os.stat_result,
                     dst_st: os.stat_result | None) -> list[SharedHandle]:
        """Before a rename: EBUSY if it would switch an open file between
        shared and fenced, or replace a shared file that is open. Returns
        the in-place handles that move with it (for ``moved``)."""
        busy = OSError(errno.EBUSY, "an open file would switch policy")
        open_on = self.handles.open_on
        target = None
        if dst_st is not None and stat.S_ISREG(dst_st.st_mode) and stat.S_ISREG(src_st.st_mode):
            target = self.files.file(new, dst_st)  # what the rename commits over
            if self.in_place(target) and open_on(target):
                raise busy
        prefix = old + "/"
        moving: list[SharedHandle] = []
        for h in self.handles.shared.values():
            if (h.path == old or h.path.startswith(prefix)) and self.coord.get(h.path) is h.file:
                moving.append(h)
        if stat.S_ISREG(src_st.st_mode):
            src = self.coord.get(old)
            if src is not None and open_on(src):
                # Over a regular file the moved content takes the target's own
                # policy (see FenceOperations.rename); else it keeps its own.
                own = target.policy if target is not None else src.policy
                if self.in_place(src) != (self.coord.policy_for(new, own) == SHARED):
                    raise busy
        elif stat.S_ISDIR(src_st.st_mode):
            for path in {h.path for h in self.handles.handles.values() if not h.meta} \
                    | {h.path for h in moving}:
                if not path.startswith(prefix):
                    continue
                file = self.coord.get(path)
                if file is None:
                    continue
                moved = new + path[len(old):]
                if self.in_place(file) != (self.coord.policy_for(moved, file.policy) == SHARED):
                    raise busy
        return moving

    def moved(self, moving: list[SharedHandle], old: str, new: str) -> None:
        """After a rename: in-place handles follow their file to its new path
        (over another file, they now belong to the state kept at ``new``)."""
        for h in moving:
            h.path = new + h.path[len(old):]
            current = self.coord.get(h.path)
            if current is not None:
                h.file = current
