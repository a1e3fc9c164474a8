"""Which paths a request may name: the meta directory.

``.fencefs/`` in the backing directory holds drafts, rejected writes and the
journal. Through the mount only ``journal.jsonl`` and ``rejected/`` are
visible, read-only; the rest is hidden. Symlinks may have any target, as on
any filesystem: the caller's kernel follows them, in the caller's context;
the daemon itself never follows one (store/paths.py).
"""

from __future__ import annotations

import errno
import os

import pyfuse3

from fencefs.fuse.inodes import InodeTable
from fencefs.store.backing import META_DIR, parent_of

__all__ = ["META_DIR", "child", "is_hidden", "is_meta", "parent_of", "refuse_meta"]

# Shown through the mount, read-only; the rest of .fencefs/ is hidden.
META_VISIBLE = {"journal.jsonl", "rejected"}
REJECTED_DIR = f"{META_DIR}/rejected"
META_OPEN_DIRS = {META_DIR, REJECTED_DIR}


def is_meta(rel: str) -> bool:
    return rel == META_DIR or rel.startswith(META_DIR + "/")


def is_hidden(rel: str) -> bool:
    if not rel.startswith(META_DIR + "/"):
        return False
    return rel[len(META_DIR) + 1:].split("/", 1)[0] not in META_VISIBLE


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
