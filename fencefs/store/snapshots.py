"""Snapshots: a consistent cut of the tree, as hard links (G8).

A commit never writes into a committed inode: it renames a new one over the
path. So a hard link to every committed inode, all made in one synchronous
step between two commits, is a cut that stays what it was: each file at the
version it had at that instant, no transaction half inside. No byte is
copied (except for ``shared``-policy files, which are written in place and
so are copied, by reflink where the filesystem can).

Layout in the backing directory: the tree under
``.fencefs/snapshots/NAME/``, built under ``.fencefs/snapshots/.tmp-NAME``
and renamed into place, and a manifest ``.fencefs/snapshot-meta/NAME.json``
(creation time, the directory it covers, counts, and each file's version and
epoch at the cut). A crash while building leaves only the ``.tmp-`` tree,
which ``recover`` deletes. Metadata changes made in place after the cut
(``chmod``, ``touch``, a reclaim's new epoch in the state attribute) show in
the snapshot's links too; contents and versions never do.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fencefs.core.errors import BadValue
from fencefs.store.backing import META_DIR, STATE_XATTR, Backing, decode_state
from fencefs.store.drafts import copy_content

_TMP = ".tmp-"
MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    name: str
    created: float
    under: str  # the directory it covers, relative to the root ("" = all)
    files: int
    bytes: int
    seconds: float  # how long the cut held the daemon

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "created": self.created, "under": self.under,
                "files": self.files, "bytes": self.bytes, "seconds": self.seconds}


@dataclass(frozen=True, slots=True)
class Cut:
    """A snapshot's tree, linked; its manifest not yet written."""

    name: str
    under: str
    files: list[str]
    seconds: float


def check_name(name: str) -> str:
    """A snapshot name is one path component: no '/', not '.' or '..', not
    hidden, printable, at most 200 bytes. Raises ``BadValue``."""
    if not name or "/" in name or "\0" in name or name in (".", "..") or name.startswith("."):
        raise BadValue(f"bad snapshot name {name!r}: one name, no '/', not '.', '..' "
                       f"or starting with '.'")
    if ".." in name:
        raise BadValue(f"bad snapshot name {name!r}: no '..'")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME or not name.isprintable():
        raise BadValue(f"bad snapshot name {name!r}: printable, at most {MAX_NAME} bytes")
    return name


def check_under(rel: str) -> str:
    """A directory to cut, relative to the root; '' for everything."""
    rel = rel.strip("/")
    parts = [p for p in rel.split("/") if p not in ("", ".")] if rel else []
    if any(p == ".." for p in parts):
        raise BadValue(f"bad path {rel!r}: '..' leaves the mount")
    if parts and parts[0] == META_DIR:
        raise BadValue(f"bad path {rel!r}: {META_DIR}/ is fencefs's own")
    return "/".join(parts)


class Snapshots:
    def __init__(self, backing: Backing) -> None:
        self.backing = backing
        self.dir = os.path.join(backing.meta, "snapshots")
        self.meta_dir = os.path.join(backing.meta, "snapshot-meta")
        for d in (self.dir, self.meta_dir):
            os.makedirs(d, mode=0o755, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path(name)) or os.path.exists(self._meta(name))

    def _meta(self, name: str) -> str:
        return os.path.join(self.meta_dir, name + ".json")

    def create(self, name: str, under: str = "", *,
               copy_instead: Callable[[str], bool] = lambda rel: False,
               durable: bool = True, now: float | None = None) -> SnapshotInfo:
        """``cut`` then ``finish``."""
        return self.finish(self.cut(name, under, copy_instead=copy_instead),
                           durable=durable, now=now)

    def cut(self, name: str, under: str = "", *,
            copy_instead: Callable[[str], bool] = lambda rel: False) -> Cut:
        """Cut the tree (or the directory ``under``) as snapshot ``name``.

        The walk and the links run in this one call, with no other commit
        able to land meanwhile when the caller makes it one step (the daemon
        calls it with no await around it); ``finish`` (the manifest) may run
        later, anywhere. Raises ``BadValue`` for a bad
        name or path, ``FileExistsError`` if the snapshot exists,
        ``NotADirectoryError``/``FileNotFoundError`` for a bad ``under``;
        then nothing was created.
        """
        check_name(name)
        under = check_under(under)
        if self.exists(name):
            raise FileExistsError(errno.EEXIST, f"snapshot {name!r} exists")
        st = self.backing.lstat(under)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, f"{under!r} is not a directory")
        # Walked through descriptors (a directory swapped for a symlink
        # during the walk is not followed out of the backing directory).
        src_root = self.backing.tree.open(under, os.O_RDONLY | os.O_DIRECTORY)
        tmp = os.path.join(self.dir, _TMP + name)
        shutil.rmtree(tmp, ignore_errors=True)
        start = time.monotonic()
        os.mkdir(tmp, 0o755)
        files: list[str] = []
        try:
            self._cut(src_root, under, tmp, files, copy_instead)
            os.rename(tmp, self.path(name))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(src_root)
        return Cut(name, under, files, time.monotonic() - start)

    def finish(self, cut: Cut, *, durable: bool = True, now: float | None = None
               ) -> SnapshotInfo:
        """Write the manifest of a cut: reads the snapshot's own links, so it
        needs no step of its own."""
        name = cut.name
        versions, total = self._versions(name, cut.files)
        info = SnapshotInfo(name, time.time() if now is None else now, cut.under,
                            len(cut.files), total, cut.seconds)
        manifest = {**info.to_json(), "versions": versions}
        with open(self._meta(name) + ".tmp", "w") as f:
            json.dump(manifest, f, separators=(",", ":"))
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.rename(self._meta(name) + ".tmp", self._meta(name))
        if durable:
            self.backing.sync_dir(os.path.relpath(self.dir, self.backing.root))
            self.backing.sync_dir(os.path.relpath(self.meta_dir, self.backing.root))
        return info

    def _cut(self, src_root: int, under: str, dst_root: str, files: list[str],
             copy_instead: Callable[[str], bool]) -> None:
        """Directories made, regular files linked (copied where asked),
        symlinks recreated; nothing else is read (versions and sizes are
        read from the links afterwards, outside the step). ``src_root`` is a
        descriptor of the directory cut; each directory below is opened
        from its parent's descriptor with O_NOFOLLOW."""
        stack = [("", os.dup(src_root), dst_root)]
        try:
            self._walk(stack, under, files, copy_instead)
        finally:
            for _, fd, _ in stack:  # left by an error half-way
                os.close(fd)

    def _walk(self, stack: list[tuple[str, int, str]], under: str, files: list[str],
              copy_instead: Callable[[str], bool]) -> None:
        while stack:
            rel, src, dst = stack.pop()
            try:
                with os.scandir(src) as it:
                    entries = list(it)
                for e in entries:
                    sub = f"{rel}/{e.name}" if rel else e.name
                    full = f"{under}/{sub}" if under else sub
                    if full in (META_DIR, ".fencefs-xattr-probe"):
                        continue
                    target = os.path.join(dst, e.name)
                    if e.is_dir(follow_symlinks=False):
                        _mkdir_like(target, e.stat(follow_symlinks=False))
                        child = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                        | os.O_CLOEXEC, dir_fd=src)
                        stack.append((sub, child, target))
                    elif e.is_file(follow_symlinks=False):
                        if copy_instead(full):
                            _copy(src, e.name, target)
                        else:
                            os.link(e.name, target, src_dir_fd=src, follow_symlinks=False)
                        files.append(sub)
                    elif e.is_symlink():
                        os.symlink(os.readlink(e.name, dir_fd=src), target)
            finally:
                os.close(src)

    def _versions(self, name: str, files: list[str]) -> tuple[dict[str, list[int]], int]:
        """Each linked file's (version, epoch) and the total size, read from
        the snapshot's own links (the inodes of the cut)."""
        versions: dict[str, list[int]] = {}
        total = 0
        root = self.path(name)
        for sub in files:
            path = os.path.join(root, sub)
            try:
                persisted, _ = decode_state(
                    os.getxattr(path, STATE_XATTR, follow_symlinks=False))
                versions[sub] = [persisted.version, persisted.epoch]
            except OSError:
                versions[sub] = [0, 0]
            try:
                total += os.lstat(path).st_size
            except OSError:
                pass
        return versions, total

    def list(self) -> list[SnapshotInfo]:
        out = []
        for entry in sorted(os.listdir(self.meta_dir)):
            if not entry.endswith(".json"):
                continue
            try:
                out.append(self._info(self._load(entry[:-5])))
            except (OSError, ValueError, KeyError):
                continue
        return out

    def _load(self, name: str) -> dict[str, Any]:
        with open(self._meta(name)) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(name)
        return data

    @staticmethod
    def _info(d: dict[str, Any]) -> SnapshotInfo:
        return SnapshotInfo(str(d["name"]), float(d["created"]), str(d["under"]),
                            int(d["files"]), int(d["bytes"]), float(d.get("seconds", 0.0)))

    def show(self, name: str) -> tuple[SnapshotInfo, dict[str, tuple[int, int]]]:
        """The snapshot's record and each file's (version, epoch) at the cut."""
        check_name(name)
        try:
            data = self._load(name)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, f"no snapshot {name!r}") from None
        versions = {str(k): (int(v[0]), int(v[1])) for k, v in data.get("versions", {}).items()}
        return self._info(data), versions

    def delete(self, name: str) -> None:
        check_name(name)
        if not self.exists(name):
            raise FileNotFoundError(errno.ENOENT, f"no snapshot {name!r}")
        # The manifest goes first: a crash halfway leaves a tree with no
        # manifest, which recover deletes.
        try:
            os.unlink(self._meta(name))
        except FileNotFoundError:
            pass
        shutil.rmtree(self.path(name), ignore_errors=True)

    def over_bounds(self, keep: int, keep_for: float, now: float) -> builtins.list[SnapshotInfo]:
        """The snapshots the retention bounds drop: past the newest ``keep``,
        and (``keep_for`` > 0) those created more than ``keep_for`` ago."""
        snaps = sorted(self.list(), key=lambda s: (s.created, s.name))
        extra = max(0, len(snaps) - keep)
        return [s for n, s in enumerate(snaps)
                if n < extra or (keep_for > 0 and s.created < now - keep_for)]

    def recover(self) -> int:
        """Delete half-built snapshots (``.tmp-`` trees, trees without a
        manifest) left by a crash; returns how many."""
        count = 0
        for entry in os.listdir(self.dir):
            orphan = entry.startswith(_TMP) or not os.path.exists(self._meta(entry))
            if orphan:
                shutil.rmtree(os.path.join(self.dir, entry), ignore_errors=True)
                count += 1
        for entry in os.listdir(self.meta_dir):
            if entry.endswith(".tmp"):
                os.unlink(os.path.join(self.meta_dir, entry))
        return count


def _mkdir_like(path: str, st: os.stat_result) -> None:
    """A directory of the snapshot keeps the mode (and, as root, the owner)
    of the one it mirrors: nobody lists through a snapshot what they could
    not list in the tree."""
    os.mkdir(path, 0o700)
    if os.geteuid() == 0:
        os.chown(path, st.st_uid, st.st_gid)
    os.chmod(path, stat.S_IMODE(st.st_mode))


def _copy(src_dir: int, name: str, dst: str) -> None:
    sfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            copy_content(sfd, dfd)
            os.fchmod(dfd, os.fstat(sfd).st_mode & 0o7777)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
