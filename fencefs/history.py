"""The wire of history, restore, retention and metrics.

What the daemon and its clients (``fencefs.client_history``, the command
line) exchange for these features, in one place, with a round-trip test:

- ``user.fencefs.history`` on ``MOUNT/.fencefs/versions/PATH`` (the history
  directory of PATH, which exists for a deleted file too): JSON
  ``{"path", "current": {"version", "epoch", "exists"}, "versions": [...]}``;
- ``user.fencefs.restore-from`` set on a file (``fsetxattr`` on the
  caller's write descriptor) with a version number: the caller's open write
  handles of the file are restoring that version, so their next commit is
  journaled with ``restored_from`` (``ENOENT``: no such retained version, or
  no write handle of the caller's). The restore itself is an ordinary
  commit through that handle: ``EAGAIN``/``ESTALE`` from ``write``,
  ``fsync`` or ``close`` as for any writer (a setxattr cannot answer
  ``EAGAIN``: the kernel turns it into ``EOPNOTSUPP``);
- ``user.fencefs.gc`` set on the root (``1`` or ``dry-run``) applies the
  bounds now; reading it gives the last run's summary (JSON);
- ``user.fencefs.stats`` on the root: the metrics snapshot (JSON, see
  ``fencefs.metrics``) with the disk use of ``.fencefs/``.

The history tree (``BACKING/.fencefs/versions/``, shown read-only at
``MOUNT/.fencefs/versions/``) mirrors the files' paths, one directory per
file holding its versions as files named by number; ``encode_path`` gives
a file's directory there.

This module imports nothing of fencefs.
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "user.fencefs."
HISTORY = PREFIX + "history"
RESTORE_FROM = PREFIX + "restore-from"
GC = PREFIX + "gc"
STATS = PREFIX + "stats"
META = ".fencefs"
VERSIONS_VIEW = f"{META}/versions"


def encode_name(name: str) -> str:
    """One path component as a name in the history tree."""
    name = name.replace("%", "%25")
    if name.isdigit() and name.isascii():
        name = f"%{ord(name[0]):02X}{name[1:]}"
    return name


def decode_name(name: str) -> str:
    out, i = [], 0
    while i < len(name):
        if name[i] == "%" and _hex(name[i + 1:i + 3]):
            out.append(chr(int(name[i + 1:i + 3], 16)))
            i += 3
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def _hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def encode_path(rel: str) -> str:
    """A file's path (relative to the mount) as a path in the history tree."""
    return "/".join(encode_name(part) for part in rel.split("/"))


def decode_path(encoded: str) -> str:
    return "/".join(decode_name(part) for part in encoded.split("/"))




# -- the wire ------------------------------------------------------------------


def encode_restore_from(version: int) -> bytes:
    return str(version).encode()


def parse_restore_from(raw: bytes) -> int:
    """A version number; ValueError (EINVAL at the daemon) otherwise."""
    text = raw.strip()
    if not text.isdigit() or len(text) > 18:
        raise ValueError(f"{RESTORE_FROM} takes a version number")
    return int(text)


def encode_history(path: str, current: dict[str, Any] | None,
                   versions: list[dict[str, Any]]) -> bytes:
    return json.dumps({"path": path, "current": current, "versions": versions},
                      separators=(",", ":")).encode()
