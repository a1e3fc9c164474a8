"""The wire of history, restore, retention and metrics.

What the daemon and its clients (``fencefs.client_history``, the command
line) exchange for these features, in one place, with a round-trip test:

- ``user.fencefs.history`` on ``MOUNT/.fencefs/versions/PATH`` (the history
  directory of PATH, which exists for a deleted file too): JSON
  ``{"path", "current": {"version", "epoch", "exists"}, "versions": [...]}``;
- ``user.fencefs.restore`` set on the mount root: JSON
  ``{"path", "version", "base", "epoch"}``: commit version ``version``'s
  bytes as the next version of ``path``, resting on (``base``, ``epoch``),
  the state the caller read. Errors: ``ENOENT`` (no such version),
  ``EISDIR``, ``EAGAIN`` (a commit landed since), ``ESTALE`` (reclaimed);
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
from dataclasses import dataclass
from typing import Any

PREFIX = "user.fencefs."
HISTORY = PREFIX + "history"
RESTORE = PREFIX + "restore"
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


def encode_restore(path: str, version: int, base: int | None, epoch: int | None) -> bytes:
    return json.dumps({"path": path, "version": version, "base": base, "epoch": epoch},
                      separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class RestoreRequest:
    path: str
    version: int
    base: int | None  # what the restore rests on; None: the current version
    epoch: int | None


def parse_restore(raw: bytes) -> RestoreRequest:
    """Raises ValueError (EINVAL at the daemon) on anything malformed."""
    try:
        d = json.loads(raw)
        path, version = d["path"], d["version"]
        base, epoch = d.get("base"), d.get("epoch")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"bad restore request: {e}") from None
    if not isinstance(path, str) or not path or path.startswith("/") or \
            any(p in ("", ".", "..") for p in path.split("/")):
        raise ValueError("bad restore request: path must be relative to the mount root")
    for name, value in (("version", version), ("base", base), ("epoch", epoch)):
        if value is None and name != "version":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"bad restore request: {name} must be a whole number")
    return RestoreRequest(path, version, base, epoch)


def encode_history(path: str, current: dict[str, Any] | None,
                   versions: list[dict[str, Any]]) -> bytes:
    return json.dumps({"path": path, "current": current, "versions": versions},
                      separators=(",", ":")).encode()
