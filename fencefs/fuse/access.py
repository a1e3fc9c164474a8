"""Whether the calling user could read or write a path, by its modes.

The kernel checks file modes itself (default_permissions) for everything it
sees: opening, getxattr and setxattr on the file itself. What fencefs adds on
the mount's root (the status of every file, reclaims by identity or by
expired lease) and the listing of rejected writes reach files the kernel
does not check, so they are filtered here the same way: search permission on
every directory above, then the wanted bits on the file. Root may do all.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

READ, WRITE, SEARCH = 4, 2, 1


def groups_of(pid: int, gid: int) -> frozenset[int]:
    """The caller's primary and supplementary groups."""
    groups = {gid}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
                    break
    except OSError:
        pass
    return frozenset(groups)


def allowed(st: os.stat_result, uid: int, gids: frozenset[int], want: int) -> bool:
    if uid == 0:
        return True
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid in gids:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want == want


class Access:
    """The rights of one caller, for one request."""

    def __init__(self, uid: int, gid: int, pid: int,
                 lstat: Callable[[str], os.stat_result]) -> None:
        self.uid = uid
        self.gids = groups_of(pid, gid) if uid != 0 else frozenset()
        self._lstat = lstat
        self._dirs: dict[str, bool] = {}

    @property
    def everything(self) -> bool:
        return self.uid == 0

    def may(self, rel: str, want: int) -> bool:
        """May the caller reach ``rel`` and do ``want`` (READ/WRITE) to it?"""
        if self.everything:
            return True
        parent = rel.rpartition("/")[0]
        if not self._may_enter(parent):
            return False
        try:
            st = self._lstat(rel)
        except OSError:
            return False
        return allowed(st, self.uid, self.gids, want)

    def may_entry(self, st: os.stat_result, want: int) -> bool:
        """May the caller do ``want`` to an entry of a directory it is in?"""
        return allowed(st, self.uid, self.gids, want)

    def _may_enter(self, rel_dir: str) -> bool:
        known = self._dirs.get(rel_dir)
        if known is not None:
            return known
        ok = rel_dir == "" or self._may_enter(rel_dir.rpartition("/")[0])
        if ok:
            try:
                st = self._lstat(rel_dir)
                ok = stat.S_ISDIR(st.st_mode) and allowed(st, self.uid, self.gids, SEARCH)
            except OSError:
                ok = False
        self._dirs[rel_dir] = ok
        return ok
