"""Bounds on what fencefs keeps: retained versions, rejected writes, the journal.

The bounds are mount options (``Retention``), parsed here with one-line
errors. ``RejectedIndex`` keeps the list of rejected writes in memory, in
the order their names sort (oldest first: a name starts with its time), so
that applying the bounds never lists the directory again; it is filled once
at mount and then told of every new rejection.

Every sweep returns a ``Dropped`` summary, which the daemon journals as one
``retention`` line (never one line per file).
"""

from __future__ import annotations

import bisect
import calendar
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

log = logging.getLogger("fencefs.store")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s``, ``500ms``, ``2w``; a bare number is
    seconds; ``0`` means "no age bound" where the caller says so."""
    m = _DURATION.match(str(text))
    if m is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 7d, 12h, 30m, 45s)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]


def parse_size(text: str) -> int:
    """``100M``, ``1G``, ``512K``, ``64MiB``, ``1.5G``; a bare number is bytes.
    Units are powers of 1024."""
    m = _SIZE.match(str(text))
    if m is None:
        raise ValueError(f"not a size: {text!r} (use e.g. 100M, 1G, 512K)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


def parse_count(text: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(f"not a count: {text!r} (a whole number, 0 or more)") from None
    if value < 0:
        raise ValueError(f"not a count: {text!r} (a whole number, 0 or more)")
    return value


@dataclass(frozen=True, slots=True)
class Retention:
    """The bounds of one mount. A count or size of 0 keeps nothing; an age of
    0 means no age bound (the count and size bounds still apply)."""

    keep_versions: int = 20  # retained versions per file
    keep_for: float = 7 * 86400.0  # age of a retained version (since it was replaced)
    keep_rejected: int = 2000  # rejected writes, in all
    keep_rejected_bytes: int = 512 << 20
    keep_rejected_for: float = 7 * 86400.0
    journal_max: int = 256 << 20  # all journal segments together
    journal_segment: int = 0  # 0: journal_max // 8, at least 1 MiB
    keep_snapshots: int = 50  # snapshots, in all (the oldest dropped first)
    keep_snapshots_for: float = 0.0  # age of a snapshot (0: no age bound)
    keep_staging_for: float = 600.0  # a staging directory whose owner is gone

    @property
    def history(self) -> bool:
        return self.keep_versions > 0

    @property
    def segment_bytes(self) -> int:
        if self.journal_segment:
            return self.journal_segment
        return max(1 << 20, self.journal_max // 8)


@dataclass(slots=True)
class Dropped:
    """What one sweep removed, journaled as one line."""

    kind: str  # versions, rejected, journal, snapshots
    count: int = 0
    bytes: int = 0
    files: set[str] = field(default_factory=set)

    def add(self, size: int, file: str | None = None) -> None:
        self.count += 1
        self.bytes += size
        if file is not None and len(self.files) < 1000:
            self.files.add(file)

    def fields(self) -> dict[str, object]:
        return {"kind": self.kind, "dropped": self.count, "bytes": self.bytes,
                "files": len(self.files)}


# -- rejected writes -----------------------------------------------------------


@dataclass(slots=True)
class _Rejected:
    name: str
    size: int
    when: float  # wall-clock time, from the name
    key: str  # who.where: one identity's drafts for one file


def _parse_rejected(name: str) -> tuple[float, str] | None:
    """(time, identity-and-file key) from a name made by drafts.rejected_name:
    ``YYYYmmddTHHMMSS.uuuuuuZ.reason.who.where``."""
    parts = name.split(".", 4)
    if len(parts) < 5 or not parts[1].endswith("Z"):
        return None
    try:
        stamp = time.strptime(parts[0], "%Y%m%dT%H%M%S")
        micros = int(parts[1][:-1])
    except ValueError:
        return None
    return calendar.timegm(stamp) + micros / 1e6, f"{parts[3]}.{parts[4]}"


def _target_of(name: str) -> str:
    """The path a rejected write was meant for, as far as its name tells
    (drafts.rejected_name escapes it; a long one is cut): for a journal line."""
    parts = name.split(".", 4)
    return urllib.parse.unquote(parts[4]) if len(parts) == 5 else "?"


class RejectedIndex:
    """The rejected writes in ``directory``, oldest first, with their sizes."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self._items: list[_Rejected] = []
        self._latest: dict[str, str] = {}  # key -> name of its newest entry
        self.bytes = 0
        self.load()

    def load(self) -> None:
        self._items, self._latest, self.bytes = [], {}, 0
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            names = []
        for name in names:
            try:
                size = os.lstat(os.path.join(self.dir, name)).st_size
            except OSError:
                continue
            self._append(name, size)

    def _append(self, name: str, size: int) -> None:
        parsed = _parse_rejected(name)
        when, key = parsed if parsed is not None else (0.0, name)
        item = _Rejected(name, size, when, key)
        items = self._items
        if items and items[-1].name > name:  # out of order (clock step): keep sorted
            at = bisect.bisect([i.name for i in items], name)
            items.insert(at, item)
        else:
            items.append(item)
        latest = self._latest.get(key)
        if latest is None or latest < name:
            self._latest[key] = name
        self.bytes += size

    def add(self, name: str, size: int) -> None:
        self._append(name, size)

    def newer_than(self, when: float) -> list[tuple[str, str]]:
        """The rejected writes named as made after ``when`` (seconds since
        the epoch), with the path each was meant for, oldest first."""
        found = []
        for item in reversed(self._items):
            if item.when <= when:
                break
            found.append((item.name, _target_of(item.name)))
        return found[::-1]

    def __len__(self) -> int:
        return len(self._items)

    def over(self, policy: Retention, now: float) -> bool:
        if len(self._items) > policy.keep_rejected or self.bytes > policy.keep_rejected_bytes:
            return True
        return bool(self._items) and policy.keep_rejected_for > 0 \
            and self._items[0].when < now - policy.keep_rejected_for

    def sweep(self, policy: Retention, now: float, *, dry_run: bool = False) -> Dropped:
        """Drop the oldest rejected writes until within the bounds. Each
        identity's newest refused draft per file is kept until it is older
        than the age bound, whatever the count and size bounds say."""
        dropped = Dropped("rejected")
        if not self.over(policy, now):
            return dropped
        count, size = len(self._items), self.bytes
        age_limit = now - policy.keep_rejected_for if policy.keep_rejected_for > 0 else None
        kept: list[_Rejected] = []
        for i, item in enumerate(self._items):
            too_old = age_limit is not None and item.when < age_limit
            over = count > policy.keep_rejected or size > policy.keep_rejected_bytes
            if not too_old and not over:
                kept.extend(self._items[i:])
                break
            protected = self._latest.get(item.key) == item.name and not too_old
            if protected:
                kept.append(item)
                continue
            if not dry_run:
                try:
                    os.unlink(os.path.join(self.dir, item.name))
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.warning("could not drop rejected write %s: %s", item.name, e)
                    kept.append(item)
                    continue
            count -= 1
            size -= item.size
            dropped.add(item.size, item.key)
        if not dry_run:
            self._items = kept
            self.bytes = size
            names = {i.name for i in kept}
            self._latest = {k: n for k, n in self._latest.items() if n in names}
        return dropped

    def names(self) -> Iterable[str]:
        return (i.name for i in self._items)
