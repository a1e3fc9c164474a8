"""One file at a time: versioned reads, fenced updates and replaces, claim
state and reclaims, on a mount or (through the fallback) anywhere.
``fencefs.client`` re-exports the public names."""

from __future__ import annotations

import asyncio
import contextlib
import errno as _errno
import fcntl
import os
import random
import time
from collections.abc import Callable
from typing import Any

from fencefs import wire
from fencefs.client.base import (
    _BY_ERRNO,
    _PAIRING_TRIES,
    EPOCH_ATTR,
    VERSION_ATTR,
    ClaimState,
    FenceConflict,
    Fenced,
    FenceError,
    Versioned,
    _Txn,
    is_fencefs,
)
from fencefs.client.fallback import (
    _dir_lock,
    _fingerprint,
    _local_read,
    _local_state,
    _LocalTxn,
    _write_sidecar,
)

# -- fencefs backend -----------------------------------------------------------


def _xattr_int(target: str | int, name: str) -> int:
    return int(os.getxattr(target, name))


def _open_paired(path: str, flags: int) -> tuple[int, int, int]:
    """Open ``path`` and learn the (version, epoch) the new handle rests on.

    A handle rests on (and reads) the version committed when it was opened,
    but the attributes always show the path's *current* version. So the
    version is read before the open and again through the descriptor after
    it; when they agree (versions and epochs never go down), nothing was
    committed or reclaimed in between and the handle rests on exactly that.
    When they differ, the handle is closed unwritten (which commits nothing)
    and the open is repeated.
    """
    for _ in range(_PAIRING_TRIES):
        before = (_xattr_int(path, VERSION_ATTR), _xattr_int(path, EPOCH_ATTR))
        fd = _os_call(path, before, lambda: os.open(path, flags))
        try:
            after = (_xattr_int(fd, VERSION_ATTR), _xattr_int(fd, EPOCH_ATTR))
        except BaseException:
            os.close(fd)
            raise
        if after == before:
            return fd, before[0], before[1]
        os.close(fd)
        time.sleep(random.uniform(0, 0.002))
    raise _refusal(FenceConflict, path, None, None)


def _os_call(path: str, rested: tuple[int | None, int | None], call: Callable[[], Any]) -> Any:
    """Run a system call; the fencing errnos become FenceErrors."""
    try:
        return call()
    except OSError as e:
        cls = _BY_ERRNO.get(e.errno or 0)
        if cls is None:
            raise
        raise _refusal(cls, path, rested[0], rested[1]) from e


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        pos += os.pwrite(fd, view[pos:], pos)


class _FenceTxn(_Txn):
    """A read-write handle on the mount; its commit is its ``fsync``."""

    def __init__(self, path: str, create: bool) -> None:
        self.path = path
        self.fd: int | None = None
        created = False
        while True:
            try:
                self.fd, self.version, self.epoch = _open_paired(path, os.O_RDWR)
                break
            except FileNotFoundError:
                if not create:
                    raise
            try:
                fd = _os_call(path, (0, None),
                              lambda: os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                continue  # created meanwhile: open what is there
            self.fd = fd
            # The path may keep a version from before an unlink: the handle
            # rests on that one, and a commit makes it one more.
            self.version = _xattr_int(fd, VERSION_ATTR)
            self.epoch = _xattr_int(fd, EPOCH_ATTR)
            created = True
            break
        self.exists = not created
        self.data = b"" if created else _read_all(self.fd)

    def commit(self, new: bytes) -> Versioned:
        assert self.fd is not None
        fd, rested = self.fd, (self.version, self.epoch)
        # Write before truncating: if the mount refuses the write, the refused
        # bytes are kept under .fencefs/rejected/ (a refused truncate keeps none).
        _os_call(self.path, rested, lambda: _write_all(fd, new))
        _os_call(self.path, rested, lambda: os.ftruncate(fd, len(new)))
        _os_call(self.path, rested, lambda: os.fsync(fd))  # the commit
        self.close()
        return Versioned(new, self.version + 1, self.epoch)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            # A handle that was never written commits nothing at close; one
            # whose write or fsync was refused repeats that refusal here.
            with contextlib.suppress(OSError):
                os.close(fd)


def _fence_read(path: str) -> Versioned:
    fd, version, epoch = _open_paired(path, os.O_RDONLY)
    try:
        return Versioned(_read_all(fd), version, epoch)
    finally:
        os.close(fd)



def _current(path: str) -> tuple[int | None, int | None]:
    """The path's current (version, epoch), or Nones: for error reports only."""
    try:
        if is_fencefs(path):
            return _xattr_int(path, VERSION_ATTR), _xattr_int(path, EPOCH_ATTR)
        with _dir_lock(path, fcntl.LOCK_SH):
            state = _local_state(path)
        return state.version, state.epoch
    except OSError:
        return None, None


def _refusal(cls: type[FenceError], path: str, version: int | None,
             epoch: int | None) -> FenceError:
    cv, ce = _current(path)
    return cls(path, rested_version=version, rested_epoch=epoch,
               current_version=cv, current_epoch=ce)



def _begin(path: str, create: bool) -> _Txn:
    return _FenceTxn(path, create) if is_fencefs(path) else _LocalTxn(path, create)


# -- the API -------------------------------------------------------------------


def read_versioned(path: str | os.PathLike[str]) -> Versioned:
    """The file's content with the version and epoch it belongs to.

    ``(data, version, epoch)`` are one consistent snapshot: the content is
    exactly that version's. Raises ``FileNotFoundError`` for a missing file.
    """
    p = os.fspath(path)
    if is_fencefs(p):
        return _fence_read(p)
    read, exists = _local_read(p)
    if not exists:
        raise FileNotFoundError(_errno.ENOENT, os.strerror(_errno.ENOENT), p)
    return read


Backoff = float | Callable[[int], float]


def _sleep_for(backoff: Backoff, attempt: int) -> float:
    if callable(backoff):
        return backoff(attempt)
    return min(1.0, backoff * (2 ** attempt)) * random.uniform(0.5, 1.5)


def update(
    path: str | os.PathLike[str],
    fn: Callable[[bytes], bytes | None],
    *,
    retries: int = 8,
    backoff: Backoff = 0.01,
    create: bool = False,
) -> Versioned:
    """Read-modify-write ``path`` as one fenced commit, retrying on conflicts.

    Opens the file once for read-write, reads it, calls ``fn(old_bytes)``,
    writes what it returns and commits through that same handle. If the file
    moved meanwhile (``FenceConflict``), the whole step is repeated on fresh
    content, up to ``retries`` more times, sleeping ``backoff`` seconds
    (doubled each time, with jitter; or ``backoff(attempt)`` if callable)
    before each; the last conflict is raised. ``Fenced`` and ``ClaimBusy`` are
    raised at once. ``fn`` may run several times, so it must not have side
    effects that cannot be repeated; if it returns ``None`` or the old bytes
    unchanged nothing is written. With ``create``, a missing file reads as
    ``b""`` and is created by the commit (if someone else creates it first,
    that is a conflict). Returns the committed ``(data, version, epoch)``.
    """
    p = os.fspath(path)
    attempt = 0
    while True:
        txn = _begin(p, create)
        try:
            new = fn(txn.data)
            if new is None or (new == txn.data and txn.exists):
                return Versioned(txn.data, txn.version, txn.epoch)
            return txn.commit(bytes(new))
        except FenceConflict:
            if attempt >= retries:
                raise
        finally:
            txn.close()
        time.sleep(_sleep_for(backoff, attempt))
        attempt += 1


def replace(
    path: str | os.PathLike[str],
    data: bytes | Callable[[bytes], bytes],
    *,
    version: int,
    epoch: int | None = None,
) -> Versioned:
    """Commit ``data`` only if the file is still at ``version`` (and ``epoch``).

    The compare-and-swap for code that read the file earlier (with
    ``read_versioned``) and wants its write judged against that read.
    ``version=0`` also accepts a missing file, which the commit creates.
    ``data`` may be a function of the current bytes (called once, after the
    check), for formats that carry something over. Raises ``FenceConflict``
    if the file moved (no retry: the caller must read again and recompute),
    ``Fenced`` if ``epoch`` was given and a reclaim has moved it. Returns the
    committed ``(data, version, epoch)``.
    """
    p = os.fspath(path)
    txn = _begin(p, create=version == 0)
    try:
        if txn.exists or version != 0:
            if epoch is not None and txn.epoch != epoch:
                raise Fenced(p, rested_version=version, rested_epoch=epoch,
                             current_version=txn.version, current_epoch=txn.epoch)
            if not txn.exists or txn.version != version:
                raise FenceConflict(p, rested_version=version, rested_epoch=epoch,
                                    current_version=txn.version, current_epoch=txn.epoch)
        new = data(txn.data) if callable(data) else data
        return txn.commit(bytes(new))
    finally:
        txn.close()


def reclaim(path: str | os.PathLike[str]) -> int:
    """Revoke every claim on ``path`` (epoch + 1); returns the new epoch.

    On a mount this is ``setfattr -n user.fencefs.reclaim -v 1``; under the
    fallback it bumps the epoch in the sidecar, so commits resting on the old
    epoch raise ``Fenced``.
    """
    p = os.fspath(path)
    if is_fencefs(p):
        os.setxattr(p, wire.RECLAIM, b"1")
        return _xattr_int(p, EPOCH_ATTR)
    with _dir_lock(p, fcntl.LOCK_EX):
        state = _local_state(p)
        if not state.exists:
            raise FileNotFoundError(_errno.ENOENT, os.strerror(_errno.ENOENT), p)
        _write_sidecar(p, state.version, state.epoch + 1, _fingerprint(os.stat(p)))
        return state.epoch + 1


def claim_state(path: str | os.PathLike[str]) -> ClaimState:
    """The claim state from the ``user.fencefs.*`` attributes (or the fallback's sidecar)."""
    p = os.fspath(path)
    if is_fencefs(p):
        def get(name: str) -> bytes:
            return os.getxattr(p, name)

        return ClaimState(path=p, version=int(get(wire.VERSION)), epoch=int(get(wire.EPOCH)),
                          policy=get(wire.POLICY).decode(),
                          claims=wire.parse_claims(get(wire.CLAIMS)),
                          own=wire.parse_claims(get(wire.CLAIM)), fencefs=True)
    with _dir_lock(p, fcntl.LOCK_SH):
        state = _local_state(p)
    if not state.exists:
        raise FileNotFoundError(_errno.ENOENT, os.strerror(_errno.ENOENT), p)
    return ClaimState(path=p, version=state.version, epoch=state.epoch, policy="optimistic",
                      claims=(), own=(), fencefs=False)


async def aread_versioned(path: str | os.PathLike[str]) -> Versioned:
    """``read_versioned`` on a worker thread."""
    return await asyncio.to_thread(read_versioned, path)


async def aupdate(
    path: str | os.PathLike[str],
    fn: Callable[[bytes], bytes | None],
    *,
    retries: int = 8,
    backoff: Backoff = 0.01,
    create: bool = False,
) -> Versioned:
    """``update`` on a worker thread (``fn`` runs there too)."""
    return await asyncio.to_thread(update, path, fn, retries=retries, backoff=backoff,
                                   create=create)


async def areplace(path: str | os.PathLike[str], data: bytes | Callable[[bytes], bytes], *,
                   version: int,
                   epoch: int | None = None) -> Versioned:
    """``replace`` on a worker thread."""
    return await asyncio.to_thread(replace, path, data, version=version, epoch=epoch)
