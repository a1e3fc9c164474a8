"""The data the fencing core reasons about: files, claims, and their kinds.

Plain data, no I/O. ``specs/Fencing.tla`` models the same records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

OPTIMISTIC = "optimistic"
EXCLUSIVE = "exclusive"
SHARED = "shared"
POLICIES = (OPTIMISTIC, EXCLUSIVE, SHARED)


class Kind(StrEnum):
    READ = "read"
    WRITE = "write"


@dataclass(slots=True)
class Claim:
    """What a writer's (or reader's) view of a file rests on."""

    id: int
    path: str
    identity: str
    pid: int
    kind: Kind
    version: int
    epoch: int
    append: bool = False
    # Monotonic deadline of the lease (write claims); None: no lease.
    lease_expiry: float | None = None
    # Monotonic time of the last write, fsync or renew (for the idle sweep).
    last_active: float | None = None


@dataclass(slots=True)
class FileState:
    """Coordination state of one regular file, keyed by its path."""

    path: str
    version: int
    epoch: int
    # Set explicitly (setfattr) and persisted; None: the mount's default.
    policy: str | None = None
    # Open write handles' claims, by claim id.
    writers: dict[int, Claim] = field(default_factory=dict)
    # Observation claims: the last (version, epoch) each identity was served.
    readers: dict[str, Claim] = field(default_factory=dict)

    def claims(self) -> list[Claim]:
        return [*self.writers.values(), *self.readers.values()]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: its identity (per the mount's scope) and process."""

    identity: str
    pid: int  # thread group id of the caller


@dataclass(frozen=True, slots=True)
class Persisted:
    """What the store keeps with a file's content (see ``fencefs.store``)."""

    version: int
    epoch: int
    policy: str | None = None
