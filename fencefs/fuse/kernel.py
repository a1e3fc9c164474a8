"""What the kernel caches of the mount, and telling it when that goes stale.

Attributes and entries are cached for a second; every change made through
the mount drops the cached attributes of the inode at once
(``content_changed``), and a name that appears or goes away behind the
kernel's back drops its cached entry (``entry_changed``). A file with an
open write handle is never cached: a writer sees its own draft's size.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

import pyfuse3

from fencefs.engine.handles import HandleTable
from fencefs.fuse import paths
from fencefs.fuse.inodes import InodeTable

# The kernel may answer stat() from its cache for this long. Every content
# change made through the mount invalidates the inode's attributes at once
# (``content_changed``); only a write made straight into the backing
# directory can stay unseen by stat() for up to this long (open() always asks).
ATTR_TIMEOUT = 1.0
ENTRY_TIMEOUT = 1.0


class KernelView:
    def __init__(self, inodes: InodeTable, handles: HandleTable) -> None:
        self.inodes = inodes
        self.handles = handles
        # Owner, group and mode a history-tree directory shows (the path it
        # mirrors: fuse/attributes.py); set once the attributes exist.
        self.history_dir_owner: Callable[[str], tuple[int, int, int]] = \
            lambda rel: (0, 0, stat.S_IFDIR | 0o700)

    def attrs(self, ino: int, st: os.stat_result, rel: str | None = None
               ) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                     "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(a, name, getattr(st, name))
        if rel is not None and rel in paths.META_OPEN_DIRS:
            # Everyone may look in (read-only): what is inside keeps the modes
            # of the files it came from, and listings are filtered (opendir).
            a.st_mode = stat.S_IFDIR | 0o755
        elif rel is not None and stat.S_ISDIR(st.st_mode) and paths.in_versions(rel):
            # A directory of the history tree guards like the path it mirrors.
            a.st_uid, a.st_gid, a.st_mode = self.history_dir_owner(rel)
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = ENTRY_TIMEOUT
        # While a write handle is open the answer depends on who asks (a
        # writer sees its own draft's size, see getattr): nothing is cached.
        # Otherwise a draft's size never sticks in the kernel's cache: a
        # direct write or an O_TRUNC open makes the kernel drop the size it
        # holds and ask getattr, which answers with the committed file.
        a.attr_timeout = 0 if ino in self.handles.writers else ATTR_TIMEOUT
        return a

    def content_changed(self, path: str, ino: int | None = None) -> None:
        """A commit or a foreign write changed ``path``: the kernel must not
        answer stat() from the attributes it cached. (Cached pages need no
        invalidation: every handle of a fenced file is direct_io, and the
        kernel drops the page cache whenever such a file is mmapped.)"""
        ino = self.inodes.ino_of(path) if ino is None else ino
        if ino is None:
            return
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError:
            pass  # the kernel no longer knows it: nothing cached

    def entry_changed(self, path: str) -> None:
        """A name appeared or went away without a request of the kernel's
        own: drop the entry (positive or negative) it may hold for it. The
        async variant: this runs inside a handler (see style notes)."""
        parent = self.inodes.ino_of(os.path.dirname(path))
        if parent is not None:
            pyfuse3.invalidate_entry_async(parent, os.fsencode(os.path.basename(path)),
                                           ignore_enoent=True)
