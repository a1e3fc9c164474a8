"""Which paths a request may name: the meta directory.

``.fencefs/`` in the backing directory holds drafts, rejected writes, the
journal and the history. Through the mount only ``journal.jsonl``, the older
journal segments (``journal/``), ``rejected/``, ``versions/``, the snapshots
and the staging directories are visible, read-only but for staging (EROFS
on any change); the rest is hidden. Symlinks may have any target, as on any
filesystem: the caller's kernel follows them, in the caller's context; the
daemon itself never follows one (store/paths.py).
"""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3

from fencefs.fuse.inodes import InodeTable
from fencefs.store.backing import META_DIR, Backing, parent_of
from fencefs.store.txn import STAGING, is_staged

__all__ = ["META_DIR", "child", "give", "is_hidden", "is_meta", "parent_of", "refuse_meta"]

# Shown through the mount, read-only (snapshots: the view of each cut, and
# their manifests; the history; the journal's older segments); the rest of
# .fencefs/ is hidden. The staging directories under txn/ are not meta:
# files are written there.
META_VISIBLE = {"journal.jsonl", "rejected", "snapshots", "snapshot-meta", "txn", "journal",
                "versions", "hosts"}  # hosts/: each host's journal with --etcd
REJECTED_DIR = f"{META_DIR}/rejected"
SNAPSHOTS_DIR = f"{META_DIR}/snapshots"
VERSIONS_DIR = f"{META_DIR}/versions"  # the history tree (store/versions.py)
META_OPEN_DIRS = {META_DIR, REJECTED_DIR, SNAPSHOTS_DIR, f"{META_DIR}/snapshot-meta",
                  VERSIONS_DIR, f"{META_DIR}/journal"}


def is_meta(rel: str) -> bool:
    return (rel == META_DIR or rel.startswith(META_DIR + "/")) and not is_staged(rel)


def is_txn_dir(rel: str) -> bool:
    """``.fencefs/txn/NAME`` itself (where the commit attribute is set)."""
    return is_staged(rel) and "/" not in rel[len(STAGING) + 1:]


def is_hidden(rel: str) -> bool:
    if not rel.startswith(META_DIR + "/"):
        return False
    return rel[len(META_DIR) + 1:].split("/", 1)[0] not in META_VISIBLE


def in_versions(rel: str) -> bool:
    """In the history tree: ``.fencefs/versions/`` and below."""
    return rel == VERSIONS_DIR or rel.startswith(VERSIONS_DIR + "/")


def refuse_meta(rel: str) -> None:
    if is_meta(rel):
        raise pyfuse3.FUSEError(errno.EROFS)


def child(inodes: InodeTable, parent: int, name: bytes) -> str:
    """The path of ``name`` in directory ``parent``; EINVAL for a name that
    is not one (a slash, '.' or '..')."""
    text = os.fsdecode(name)
    if "/" in text or text in (".", ".."):
        raise pyfuse3.FUSEError(errno.EINVAL)
    return inodes.child_path(parent, text)


def give(backing: Backing, rel: str, uid: int, gid: int, mode: int,
         fd: int | None = None) -> None:
    """Make the new node at ``rel`` (open as ``fd``, if given) the caller's:
    its uid and gid, or the group of a setgid directory it was made in (the
    backing filesystem already set that). Nothing to do when the caller is
    the daemon's own user and group, or when the daemon is not root (it
    cannot give nodes away). A chown clears S_ISUID and S_ISGID, so a mode
    with them is set again after it."""
    euid = os.geteuid()
    if euid != 0 or (uid, gid) == (euid, os.getegid()):
        return
    if backing.lstat(parent_of(rel)).st_mode & stat.S_ISGID:
        gid = -1
    if fd is not None:
        os.fchown(fd, uid, gid)
    else:
        backing.tree.chown(rel, uid, gid)
    if mode & (stat.S_ISUID | stat.S_ISGID):
        if fd is not None:
            os.fchmod(fd, mode)
        else:
            backing.tree.chmod(rel, mode)
