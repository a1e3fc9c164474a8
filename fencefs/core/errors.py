"""Domain errors of the fencing core.

Each carries the errno the contract assigns to it; the FUSE layer maps them to
``FUSEError`` in one place (``fencefs.fuse.boundary``).
"""

from __future__ import annotations

import errno


class FenceError(Exception):
    """A commit or open refused by the fencing rules."""

    errno: int = errno.EIO
    reason: str = "error"

    def __init__(
        self,
        path: str,
        *,
        rested_version: int | None = None,
        rested_epoch: int | None = None,
        current_version: int | None = None,
        current_epoch: int | None = None,
    ) -> None:
        self.path = path
        self.rested_version = rested_version
        self.rested_epoch = rested_epoch
        self.current_version = current_version
        self.current_epoch = current_epoch
        super().__init__(
            f"{self.reason}: {path!r} rests on v{rested_version}/e{rested_epoch}, "
            f"file is at v{current_version}/e{current_epoch}"
        )


class Conflict(FenceError):
    """The file moved past the version the claim rests on (G1): retryable."""

    errno = errno.EAGAIN
    reason = "conflict"


class Fenced(FenceError):
    """The claim was made under a superseded epoch (G2): stop."""

    errno = errno.ESTALE
    reason = "fenced"


class Busy(FenceError):
    """Another live claim holds a file whose policy is exclusive."""

    errno = errno.EBUSY
    reason = "busy"


class BadValue(ValueError):
    """A control value (attribute, option) that does not parse."""

    errno = errno.EINVAL
