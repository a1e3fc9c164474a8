"""The backing directory: paths, stat, and the state persisted with content.

Every regular file's (version, epoch, policy) lives in one extended
attribute of the backing file itself, next to a fingerprint of the content it
belongs to (inode, size, mtime). A commit writes that attribute onto the
draft *before* the draft is renamed over the file, so a crash can never pair
new bytes with an old version. A backing file whose fingerprint no longer
matches was changed behind fencefs's back (a foreign write).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass

from fencefs.core.errors import BadValue
from fencefs.core.model import POLICIES, Persisted
from fencefs.store.paths import Tree

STATE_XATTR = "user.fencefs.state"
# Who committed a content and when: {"id": identity, "pid": pid, "t": wall time}.
# Set on a draft before it is installed; read back once it is history.
COMMIT_XATTR = "user.fencefs.commit"
META_DIR = ".fencefs"


@dataclass(frozen=True, slots=True)
class Fingerprint:
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Fingerprint:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


def encode_state(persisted: Persisted, fp: Fingerprint) -> bytes:
    state: dict[str, object] = {"v": persisted.version, "e": persisted.epoch}
    if persisted.policy is not None:
        state["p"] = persisted.policy
    state.update(ino=fp.ino, size=fp.size, mtime=fp.mtime_ns)
    return json.dumps(state, separators=(",", ":")).encode()


def stamp(fd: int, identity: str, pid: int, when: float) -> None:
    """Record who committed this content and when, on the content itself."""
    os.setxattr(fd, COMMIT_XATTR,
                json.dumps({"id": identity, "pid": pid, "t": round(when, 6)},
                           separators=(",", ":")).encode())


def decode_state(raw: bytes) -> tuple[Persisted, Fingerprint | None]:
    """Parse the state attribute; garbage reads as a foreign file at v0."""
    try:
        d = json.loads(raw)
        version, epoch, policy = int(d["v"]), int(d["e"]), d.get("p")
        if version < 0 or epoch < 0 or (policy is not None and policy not in POLICIES):
            raise BadValue(str(policy))
        fp = Fingerprint(int(d["ino"]), int(d["size"]), int(d["mtime"]))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return Persisted(0, 0), None  # (OverflowError: 1e400 or Infinity, no integer)
    return Persisted(version, epoch, policy), fp


class Backing:
    """Metadata access inside the backing directory. Every path is resolved
    by ``tree`` (store/paths.py): through descriptors, never following a
    symlink, never as one long absolute string."""

    def __init__(self, root: str) -> None:
        self.tree = Tree(root)
        self.root = self.tree.root
        self.meta = os.path.join(self.root, META_DIR)

    def lstat(self, rel: str) -> os.stat_result:
        return self.tree.lstat(rel)

    def open(self, rel: str, flags: int, mode: int = 0o666) -> int:
        """Open ``rel`` (O_NOFOLLOW, O_CLOEXEC: a symlink anywhere is ELOOP)."""
        return self.tree.open(rel, flags, mode)

    def read_state(self, rel: str) -> tuple[Persisted, Fingerprint | None]:
        try:
            raw = self.tree.getxattr(rel, STATE_XATTR)
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOTSUP):
                return Persisted(0, 0), None
            raise
        return decode_state(raw)

    def write_state(self, rel: str, persisted: Persisted, *, durable: bool) -> Fingerprint:
        """Persist state for the content currently in the backing file."""
        fd = self.tree.open(rel, os.O_RDONLY)
        try:
            fp = Fingerprint.of(os.fstat(fd))
            os.setxattr(fd, STATE_XATTR, encode_state(persisted, fp))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if durable:
            self.sync_dir(parent_of(rel))
        return fp

    @staticmethod
    def write_state_fd(fd: int, persisted: Persisted) -> Fingerprint:
        """Persist state on an open backing file (the shared policy's in-place
        commits: the descriptor follows the inode across renames). Not
        fsynced here: the caller fsyncs the file, which covers the attribute."""
        fp = Fingerprint.of(os.fstat(fd))
        os.setxattr(fd, STATE_XATTR, encode_state(persisted, fp))
        return fp

    def sync_dir(self, rel_dir: str) -> None:
        self.tree.sync_dir(rel_dir)

    def sync_file(self, rel: str) -> None:
        """fsync a regular file (its data and metadata, attributes included)."""
        fd = self.tree.open(rel, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def exists(self, rel: str) -> bool:
        """Whether a node (of any kind; a symlink is not followed) is at ``rel``."""
        try:
            self.lstat(rel)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def makedirs(self, rel: str, mode: int = 0o777) -> None:
        """``mkdir -p`` of ``rel``, one name at a time through the tree."""
        names = [n for n in rel.split("/") if n]
        for i in range(1, len(names) + 1):
            try:
                self.tree.mkdir("/".join(names[:i]), mode)
            except FileExistsError:
                pass

    def remove(self, rel: str) -> None:
        """Unlink ``rel`` if it is there."""
        try:
            self.tree.unlink(rel)
        except FileNotFoundError:
            pass

    def is_regular(self, rel: str) -> bool:
        try:
            return stat.S_ISREG(self.lstat(rel).st_mode)
        except FileNotFoundError:
            return False


def parent_of(rel: str) -> str:
    return rel.rpartition("/")[0]


def check_xattr_support(root: str) -> None:
    """Raise OSError with a clear message if ``root`` lacks user xattrs."""
    probe = os.path.join(root, ".fencefs-xattr-probe")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.setxattr(fd, "user.fencefs.probe", b"1")
    except OSError as e:
        raise OSError(
            e.errno, f"backing directory {root} has no user xattr support ({e.strerror})"
        ) from None
    finally:
        os.close(fd)
        os.unlink(probe)
