"""The client's common ground: typed errors, results, which backend a
path has, and the transaction both backends provide."""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from fencefs import wire
from fencefs.wire import ClaimInfo

VERSION_ATTR, EPOCH_ATTR = wire.VERSION, wire.EPOCH
SIDECAR_SUFFIX = ".fencefs-version"  # the fallback's version file: .NAME.fencefs-version
LOCK_NAME = ".fencefs-local.lock"  # the fallback's lock, one per directory
_TMP_MARK = ".fencefs-tmp."

# How often a read is repeated when a commit lands between looking at the
# version and opening the file (see _open_paired); each repeat means someone
# else committed meanwhile, so this only runs out under a storm of commits.
_PAIRING_TRIES = 200


# -- errors --------------------------------------------------------------------


class FenceError(Exception):
    """A write refused by fencing.

    Deliberately not an ``OSError`` (nor a ``ValueError`` or ``RuntimeError``):
    frameworks treat those families as permanent failures and would not retry
    a conflict. ``errno`` is the errno the mount returned (or would have).

    Attributes: ``path``; ``rested_version`` and ``rested_epoch``, what the
    refused write rested on; ``current_version`` and ``current_epoch``, the
    file's state when the refusal was seen (``None`` where unknown).
    """

    errno: ClassVar[int] = 0
    reason: ClassVar[str] = "refused"
    advice: ClassVar[str] = ""
    # A refused multi-file commit (``transaction``): every file that moved.
    moved: tuple[str, ...] = ()

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rested_version: int | None = None,
        rested_epoch: int | None = None,
        current_version: int | None = None,
        current_epoch: int | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.rested_version = rested_version
        self.rested_epoch = rested_epoch
        self.current_version = current_version
        self.current_epoch = current_epoch
        super().__init__(self._message())

    def _message(self) -> str:
        def pair(v: int | None, e: int | None) -> str:
            return f"version {'?' if v is None else v}, epoch {'?' if e is None else e}"

        return (f"{self.reason} on {self.path}: the write rested on "
                f"{pair(self.rested_version, self.rested_epoch)}; the file is at "
                f"{pair(self.current_version, self.current_epoch)}. {self.advice}").rstrip()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.path, self.rested_version, self.rested_epoch,
                           self.current_version, self.current_epoch))


def _rebuild(cls: type[FenceError], path: str, rv: int | None, re: int | None,
             cv: int | None, ce: int | None) -> FenceError:
    return cls(path, rested_version=rv, rested_epoch=re, current_version=cv, current_epoch=ce)


class FenceConflict(FenceError):
    """The file moved past the version the write rested on (``EAGAIN``): retryable."""

    errno = _errno.EAGAIN
    reason = "conflict"
    advice = "Read it again, recompute, write again."


class Fenced(FenceError):
    """The write's claim was revoked by a reclaim (``ESTALE``): do not retry blindly."""

    errno = _errno.ESTALE
    reason = "fenced"
    advice = "The claim was revoked: re-read and retry only if the task is still yours."


class ClaimBusy(FenceError):
    """An ``exclusive`` file is held by another identity's live write claim (``EBUSY``)."""

    errno = _errno.EBUSY
    reason = "busy"
    advice = "Another writer holds the file: wait and retry, or give up."


_BY_ERRNO: dict[int, type[FenceError]] = {
    _errno.EAGAIN: FenceConflict,
    _errno.ESTALE: Fenced,
    _errno.EBUSY: ClaimBusy,
}


# -- results -------------------------------------------------------------------


class Versioned(NamedTuple):
    """A file's content together with the version and epoch it belongs to."""

    data: bytes
    version: int
    epoch: int


@dataclass(frozen=True)
class ClaimState:
    """A file's claim state. ``fencefs`` is False under the local fallback,
    which keeps versions and epochs but no claims (``claims`` and ``own`` are
    then empty, ``policy`` is ``optimistic``)."""

    path: str
    version: int
    epoch: int
    policy: str
    claims: tuple[ClaimInfo, ...]
    own: tuple[ClaimInfo, ...]
    fencefs: bool


# -- which backend -------------------------------------------------------------


def is_fencefs(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (a file, or a directory, existing or not) is on a fencefs mount.

    Decided by the device of the nearest existing directory at or above the
    path, looked up in ``/proc/self/mountinfo`` (filesystem type
    ``fuse.fencefs``). False where there is no ``/proc``.
    """
    p = os.path.abspath(os.fspath(path))
    while True:
        try:
            st = os.stat(p)
            break
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(p)
            if parent == p:
                return False
            p = parent
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    try:
        mounts = wire.read_mountinfo()
    except OSError:
        return False
    return any(m.device == dev and m.fstype == wire.FSTYPE for m in mounts)


# -- the transaction both backends provide -------------------------------------


class _Txn:
    """One read-modify-write: ``data``/``version``/``epoch`` as read, then
    at most one ``commit``. ``exists`` is False for a file that was missing
    (``data`` is then empty and ``version`` 0)."""

    path: str
    data: bytes
    version: int
    epoch: int
    exists: bool

    def commit(self, new: bytes) -> Versioned:
        raise NotImplementedError

    def close(self) -> None:
        pass
