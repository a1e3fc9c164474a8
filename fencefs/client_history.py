"""History and restore for Python programs (and the command line).

Built on the wire in ``fencefs.history``: plain file I/O and extended
attributes on the mount, no daemon layers. Errors are typed as in
``fencefs.client``: ``FenceConflict`` (a commit landed since the state the
restore rests on: retryable), ``Fenced``, and ``NoSuchVersion``.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from fencefs.client import FenceConflict, Fenced
from fencefs.history import (
    GC,
    HISTORY,
    META,
    PREFIX,
    RESTORE_FROM,
    STATS,
    VERSIONS_VIEW,
    encode_path,
    encode_restore_from,
)


class NoSuchVersion(FileNotFoundError):
    """The file has no retained version with that number (``ENOENT``)."""

    def __init__(self, path: str, version: int, kept: list[int]) -> None:
        shown = ", ".join(str(v) for v in kept[-10:]) or "none"
        super().__init__(_errno.ENOENT, f"{path} has no retained version {version} "
                                        f"(retained: {shown})")
        self.filename = path
        self.version = version
        self.kept = kept


class NotOnMount(ValueError):
    """The path is not inside a fencefs mount."""


# -- locating a path on a mount ------------------------------------------------------


def _mounts() -> list[str]:
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) >= 5 and right.split()[:1] == ["fuse.fencefs"]:
                    found.append(fields[4].replace("\\040", " ").replace("\\011", "\t")
                                 .replace("\\012", "\n").replace("\\134", "\\"))
    except OSError:
        pass
    return found


def locate(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(mount root, path relative to it) of a file on a fencefs mount; the
    file need not exist (a deleted file's history)."""
    p = os.fspath(path)
    full = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(p))),
                        os.path.basename(p))
    best = ""
    for mnt in _mounts():
        if (full.startswith(mnt.rstrip("/") + "/") or full == mnt) and len(mnt) > len(best):
            best = mnt
    if not best:
        raise NotOnMount(f"{p} is not on a fencefs mount")
    rel = os.path.relpath(full, best)
    if rel == "." or rel.split("/")[0] == META:
        raise NotOnMount(f"{p} is not a file of the mount")
    return best, rel


def view_of(root: str, rel: str) -> str:
    """The read-only history directory of ``rel`` on the mount."""
    return os.path.join(root, VERSIONS_VIEW, encode_path(rel))


# -- client functions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: int
    epoch: int
    size: int
    committed: float
    kept: float
    identity: str | None
    pid: int | None
    location: str  # readable path on the mount

    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.location, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()


@dataclass(frozen=True, slots=True)
class History:
    path: str
    version: int | None  # the file's current version (None: never seen)
    epoch: int | None
    exists: bool
    versions: tuple[VersionInfo, ...]


def history(path: str | os.PathLike[str]) -> History:
    """The retained versions of a file on a mount (also of a deleted one)."""
    root, rel = locate(path)
    view = view_of(root, rel)
    try:
        raw = os.getxattr(view, HISTORY)
    except FileNotFoundError:
        raw = None
    except OSError as e:
        if e.errno in (_errno.ENODATA, _errno.ENOTSUP):
            raise NotOnMount(f"{os.fspath(path)}: the mount has no history "
                             f"(an older fencefs?)") from None
        raise
    if raw is None:  # no history directory: no version kept, maybe a live file
        cur = _current_of(os.path.join(root, rel))
        return History(rel, cur[0], cur[1], cur[0] is not None, ())
    d = json.loads(raw)
    current = d.get("current") or {}
    versions = tuple(
        VersionInfo(int(v["version"]), int(v["epoch"]), int(v["size"]),
                    float(v["committed"]), float(v["kept"]), v.get("identity"),
                    v.get("pid"), os.path.join(view, str(v["version"])))
        for v in d.get("versions", []))
    return History(rel, current.get("version"), current.get("epoch"),
                   bool(current.get("exists")), versions)


def _current_of(full: str) -> tuple[int | None, int | None]:
    try:
        return (int(os.getxattr(full, PREFIX + "version")),
                int(os.getxattr(full, PREFIX + "epoch")))
    except OSError:
        return None, None


def restore(path: str | os.PathLike[str], version: int, *, retry: bool = False,
            attempts: int = 20) -> int:
    """Make ``version``'s bytes the next version of ``path`` (also of a
    deleted one), by an ordinary fenced commit resting on the state read
    here: a commit landing in between raises ``FenceConflict`` (with
    ``retry``, the state is read again and the restore tried again, up to
    ``attempts`` times); a reclaim raises ``Fenced``; ``NoSuchVersion`` if
    no such version is retained; ``IsADirectoryError`` for a directory.
    Returns the new version.

    The steps: read the file's state and history; open the file for
    writing and check, through the descriptor, that the handle rests on
    that state (else nothing was written: a conflict); mark the handle as
    restoring (``user.fencefs.restore-from``: the journal's commit line says
    ``restored_from``); write the version's bytes; ``fsync`` commits."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise IsADirectoryError(_errno.EISDIR, "a directory has no versions", p)
    for attempt in range(max(1, attempts)):
        try:
            return _restore_once(p, version)
        except FenceConflict:
            if not retry or attempt + 1 >= attempts:
                raise
            time.sleep(random.uniform(0, 0.01 * (attempt + 1)))
    raise AssertionError("unreachable")


def _restore_once(p: str, version: int) -> int:
    h = history(p)
    kept = [v.version for v in h.versions]
    if version not in kept:
        raise NoSuchVersion(p, version, kept)
    source = next(v.location for v in h.versions if v.version == version)
    try:
        src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # dropped by retention since
        raise NoSuchVersion(p, version, kept) from None
    rested = (h.version, h.epoch)

    def refusal(e: OSError) -> BaseException:
        cls = {_errno.EAGAIN: FenceConflict, _errno.ESTALE: Fenced}.get(e.errno or 0)
        if cls is None:
            return e
        cur = _current_of(p)
        return cls(p, rested_version=rested[0], rested_epoch=rested[1],
                   current_version=cur[0], current_epoch=cur[1])

    try:
        flags = os.O_RDWR | os.O_CLOEXEC | (0 if h.exists else os.O_CREAT)
        try:
            fd = os.open(p, flags, os.fstat(src).st_mode & 0o7777)
        except OSError as e:
            raise refusal(e) from None
        try:
            now = (int(os.getxattr(fd, PREFIX + "version")),
                   int(os.getxattr(fd, PREFIX + "epoch")))
            if h.version is not None and now != rested:
                cls = Fenced if h.epoch is not None and now[1] != h.epoch else FenceConflict
                raise cls(p, rested_version=rested[0], rested_epoch=rested[1],
                          current_version=now[0], current_epoch=now[1])
            os.setxattr(fd, RESTORE_FROM, encode_restore_from(version))
            try:
                os.ftruncate(fd, 0)
                offset = 0
                while chunk := os.pread(src, 1 << 20, offset):
                    view = memoryview(chunk)
                    while view:
                        n = os.pwrite(fd, view, offset)
                        offset += n
                        view = view[n:]
                os.fsync(fd)  # the commit
            except OSError as e:
                raise refusal(e) from None
        finally:
            try:
                os.close(fd)
            except OSError:
                pass  # the fsync already answered for the commit
    finally:
        os.close(src)
    return now[0] + 1


def stats(mountpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The metrics snapshot of a mount (``fencefs.metrics.Metrics.snapshot``)."""
    result: dict[str, Any] = json.loads(os.getxattr(os.fspath(mountpoint), STATS))
    return result


def gc(mountpoint: str | os.PathLike[str], *, dry_run: bool = False) -> dict[str, Any]:
    """Apply the retention bounds now; what was (or, dry, would be) removed."""
    m = os.fspath(mountpoint)
    os.setxattr(m, GC, b"dry-run" if dry_run else b"1")
    result: dict[str, Any] = json.loads(os.getxattr(m, GC))
    return result
