"""The journal: one JSON object per event, appended to .fencefs/journal.jsonl.

Lines are appended with one write(2) each on an O_APPEND descriptor; ``sync``
makes them durable and is called before a commit or reclaim is acknowledged.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.written = 0  # lines appended by this process
        self.synced = 0  # of those, how many an fsync has covered

    def record(self, event: str, file: str, **fields: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "ts": time.time(),
            "event": event,
            "file": file,
        }
        entry.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode())
        self.written += 1
        return entry

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
