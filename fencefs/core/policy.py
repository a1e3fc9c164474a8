"""Which policy a file has: its own, else the mount's globs, else the default.

Pure: names in, a policy name out. A file's own policy is the one set with
``setfattr -n user.fencefs.policy`` and persisted with it; the globs are given
at mount (``--shared-glob``, plus the default set below unless
``--no-default-shared-globs``) and are matched against the path each time,
so a file created under a glob has the glob's policy, and a file renamed
out of (or into) a glob's reach loses (or gets) it unless it has its own.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from fencefs.core.model import SHARED

# SQLite's files: the database and its rollback journal, write-ahead log and
# shared-memory index (the -shm file is mapped MAP_SHARED by every
# connection). Databases coordinate their writers with their own locks, so
# their files are written in place (docs/guide.md, "The shared policy").
#
# git's incoming pack (``git clone``/``fetch`` from a remote): index-pack
# writes ``objects/pack/tmp_pack_XXXXXX`` and, before closing it, its worker
# threads open it again by name to read it back. A fenced file shows other
# descriptors its last committed content (empty), so the clone would die with
# "premature end of pack file". The file is git's private temporary, renamed
# to its final name (out of the glob's reach) once closed.
DEFAULT_SHARED_GLOBS: tuple[str, ...] = tuple(
    f"*.{ext}{suffix}"
    for ext in ("db", "sqlite", "sqlite3")
    for suffix in ("", "-wal", "-shm", "-journal")
) + ("tmp_pack_*",)


_REMEMBERED = 65_536


def glob_matches(pattern: str, path: str) -> bool:
    """A pattern without '/' matches the file's name in any directory; one
    with '/' matches the whole path from the mount's root (``*`` then also
    matches '/'). Case-sensitive, shell-style (``*``, ``?``, ``[...]``)."""
    if "/" in pattern:
        return fnmatch.fnmatchcase(path, pattern.lstrip("/"))
    return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)


class PolicyRules:
    """The mount's rules for files that have no policy of their own."""

    def __init__(self, default: str, shared_globs: Iterable[str] = ()) -> None:
        self.default = default
        self.shared_globs = tuple(shared_globs)
        # Asked at every open: the answer for a path never changes (the
        # globs are fixed at mount), so it is remembered, for a bounded
        # number of paths.
        self._answers: dict[str, str] = {}

    def by_path(self, path: str) -> str:
        """The policy a file at ``path`` gets when it has none of its own."""
        answer = self._answers.get(path)
        if answer is None:
            if any(glob_matches(p, path) for p in self.shared_globs):
                answer = SHARED
            else:
                answer = self.default
            if len(self._answers) >= _REMEMBERED:
                self._answers.clear()
            self._answers[path] = answer
        return answer

    def effective(self, path: str, own: str | None) -> str:
        return own or self.by_path(path)
