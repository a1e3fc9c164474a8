"""Which paths a request may name: the meta directory and symlink containment.

``.fencefs/`` in the backing directory holds drafts, rejected writes, the
journal and the history. Through the mount only ``journal.jsonl``, the older
journal segments (``journal/``), ``rejected/`` and ``versions/`` are visible,
read-only (EROFS on any change); the rest is hidden. Symlinks must stay inside the mount
(checked at creation and whenever one is read: a link made harmless at
creation can be turned by a later rename or link).
"""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3

from fencefs.fuse.inodes import InodeTable
from fencefs.store.backing import META_DIR, Backing
from fencefs.store.txn import STAGING, is_staged

# Shown through the mount, read-only (snapshots: the view of each cut, and
# their manifests; the history; the journal's older segments); the rest of
# .fencefs/ is hidden. The staging directories under txn/ are not meta:
# files are written there.
META_VISIBLE = {"journal.jsonl", "rejected", "snapshots", "snapshot-meta", "txn", "journal",
                "versions"}
REJECTED_DIR = f"{META_DIR}/rejected"
SNAPSHOTS_DIR = f"{META_DIR}/snapshots"
VERSIONS_DIR = f"{META_DIR}/versions"  # the history tree (store/versions.py)
META_OPEN_DIRS = {META_DIR, REJECTED_DIR, SNAPSHOTS_DIR, f"{META_DIR}/snapshot-meta",
                  VERSIONS_DIR, f"{META_DIR}/journal"}
# The kernel's own limit of symlinks followed in one lookup (ELOOP).
_MAX_HOPS = 40


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


def stays_inside(link_rel: str, target: str) -> bool:
    """True if a symlink at ``link_rel`` to ``target`` stays in BACKING."""
    if target.startswith("/") or not target:
        return False
    depth = link_rel.count("/")  # directories above the link
    for part in target.split("/"):
        if part in ("", "."):
            continue
        depth += -1 if part == ".." else 1
        if depth < 0:
            return False
    return True


class Symlinks:
    def __init__(self, backing: Backing) -> None:
        self.backing = backing

    def allowed(self, link_rel: str, target: str) -> bool:
        return stays_inside(link_rel, target) and self.resolves_inside(link_rel, target)

    def resolves_inside(self, link_rel: str, target: str) -> bool:
        """True if ``target``, read from a symlink at ``link_rel`` and
        followed through the symlinks it passes on the way, stays in BACKING.

        Counting '..' is not enough: a link that climbs back from deep down
        ('a/b/up' -> '../..') lets a path through it ('a/b/up/../x') climb
        out while every link, taken alone, stays inside.
        """
        stack = link_rel.split("/")[:-1]
        return self._walk(stack, target, [0]) is not None

    def _walk(self, stack: list[str], target: str, hops: list[int]) -> list[str] | None:
        if not target or target.startswith("/"):
            return None
        stack = list(stack)
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    return None
                stack.pop()
                continue
            stack.append(part)
            try:
                st = os.lstat(self.backing.abs("/".join(stack)))
            except OSError:
                continue  # not there (yet): the kernel stops here, or counts on
            if stat.S_ISLNK(st.st_mode):
                hops[0] += 1
                if hops[0] > _MAX_HOPS:
                    return None
                inner = os.readlink(self.backing.abs("/".join(stack)))
                resolved = self._walk(stack[:-1], inner, hops)
                if resolved is None:
                    return None
                stack = resolved
        return stack
