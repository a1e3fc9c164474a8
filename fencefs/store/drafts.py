"""Drafts: the private copy-on-write content of a write handle.

A draft lives in ``.fencefs/drafts/`` of the backing directory (the same
filesystem as the files, so installing it is one atomic rename). It carries
the target path in an attribute, so that drafts orphaned by a crash can be
put away as abandoned writes at the next mount. A rejected draft is renamed
into ``.fencefs/rejected/`` under a name that tells file, time, reason and
identity.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import stat
import time
from dataclasses import dataclass

from fencefs.core.model import Persisted
from fencefs.store.backing import STATE_XATTR, Backing, Fingerprint, encode_state, stamp
from fencefs.store.retention import RejectedIndex
from fencefs.store.trash import Trash

log = logging.getLogger("fencefs.store")

DRAFT_XATTR = "user.fencefs.draft"
FICLONE = 0x40049409
_MAX_NAME = 255
_MAX_LABEL = 1024


@dataclass(slots=True)
class Draft:
    path: str
    fd: int
    target: str
    identity: str = "?"
    pid: int = 0

    @property
    def name(self) -> str:
        """Its file name in drafts/: journaled with the commit it is for."""
        return os.path.basename(self.path)


class Drafts:
    def __init__(self, backing: Backing) -> None:
        self.backing = backing
        self.dir = os.path.join(backing.meta, "drafts")
        self.rejected_dir = os.path.join(backing.meta, "rejected")
        self._seq = itertools.count(1)
        # Across hosts (--etcd) drafts/ is shared: names start with a prefix
        # of this host's, so that names never collide and a restarted host
        # recovers only its own drafts.
        self.prefix = ""
        for d in (backing.meta, self.dir, self.rejected_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        # installs rename from here onto a path the tree resolves
        self.dir_fd = os.open(self.dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.trash = Trash(backing.tree, os.path.join(backing.meta, "trash"))
        # Every rejected write, oldest first, for retention (store/retention.py).
        self.rejected = RejectedIndex(self.rejected_dir)

    # -- making drafts -----------------------------------------------------

    def create(self, target: str, identity: str, pid: int, source_fd: int | None) -> Draft:
        """A new draft for ``target``: empty, or a copy of ``source_fd``."""
        path = os.path.join(self.dir, f"{self.prefix}{os.getpid()}-{next(self._seq)}.draft")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.setxattr(fd, DRAFT_XATTR, draft_label(target, identity, pid))
            if source_fd is not None:
                copy_content(source_fd, fd)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return Draft(path, fd, target, identity, pid)

    # -- committing --------------------------------------------------------

    def prepare(self, draft: Draft, persisted: Persisted, *, durable: bool) -> None:
        """Give the draft the target's metadata and the state it commits as.

        Runs before the commit's check: the state written here is the one the
        commit will install if the check passes (version = base + 1).
        """
        _copy_metadata(self.backing, draft.target, draft.fd)
        fp = Fingerprint.of(os.fstat(draft.fd))
        os.setxattr(draft.fd, STATE_XATTR, encode_state(persisted, fp))
        # Who committed it and when: read back once this content is history.
        stamp(draft.fd, draft.identity, draft.pid, time.time())
        if durable:
            os.fsync(draft.fd)

    def sync_dir(self) -> None:
        """fsync drafts/ itself: the drafts' names in it reach the disk."""
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def install(self, draft: Draft) -> None:
        """The atomic step: the draft becomes the file's content. (The
        content it replaces is freed by the trash, off the request path.)"""
        self.trash.keep(draft.target)
        self.backing.tree.rename_from(self.dir_fd, draft.name, draft.target)

    def discard(self, draft: Draft) -> None:
        """Close and delete a draft. A draft that cannot be deleted (a store
        gone read-only or failing) stays behind and is put away as abandoned
        at the next mount."""
        close_quietly(draft.fd)
        try:
            os.unlink(draft.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not delete draft %s: %s", draft.path, e)

    # -- rejected writes ---------------------------------------------------

    def reject(self, draft: Draft, identity: str, reason: str) -> str:
        """Keep a refused draft's bytes; returns its name under rejected/."""
        name = rejected_name(draft.target, identity, reason)
        dest = os.path.join(self.rejected_dir, name)
        try:
            _copy_access(self.backing, draft.target, draft.fd)
            os.removexattr(draft.fd, DRAFT_XATTR)
        except OSError:
            pass
        os.rename(draft.path, dest)
        self._rejected(name, draft.fd)
        close_quietly(draft.fd)
        return name

    def _rejected(self, name: str, fd: int | None) -> None:
        try:
            size = os.fstat(fd).st_size if fd is not None else \
                os.lstat(os.path.join(self.rejected_dir, name)).st_size
        except OSError:
            size = 0
        self.rejected.add(name, size)

    def orphans(self) -> list[tuple[str, dict[str, object]]]:
        """Drafts left behind by a daemon that died."""
        found = []
        for name in sorted(os.listdir(self.dir)):
            if not name.startswith(self.prefix):
                continue  # another host's (--etcd): not ours to recover
            path = os.path.join(self.dir, name)
            try:
                meta = json.loads(os.getxattr(path, DRAFT_XATTR))
            except (OSError, ValueError):
                meta = {"path": "?", "identity": "?", "pid": 0}
            found.append((path, meta))
        return found

    def put_away(self, path: str, target: str, identity: str, reason: str) -> str:
        name = rejected_name(target, identity, reason)
        try:  # readable by those who may read the file it was meant for
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                _copy_access(self.backing, target, fd)
            finally:
                os.close(fd)
        except OSError:
            pass  # the file is gone: the draft stays private (0600, the daemon's)
        os.rename(path, os.path.join(self.rejected_dir, name))
        self._rejected(name, None)
        return name


def draft_label(target: str, identity: str, pid: int) -> bytes:
    """What a draft says of itself, for the recovery of an orphan: its
    target, who wrote it. An attribute value has a few KiB at most (ext4:
    one block for all of a file's attributes), and a path can be longer
    than PATH_MAX: a long target is cut, and marked cut with ``//`` (no
    path has it, so an orphan of a cut target is never taken for a file
    and stays private, mode 0600)."""
    if len(target.encode("utf-8", "surrogateescape")) > _MAX_LABEL:
        target = target.encode("utf-8", "surrogateescape")[:_MAX_LABEL].decode(
            "utf-8", "ignore") + "//(cut)"
    return json.dumps({"path": target, "identity": identity[:256], "pid": pid}).encode()


def rejected_name(target: str, identity: str, reason: str) -> str:
    now = time.time_ns()  # one reading: names sort in the order they were made
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 1_000_000_000))
    micros = f"{now // 1000 % 1_000_000:06d}"
    who = _safe(identity)[:64]
    where = _safe(target.replace("/", "%2F"))
    name = f"{stamp}.{micros}Z.{reason}.{who}.{where}"
    if len(name.encode()) > _MAX_NAME:
        digest = hashlib.sha1(target.encode("utf-8", "surrogateescape")).hexdigest()[:10]
        keep = _MAX_NAME - len(f"{stamp}.{micros}Z.{reason}.{who}..{digest}".encode()) - 8
        name = f"{stamp}.{micros}Z.{reason}.{who}.{where[: max(keep, 0) // 4]}.{digest}"
    return name


def _safe(text: str) -> str:
    out = []
    for ch in text:
        if ch.isalnum() or ch in "-_.:%@+=":
            out.append(ch)
        else:
            out.append("%%%02X" % (ord(ch) & 0xFF))
    return "".join(out)


def copy_content(src_fd: int, dst_fd: int) -> None:
    """Copy a whole file: reflink where the filesystem can, else in-kernel.

    Only the data extents are copied (SEEK_DATA/SEEK_HOLE): a sparse file's
    holes stay holes in the draft instead of becoming zeros on disk.
    """
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return
    except OSError:
        pass
    size = os.fstat(src_fd).st_size
    for start, end in _data_extents(src_fd, size):
        _copy_range(src_fd, dst_fd, start, end)
    os.ftruncate(dst_fd, size)  # a trailing hole


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    extents = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # nothing but a hole from here on
                break
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no hole support
                return [(0, size)]
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end <= start:
            break
        extents.append((start, end))
        offset = end
    return extents


def _copy_range(src_fd: int, dst_fd: int, offset: int, end: int) -> None:
    while offset < end:
        try:
            n = os.copy_file_range(src_fd, dst_fd, end - offset, offset, offset)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL):
                raise
            n = _copy_fallback(src_fd, dst_fd, offset, end - offset)
        if n == 0:
            break
        offset += n


def _copy_fallback(src: int, dst: int, offset: int, count: int) -> int:
    data = os.pread(src, min(count, 1 << 20), offset)
    os.pwrite(dst, data, offset)
    return len(data)


def _copy_access(backing: Backing, target: str, fd: int) -> None:
    """A rejected write keeps the owner and mode of the file it was meant
    for: whoever could not read that file cannot read its rejected writes."""
    st = backing.lstat(target)
    if os.geteuid() == 0:
        os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, st.st_mode & 0o7777)


def _copy_metadata(backing: Backing, target: str, fd: int) -> None:
    """Mode, owner and user xattrs of the committed file carry over."""
    try:
        st = backing.lstat(target)
    except FileNotFoundError:
        return
    if os.geteuid() == 0:  # first: a chown clears S_ISUID and S_ISGID
        os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, st.st_mode & 0o7777)
    if not stat.S_ISREG(st.st_mode):
        return
    try:
        names = backing.tree.listxattr(target)
    except OSError:
        return
    for name in names:
        # fencefs's own attributes (state, draft, commit) describe that
        # content, not the next one.
        if name.startswith("user.") and not name.startswith("user.fencefs."):
            try:
                os.setxattr(fd, name, backing.tree.getxattr(target, name))
            except OSError:
                pass


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
