"""The journal: one JSON object per event, appended to .fencefs/journal.jsonl.

Lines are appended with one write(2) each on an O_APPEND descriptor; ``sync``
makes them durable and is called before a commit or reclaim is acknowledged.

A full disk must not silence the journal: ``reserve`` keeps some space
allocated past the journal's end (``fallocate`` with ``FALLOC_FL_KEEP_SIZE``),
and the commit paths call it first and refuse to commit (``ENOSPC``) when no
room can be had, rather than commit what they could not journal. A line that
still cannot be written is logged, counted in ``lost``, and never raised from
``record``: the event it describes has already happened.

Segments. Once the journal passes ``segment_bytes`` it is rotated: the file
is renamed to ``.fencefs/journal/NNNNNN.jsonl`` (numbered in order) and a new
``journal.jsonl`` begins with a ``segment`` line naming its number. While
all segments together exceed ``max_bytes`` the oldest are deleted, and the
deletion is recorded in the current segment (one ``retention`` line). The
rotation is made from ``record`` on the event loop's thread; ``sync`` runs on
worker threads, so the two share a lock, and a rotated-out descriptor is
fsynced and closed by the next ``sync`` (never closed under one in flight).
``read_journal`` reads the segments in order, then the current file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import threading
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


SEGMENTS = "journal"  # the directory of rotated segments, beside journal.jsonl
_SEGMENT = re.compile(r"^(\d{6,})\.jsonl$")


def segments_of(path: str) -> list[tuple[int, str]]:
    """The rotated segments beside the journal ``path``, oldest first."""
    d = os.path.join(os.path.dirname(path), SEGMENTS)
    try:
        names = os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        m = _SEGMENT.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(d, name)))
    return sorted(found)


class Journal:
    def __init__(self, path: str, *, segment_bytes: int = 0, max_bytes: int = 0,
                 durable: bool = True) -> None:
        self.path = path
        self.segment_bytes = segment_bytes  # 0: never rotate
        self.max_bytes = max_bytes  # 0: keep every segment
        self.durable = durable
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.written = 0  # lines appended by this process
        self.synced = 0  # of those, how many an fsync has covered
        self.lost = 0  # lines that could not be written
        # Only this process appends: the end is counted, not asked of the disk.
        self._end = os.fstat(self._fd).st_size
        self._room_until: int | None = 0  # None: the filesystem cannot preallocate
        self._lock = threading.Lock()  # rotation (event loop) against sync (workers)
        self._retired: list[int] = []  # rotated-out descriptors the next sync closes
        self._rotating = False
        segs = segments_of(path)
        self._segments = [(n, p, _size(p)) for n, p in segs]
        self.dropped_segments = 0
        self.reserve()

    @property
    def size(self) -> int:
        """Bytes of all segments, the current one included."""
        return self._end + sum(s for _, _, s in self._segments)

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
        if self.segment_bytes and self._end >= self.segment_bytes and not self._rotating:
            self.rotate()
        return entry

    def rotate(self) -> bool:
        """Start a new segment (see the module's docstring). Skipped, and
        tried again at the next line, while a sync holds the lock."""
        if not self._lock.acquire(blocking=False):
            return False
        self._rotating = True
        try:
            seq = (self._segments[-1][0] + 1) if self._segments else 1
            d = os.path.join(os.path.dirname(self.path), SEGMENTS)
            dest = os.path.join(d, f"{seq:06d}.jsonl")
            try:
                os.makedirs(d, mode=0o700, exist_ok=True)
                fd = os.open(self.path + ".next", os.O_WRONLY | os.O_APPEND | os.O_CREAT
                             | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            except OSError as e:
                log.warning("journal: could not start a new segment: %s", e)
                return False
            try:
                # The new file takes journal.jsonl by a rename: a reader
                # always finds a journal (or, in between, the old one moved).
                os.rename(self.path, dest)
                os.rename(self.path + ".next", self.path)
            except OSError as e:
                log.warning("journal: could not rotate: %s", e)
                os.close(fd)
                return False
            old, self._fd = self._fd, fd
            try:
                os.ftruncate(old, self._end)  # give back the reserve past its end
            except OSError:
                pass
            if self.durable:
                self._retired.append(old)  # the next sync fsyncs and closes it
            else:
                os.close(old)
            self._segments.append((seq, dest, self._end))
            self._end, self._room_until = 0, 0 if self._room_until is not None else None
        finally:
            self._lock.release()
        self.record("segment", "-", segment=seq + 1, previous=f"{SEGMENTS}/{seq:06d}.jsonl")
        self.trim()
        self._rotating = False
        self.reserve()
        return True

    def would_trim(self) -> tuple[int, int]:
        """What ``trim`` would delete now: (segments, bytes)."""
        count = size = 0
        total = self.size
        for _, _, seg_size in self._segments:
            if not self.max_bytes or total <= self.max_bytes:
                break
            count, size, total = count + 1, size + seg_size, total - seg_size
        return count, size

    def trim(self) -> tuple[int, int]:
        """Delete the oldest segments while all of them exceed ``max_bytes``;
        the current segment is never deleted. Returns (segments, bytes)."""
        count = size = 0
        first = last = None
        while self.max_bytes and len(self._segments) > 0 and self.size > self.max_bytes:
            seq, path, seg_size = self._segments[0]
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("journal: could not drop segment %s: %s", path, e)
                break
            self._segments.pop(0)
            count += 1
            size += seg_size
            first = seq if first is None else first
            last = seq
        if count:
            self.dropped_segments += count
            self.record("retention", "-", kind="journal", dropped=count, bytes=size,
                        first_segment=first, last_segment=last)
        return count, size

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
        with self._lock:
            retired, self._retired = self._retired, []
            for old in retired:
                try:
                    os.fsync(old)
                finally:
                    os.close(old)
            os.fsync(self._fd)
        self.synced = max(self.synced, upto)

    def close(self) -> None:
        with self._lock:
            for old in self._retired:
                os.close(old)
            self._retired = []
            os.close(self._fd)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def last_record(path: str, *, skip: tuple[str, ...] = ("segment",)) -> dict[str, Any] | None:
    """The journal's last whole record whose event is not in ``skip`` (a
    rotation's own line), read from the end: the current file, then the
    newest segment."""
    for p in [path, *[p for _, p in reversed(segments_of(path))][:1]]:
        try:
            with open(p, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                f.seek(max(0, end - (64 << 10)))
                tail = f.read()
        except FileNotFoundError:
            continue
        for line in reversed(tail.split(b"\n")):
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # empty, torn, or cut by the 64 KiB window
            if isinstance(entry, dict) and entry.get("event") not in skip:
                return entry
    return None


def read_journal(path: str, *, segments: bool = True) -> list[dict[str, Any]]:
    """Every entry, oldest first: the rotated segments in order, then the
    current file (``segments=False``: the current file alone)."""
    entries: list[dict[str, Any]] = []
    paths = [p for _, p in segments_of(path)] if segments else []
    for p in [*paths, path]:
        try:
            f = open(p, encoding="utf-8", errors="replace")
        except FileNotFoundError:
            if p == path:
                raise
            continue  # dropped while we read
        with f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue
    return entries
