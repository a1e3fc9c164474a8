"""Open handles: what each one reads and writes, and the descriptors they book.

A fenced ``Handle`` reads the committed inode it opened (``base_fd``) and
writes to a private draft; a ``SharedHandle`` (the shared policy) reads and
writes the backing file itself. ``HandleTable`` numbers both kinds, knows
which write handles are open on each inode (whose draft a stat sees), and
books descriptors so that a process hoarding handles gets ENFILE while the
commits of others still find descriptors free.
"""

from __future__ import annotations

import errno
import itertools
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fencefs.core import Caller, Claim, FileState
from fencefs.store.drafts import Draft

# Descriptors kept free for commits whatever the number of open handles.
FD_RESERVE = 256


@dataclass(slots=True)
class Handle:
    fh: int
    path: str
    ino: int
    caller: Caller
    tid: int
    # Read side: the committed content this handle serves (an immutable inode).
    base_fd: int | None = None
    # Write side.
    claim: Claim | None = None
    draft: Draft | None = None
    dirty: bool = False
    append_at: int = 0
    error: int | None = None
    meta: bool = False
    served: tuple[int, int] | None = None  # (version, epoch) of base_fd
    observed: tuple[int, int] | None = None  # what read() last recorded
    booked: tuple[int, int] = (0, 0)  # (process, descriptors) booked at open
    opened: float = field(default_factory=time.monotonic)  # for open-to-commit metrics
    restored_from: int | None = None  # its next commit restores this version

    @property
    def writable(self) -> bool:
        return self.claim is not None


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


class HandleTable:
    """Every open file handle of the mount, of both kinds."""

    def __init__(self) -> None:
        self.handles: dict[int, Handle] = {}
        self.shared: dict[int, SharedHandle] = {}
        # Open write handles per inode (fh numbers): whose draft a getattr sees.
        self.writers: dict[int, set[int]] = {}
        # Descriptors booked by open handles, in all and per process.
        self._booked = 0
        self._booked_by: dict[int, int] = {}
        self._fh = itertools.count(1)

    def next_fh(self) -> int:
        return next(self._fh)

    # -- fenced handles --------------------------------------------------------

    def add(self, handle: Handle, pid: int, units: int, *, writing: bool) -> None:
        self.handles[handle.fh] = handle
        handle.booked = (pid, units)
        self._booked += units
        self._booked_by[pid] = self._booked_by.get(pid, 0) + units
        if writing:
            self.writers.setdefault(handle.ino, set()).add(handle.fh)

    def remove(self, fh: int) -> Handle | None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return None
        pid, units = handle.booked
        self._booked -= units
        left = self._booked_by.get(pid, 0) - units
        if left > 0:
            self._booked_by[pid] = left
        else:
            self._booked_by.pop(pid, None)
        writers = self.writers.get(handle.ino)
        if writers is not None:
            writers.discard(fh)
            if not writers:
                del self.writers[handle.ino]
        return handle

    def room_for(self, pid: int, units: int) -> None:
        """ENFILE when a new handle of process ``pid`` needing ``units``
        descriptors does not fit. A read handle holds one descriptor, a write
        handle up to two (its committed content and its draft). FD_RESERVE
        stay free for commits (drafts of path commits and appends, directory
        syncs), and one process may book at most half of the rest, so a
        client hoarding handles gets ENFILE while others can still open and
        commit. Without this, a hoarder made everyone's commits fail half-way
        with EMFILE."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # can change (prlimit)
        if limit == resource.RLIM_INFINITY:
            return
        budget = limit - FD_RESERVE
        if (self._booked + units > budget
                or self._booked_by.get(pid, 0) + units > budget // 2):
            raise OSError(errno.ENFILE, "too many open handles")

    def of_path(self, rel: str) -> list[Handle]:
        return [h for h in self.handles.values() if h.path == rel]

    def other_writers_of(self, handle: Handle) -> int:
        """The opener's other write handles on this handle's inode."""
        return sum(1 for fh in self.writers.get(handle.ino, ())
                   if fh != handle.fh and self.handles[fh].caller.pid == handle.caller.pid)

    def own_draft(self, inode: int, pid_of: Callable[[], int]) -> Handle | None:
        """The caller's latest dirty write handle on ``inode``, if any.
        ``pid_of`` (the caller's process) is asked only when there is one."""
        fhs = self.writers.get(inode)
        if not fhs:
            return None
        dirty = [h for h in (self.handles[fh] for fh in fhs)
                 if h.dirty and h.draft is not None and h.error is None]
        if not dirty:
            return None
        pid = pid_of()
        mine = [h for h in dirty if h.caller.pid == pid]
        return mine[-1] if mine else None

    def stat_open(self, inode: int) -> os.stat_result | None:
        """fstat of a descriptor some handle holds on ``inode``."""
        for handle in self.handles.values():
            if handle.ino == inode:
                fd = handle.draft.fd if handle.draft is not None else handle.base_fd
                if fd is not None:
                    return os.fstat(fd)
        return None

    def moved(self, old: str, new: str) -> None:
        """Handles under a renamed path follow it (their drafts' targets too)."""
        for handle in self.handles.values():
            if handle.path == old or handle.path.startswith(old + "/"):
                handle.path = new + handle.path[len(old):]
                if handle.draft is not None:
                    handle.draft.target = handle.path

    # -- shared handles --------------------------------------------------------

    def pins(self, file: FileState) -> bool:
        """A shared handle holds this very state object (keep it in memory)."""
        return any(h.file is file for h in self.shared.values())

    def writing_in_place(self, file: FileState) -> bool:
        """True while ``file`` has uncommitted in-place writes: a fingerprint
        that moved is then our own doing, not a foreign write."""
        return any(h.file is file and h.dirty for h in self.shared.values())

    def open_on(self, file: FileState) -> bool:
        """Any handle of ``file`` open through the mount, of either kind."""
        return (self.pins(file)
                or any(h.path == file.path and not h.meta for h in self.handles.values()))
