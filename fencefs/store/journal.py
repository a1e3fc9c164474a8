"""The journal: one JSON object per event, appended to .fencefs/journal.jsonl.

Lines are appended with one write(2) each on an O_APPEND descriptor; ``sync``
makes them durable and is called before a commit or reclaim is acknowledged.

A full disk must not silence the journal: ``reserve`` keeps some space
allocated past the journal's end (``fallocate`` with ``FALLOC_FL_KEEP_SIZE``),
and the commit paths call it first and refuse to commit (``ENOSPC``) when no
room can be had, rather than commit what they could not journal. A line that
still cannot be written is logged, counted in ``lost``, and never raised from
``record``: the event it describes has already happened.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import time
from typing import Any

log = logging.getLogger("fencefs.journal")

RESERVE = 256 << 10  # bytes kept allocated past the end of the journal
MIN_ROOM = 16 << 10  # below this much room, commits are refused with ENOSPC
_FALLOC_FL_KEEP_SIZE = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _preallocate(fd: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.written = 0  # lines appended by this process
        self.synced = 0  # of those, how many an fsync has covered
        self.lost = 0  # lines that could not be written
        # Only this process appends: the end is counted, not asked of the disk.
        self._end = os.fstat(self._fd).st_size
        self._room_until: int | None = 0  # None: the filesystem cannot preallocate
        self.reserve()

    def record(self, event: str, file: str, **fields: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "ts": time.time(),
            "event": event,
            "file": file,
        }
        entry.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n"
        try:
            self._end += os.write(self._fd, line.encode())
            self.written += 1
        except OSError as e:
            self.lost += 1
            log.warning("journal: could not record %s of %s: %s", event, file, e)
        return entry

    def reserve(self) -> bool:
        """Keep room allocated past the journal's end. False when there is
        too little room left and no more can be allocated (a full disk)."""
        if self._room_until is None:
            return True
        size = self._end
        if self._room_until - size >= RESERVE // 2:
            return True
        try:
            _preallocate(self._fd, size, RESERVE)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                self._room_until = None  # nothing to reserve with here
                return True
            return self._room_until - size >= MIN_ROOM
        self._room_until = size + RESERVE
        return True

    def sync(self) -> None:
        upto = self.written
        os.fsync(self._fd)
        self.synced = max(self.synced, upto)

    def close(self) -> None:
        os.close(self._fd)


def read_journal(path: str) -> list[dict[str, Any]]:
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries
