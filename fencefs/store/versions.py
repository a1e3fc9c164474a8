"""Version history: the content each commit replaced, kept in .fencefs/versions/.

Every commit renames a new inode over the file, so the content it replaces
is a whole, immutable inode. ``keep`` hard-links that inode into
``BACKING/.fencefs/versions/PATH/VERSION`` just before the rename (one
``link(2)``, no copy; a copy only where linking fails). The retained inode
already carries everything a history entry needs: the state attribute
(version, epoch, policy, fingerprint) written when it was committed, and the
commit attribute (identity, pid, time) written with it (``stamp``). So an
entry is complete the moment its link exists, and a crash can leave no
half-made entry: either the link is there, or it is not. An entry whose
name disagrees with the version in its own state attribute (possible only
after a crash between the link and the rename, followed by a foreign write)
is not listed and is dropped by the next trim. A crash between the link and
the rename (or unlink) it precedes leaves an entry that is the live file
itself; the next mount drops it (``unkeep``) when it puts that commit's
draft away or records the path commit as failed.

The tree under ``versions/`` mirrors the paths of the files, so renaming a
directory carries its files' history in one rename. Path components are
escaped only where they would be ambiguous: ``%`` becomes ``%25`` and a
component made of digits only gets its first digit escaped (``2026`` is
named ``%32026``, see ``encode_name``), so a version file (all digits) never
collides with a directory of the history tree.

Retention is applied without scanning every file: ``keep`` notes the path
(``_pending``) and the age of its oldest retained version (a heap), and
``sweep`` trims only the paths noted, and the paths whose oldest version
has aged past the bound.
"""

from __future__ import annotations

import errno
import heapq
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fencefs.history import decode_path, encode_path
from fencefs.store.backing import COMMIT_XATTR, STATE_XATTR, decode_state
from fencefs.store.drafts import copy_content
from fencefs.store.retention import Dropped, Retention

log = logging.getLogger("fencefs.store")

# Where the content to keep is: a (directory descriptor, name) pair that the
# daemon's tree resolved without following a symlink (store/paths.py), or a
# plain path (tests, tools).
# A history location that cannot exist: gone, or deeper than PATH_MAX (a file
# deeper than the history tree can mirror has no history; docs/guide.md).
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG)
_PATH_MAX = 4096


Source = str | tuple[int, str]


def _at(source: Source) -> tuple[str, int | None]:
    if isinstance(source, str):
        return source, None
    return source[1], source[0]


def _exists(source: Source) -> bool:
    name, dir_fd = _at(source)
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return True

VERSIONS = "versions"
_TMP = "%tmp."  # never produced by encode_name: '%' is always followed by hex digits


@dataclass(frozen=True, slots=True)
class Version:
    path: str  # the file's path, relative to the mount
    version: int
    epoch: int
    size: int
    committed: float  # when this content was committed (wall clock)
    kept: float  # when it was replaced and retained (ctime of the link)
    identity: str | None
    pid: int | None
    location: str  # the retained file in the backing directory

    def row(self) -> dict[str, object]:
        return {"version": self.version, "epoch": self.epoch, "size": self.size,
                "committed": self.committed, "kept": self.kept,
                "identity": self.identity, "pid": self.pid}


class VersionStore:
    """The retained versions under ``META/versions/``."""

    def __init__(self, meta: str, policy: Retention) -> None:
        self.dir = os.path.join(meta, VERSIONS)
        self.policy = policy
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._pending: dict[str, int] = {}  # paths with versions kept since their last trim
        self._aging: list[tuple[float, str]] = []  # (oldest kept time, path), a heap
        self._aging_known: set[str] = set()
        self.kept = 0  # versions retained by this daemon
        self.copied = 0  # of which by copy (linking failed)
        self.skipped = 0  # versions not kept for want of room
        self.count = 0  # retained versions known (estimate, see scan)
        self.bytes = 0
        # Called (on the caller's thread) when a path reaches its bound.
        self.on_due: Callable[[], None] = lambda: None

    # -- paths -----------------------------------------------------------------

    def dir_of(self, rel: str) -> str:
        return os.path.join(self.dir, encode_path(rel))

    def location(self, rel: str, version: int) -> str:
        return os.path.join(self.dir_of(rel), str(version))

    # -- keeping (inside a commit's atomic step: cheap, never raises) ----------

    def keep(self, rel: str, source: Source, version: int, now: float,
             size: int | None = None) -> bool:
        """Retain the content at ``source`` (the file's current content,
        about to be replaced or unlinked) as ``version`` of ``rel``.
        Returns whether it was retained. Never raises: history must never
        endanger a commit."""
        if not self.policy.history:
            return False
        dest = self.location(rel, version)
        if len(os.fsencode(dest)) >= _PATH_MAX:
            self.skipped += 1  # deeper than the history tree can mirror
            return False
        try:
            for attempt in range(3):  # a trim may remove an emptied directory meanwhile
                try:
                    name, dir_fd = _at(source)
                    os.link(name, dest, src_dir_fd=dir_fd, follow_symlinks=False)
                    break
                except FileNotFoundError:
                    if attempt == 2 or not _exists(source):
                        return False
                    os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        except FileExistsError:
            # Left by a crash between keep and the rename (the same inode:
            # already kept, not counted again), or a path whose numbering
            # started over: the new one wins.
            done = self._replace(source, dest)
            if done != "replaced":
                return done == "same"
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                # A full disk: the commit goes on without its history (the
                # full disk itself is reported by the commits it refuses).
                self.skipped += 1
                log.info("history: no room to keep %s v%d", rel, version)
                return False
            if e.errno not in (errno.EMLINK, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                               errno.EXDEV, errno.ENOSYS):
                log.warning("history: could not keep %s v%d: %s", rel, version, e)
                return False
            if not self._copy(source, dest):
                return False
            self.copied += 1
        self.kept += 1
        self.count += 1
        if size is None:
            try:
                size = os.lstat(dest).st_size
            except OSError:
                size = 0
        self.bytes += size
        pending = self._pending[rel] = self._pending.get(rel, 0) + 1
        if rel not in self._aging_known:
            self._aging_known.add(rel)
            heapq.heappush(self._aging, (now, rel))
        if pending == max(self.policy.keep_versions, 1):
            # As many new versions as the bound since the last trim: ask for
            # a sweep now rather than at the next upkeep tick. Never a trim
            # here: dropping a version frees its inode, which costs far more
            # than the link (ext4: hundreds of microseconds).
            self.on_due()
        return True

    def unkeep(self, rel: str, source: Source, version: int) -> bool:
        """Drop the entry a crash left between ``keep`` and the rename it
        preceded: an entry named by the live file's own ``version`` and
        holding its very inode is the current content, not a past one.
        Returns whether one was dropped."""
        name, dir_fd = _at(source)
        dest = self.location(rel, version)
        try:
            live = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            kept = os.lstat(dest)
            if (kept.st_ino, kept.st_dev) != (live.st_ino, live.st_dev):
                return False
            os.unlink(dest)
        except OSError:
            return False
        self.count = max(0, self.count - 1)
        return True

    def _replace(self, source: Source, dest: str) -> str:
        name, dir_fd = _at(source)
        try:
            if os.lstat(dest).st_ino == os.stat(name, dir_fd=dir_fd,
                                                follow_symlinks=False).st_ino:
                return "same"
            tmp = self._tmp(dest)
            os.link(name, tmp, src_dir_fd=dir_fd, follow_symlinks=False)
            os.rename(tmp, dest)
            return "replaced"
        except OSError as e:
            log.warning("history: could not replace %s: %s", dest, e)
            return "failed"

    def _copy(self, source: Source, dest: str) -> bool:
        tmp = self._tmp(dest)
        name, dir_fd = _at(source)
        try:
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    copy_content(src, fd)
                    for name in (STATE_XATTR, COMMIT_XATTR):
                        try:
                            os.setxattr(fd, name, os.getxattr(src, name))
                        except OSError:
                            pass
                    st = os.fstat(src)
                    os.fchmod(fd, st.st_mode & 0o7777)
                    if os.geteuid() == 0:
                        os.fchown(fd, st.st_uid, st.st_gid)
                finally:
                    os.close(fd)
            finally:
                os.close(src)
            os.rename(tmp, dest)  # whole, with its metadata, or not at all
            return True
        except OSError as e:
            log.warning("history: could not copy %s into history: %s", name, e)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False

    @staticmethod
    def _tmp(dest: str) -> str:
        return os.path.join(os.path.dirname(dest), f"{_TMP}{os.getpid()}.{os.path.basename(dest)}")

    # -- renames -----------------------------------------------------------------

    def moved(self, old: str, new: str, *, is_dir: bool) -> None:
        """The history of ``old`` (and, for a directory, of everything below
        it) becomes the history of ``new``. Never raises."""
        src, dst = self.dir_of(old), self.dir_of(new)
        try:
            if not os.path.isdir(src):
                return
            if is_dir and not os.path.lexists(dst):
                os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
                os.rename(src, dst)
            else:
                self._merge(src, dst, is_dir)
        except OSError as e:
            log.warning("history: could not move %s to %s: %s", old, new, e)
        self._repath(old, new, is_dir)

    def _merge(self, src: str, dst: str, whole: bool) -> None:
        """Move the versions in ``src`` into ``dst`` (and, if ``whole``, the
        subtrees too); on a clash of numbers the one moved in wins: it is the
        history of the content now at that path."""
        os.makedirs(dst, mode=0o700, exist_ok=True)
        for name in os.listdir(src):
            s, d = os.path.join(src, name), os.path.join(dst, name)
            if name.isdigit():
                os.rename(s, d)
            elif whole and os.path.isdir(s) and not name.startswith(_TMP):
                if os.path.lexists(d):
                    self._merge(s, d, True)
                else:
                    os.rename(s, d)
        try:
            os.rmdir(src)
        except OSError:
            pass  # other history left there (a file rename: the old path's subtree)

    def _repath(self, old: str, new: str, is_dir: bool) -> None:
        def moved(p: str) -> str | None:
            if p == old:
                return new
            if is_dir and p.startswith(old + "/"):
                return new + p[len(old):]
            return None

        for p in [p for p in self._pending if moved(p) is not None]:
            target = moved(p)
            assert target is not None
            self._pending[target] = self._pending.get(target, 0) + self._pending.pop(p)
        # The age heap is not rewritten (that would cost every path): the old
        # paths' entries find nothing when they come up; the new paths are
        # noted as due now, and their first trim finds their real oldest.
        if not is_dir:
            self.note(new, 0.0)
            return
        for top, dirs, files in os.walk(self.dir_of(new)):
            dirs[:] = [d for d in dirs if not d.startswith(_TMP)]
            if any(f.isdigit() for f in files):
                self.note(decode_path(os.path.relpath(top, self.dir)), 0.0)

    # -- reading -----------------------------------------------------------------

    def entries(self, rel: str) -> list[Version]:
        """The retained versions of ``rel``, oldest first."""
        d = self.dir_of(rel)
        try:
            names = os.listdir(d)
        except OSError as e:
            if e.errno not in _ABSENT:
                raise
            return []
        found = []
        for name in names:
            if not name.isdigit():
                continue
            v = self._read(rel, os.path.join(d, name), int(name))
            if v is not None:
                found.append(v)
        found.sort(key=lambda v: v.version)
        return found

    def numbers(self, rel: str) -> list[int]:
        """The version numbers retained for ``rel`` (names only: no reads)."""
        try:
            names = os.listdir(self.dir_of(rel))
        except OSError as e:
            if e.errno not in _ABSENT:
                raise
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def get(self, rel: str, version: int) -> Version | None:
        return self._read(rel, self.location(rel, version), version)

    @staticmethod
    def _read(rel: str, location: str, version: int) -> Version | None:
        try:
            st = os.lstat(location)
            persisted, _ = decode_state(os.getxattr(location, STATE_XATTR,
                                                    follow_symlinks=False))
        except OSError:
            return None
        if persisted.version != version:
            return None  # mislabeled (see the module's docstring): not history
        identity: str | None = None
        pid: int | None = None
        committed = st.st_mtime
        try:
            info = json.loads(os.getxattr(location, COMMIT_XATTR, follow_symlinks=False))
            identity, pid, committed = str(info["id"]), int(info["pid"]), float(info["t"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return Version(rel, version, persisted.epoch, st.st_size, committed, st.st_ctime,
                       identity, pid, location)

    def paths(self) -> Iterator[str]:
        """Every path that has a history directory (a walk: for gc and the
        start-up scan, never for a commit)."""
        for top, dirs, files in os.walk(self.dir):
            dirs[:] = [d for d in dirs if not d.startswith(_TMP)]
            if any(f.isdigit() for f in files):
                yield decode_path(os.path.relpath(top, self.dir))

    # -- retention -----------------------------------------------------------------

    def trim(self, rel: str, now: float, dropped: Dropped, *, dry_run: bool = False,
             validate: bool = True, prune: bool = False) -> float | None:
        """Apply the count and age bounds to one path's history. Returns the
        time its oldest remaining version was kept (None if none is left).
        ``validate`` also reads each entry's state and drops mislabeled ones;
        without it (the trim inside a commit) an entry costs one lstat."""
        d = self.dir_of(rel)
        try:
            names = os.listdir(d)
        except OSError as e:
            if e.errno not in _ABSENT:
                raise
            return None
        entries: list[tuple[int, float, int, str]] = []  # version, kept, size, location
        for name in names:
            loc = os.path.join(d, name)
            if name.startswith(_TMP):  # a copy a crash interrupted
                if not dry_run:
                    _unlink(loc)
                continue
            if not name.isdigit():
                continue
            if not validate:
                try:
                    st = os.lstat(loc)
                except OSError:
                    continue
                entries.append((int(name), st.st_ctime, st.st_size, loc))
                continue
            v = self._read(rel, loc, int(name))
            if v is None:  # mislabeled or unreadable: not history
                try:
                    st = os.lstat(loc)
                except OSError:
                    continue
                if os.path.isfile(loc):
                    dropped.add(st.st_size, rel)
                    if not dry_run:
                        _unlink(loc)
                continue
            entries.append((v.version, v.kept, v.size, loc))
        entries.sort()
        limit = self.policy.keep_versions
        oldest_allowed = now - self.policy.keep_for if self.policy.keep_for > 0 else None
        keep_from = max(0, len(entries) - limit)
        left: list[float] = []
        for i, (_, kept, size, loc) in enumerate(entries):
            if i < keep_from or (oldest_allowed is not None and kept < oldest_allowed):
                dropped.add(size, rel)
                if not dry_run:
                    _unlink(loc)
            else:
                left.append(kept)
        if not left and not dry_run and prune:
            self._prune_dirs(d)
        return min(left) if left else None

    def _prune_dirs(self, d: str) -> None:
        while d != self.dir and d.startswith(self.dir + "/"):
            try:
                os.rmdir(d)
            except OSError:
                return
            d = os.path.dirname(d)

    def due_paths(self, now: float, budget: int = 1000) -> list[tuple[str, bool]]:
        """The paths to trim now, taken off the books: those that got
        versions since their last trim, and those whose oldest version has
        aged past the bound (``True``: re-noted with their new oldest by
        ``settle``). At most ``budget``; the rest wait for the next sweep.
        Runs on the event loop's thread."""
        paths: list[tuple[str, bool]] = []
        for rel in list(self._pending)[:budget]:
            del self._pending[rel]
            paths.append((rel, False))
        if self.policy.keep_for > 0:
            limit = now - self.policy.keep_for
            while self._aging and self._aging[0][0] < limit and len(paths) < budget:
                _, rel = heapq.heappop(self._aging)
                self._aging_known.discard(rel)
                paths.append((rel, True))
        return paths

    def trim_paths(self, paths: list[tuple[str, bool]], now: float
                   ) -> tuple[Dropped, list[tuple[str, float | None]]]:
        """Trim each path (on a worker thread: unlinking frees inodes, which
        is slow); no bookkeeping of this object is touched here."""
        dropped = Dropped("versions")
        oldest = [(rel, self.trim(rel, now, dropped, prune=True)) for rel, aged in paths if aged]
        for rel, aged in paths:
            if not aged:
                self.trim(rel, now, dropped, prune=True)
        return dropped, oldest

    def settle(self, dropped: Dropped, oldest: list[tuple[str, float | None]]) -> None:
        """Back on the event loop's thread: the books after ``trim_paths``."""
        self.count = max(0, self.count - dropped.count)
        self.bytes = max(0, self.bytes - dropped.bytes)
        for rel, when in oldest:
            if when is not None:
                self.note(rel, when)

    def sweep(self, now: float, *, budget: int = 1000) -> Dropped:
        """``due_paths``, ``trim_paths`` and ``settle`` in one go."""
        dropped, oldest = self.trim_paths(self.due_paths(now, budget), now)
        self.settle(dropped, oldest)
        return dropped

    def due(self) -> int:
        """How many paths wait for a trim."""
        return len(self._pending)

    def note(self, rel: str, oldest: float) -> None:
        """The start-up scan found history for ``rel`` kept at ``oldest``."""
        if rel not in self._aging_known:
            self._aging_known.add(rel)
            heapq.heappush(self._aging, (oldest, rel))

    def scan(self) -> tuple[int, int, list[tuple[str, float]]]:
        """Walk the whole history once (at mount, on a worker thread): the
        number and bytes of retained versions, and each path's oldest."""
        count = size = 0
        oldest: list[tuple[str, float]] = []
        for top, dirs, files in os.walk(self.dir):
            dirs[:] = [d for d in dirs if not d.startswith(_TMP)]
            first: float | None = None
            for name in files:
                if not name.isdigit():
                    continue
                try:
                    st = os.lstat(os.path.join(top, name))
                except OSError:
                    continue
                count += 1
                size += st.st_size
                first = st.st_ctime if first is None else min(first, st.st_ctime)
            if first is not None:
                oldest.append((decode_path(os.path.relpath(top, self.dir)), first))
        return count, size, oldest

    def gc(self, now: float, *, dry_run: bool = False) -> Dropped:
        """Apply the bounds to every path now (``fencefs gc``): a walk."""
        dropped = Dropped("versions")
        for rel in list(self.paths()):
            self.trim(rel, now, dropped, dry_run=dry_run, prune=True)
        return dropped


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("history: could not drop %s: %s", path, e)
