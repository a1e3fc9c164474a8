"""Directory handles: listings taken at opendir, replied in pieces.

A listing is the directory's names at ``opendir``, sorted, so readdir
offsets (indexes into it) are stable; attributes are read when each entry
is replied, not before (the kernel caches them). ``rejected/`` and the
history tree list only what the caller may read (security.md).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

import pyfuse3

from fencefs.engine.handles import HandleTable
from fencefs.engine.journaling import Journaling
from fencefs.fuse import paths
from fencefs.fuse.access import READ, Access
from fencefs.fuse.attributes import ControlAttributes
from fencefs.fuse.inodes import InodeTable
from fencefs.store.backing import Backing

Attrs = Callable[[int, os.stat_result, str | None], pyfuse3.EntryAttributes]


class Directories:
    def __init__(self, backing: Backing, inodes: InodeTable, handles: HandleTable,
                 attributes: ControlAttributes, journaling: Journaling, attrs: Attrs) -> None:
        self.backing = backing
        self.inodes = inodes
        self.handles = handles
        self.attributes = attributes
        self.journaling = journaling
        self.attrs = attrs
        # Open directory handles: the directory's inode and a sorted snapshot.
        self._open: dict[int, tuple[int, list[str]]] = {}

    def open(self, inode: int, access_of: Callable[[], Access]) -> int:
        rel = self.inodes.path(inode)
        names = []
        # Rejected writes and retained versions are listed only to those who
        # may read them; the history tree's directories name files, shown
        # only to those who may read the directory they are in.
        history = paths.in_versions(rel)
        access = access_of() if rel == paths.REJECTED_DIR or history else None
        for entry, st in self.backing.tree.listdir(rel, stats=access is not None):
            child = f"{rel}/{entry}" if rel else entry
            if paths.is_hidden(child):
                continue
            if access is not None:
                if st is None:
                    continue  # gone since listed
                if history and stat.S_ISDIR(st.st_mode):
                    if not self.attributes.may_see_history(access, child):
                        continue
                elif not access.may_entry(st, READ):
                    continue
            names.append(entry)
        names.sort()
        fh = self.handles.next_fh()
        self._open[fh] = (inode, names)
        return fh

    def read(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        inode, names = self._open[fh]
        base = self.inodes.path(inode)
        # Offsets are indexes into the names listed at opendir: stable. The
        # attributes are read now, not at opendir: the kernel caches them.
        for index in range(start_id, len(names)):
            name = names[index]
            rel = f"{base}/{name}" if base else name
            try:
                st = self.backing.lstat(rel)
            except FileNotFoundError:
                continue  # gone since opendir
            node = self.inodes.remember(inode, name)
            if not pyfuse3.readdir_reply(token, os.fsencode(name),
                                         self.attrs(node.ino, st, rel), index + 1):
                self.inodes.forget(node.ino, 1)
                break

    def release(self, fh: int) -> None:
        self._open.pop(fh, None)

    async def fsync(self, fh: int) -> None:
        inode, _ = self._open[fh]
        # off the event loop, with every namespace change still pending
        await self.journaling.durable_dir(self.inodes.path(inode))
