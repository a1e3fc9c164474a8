"""fencefs.client: typed errors and fenced read-modify-write for programs.

Plain file I/O and the standard library only: no trio, no pyfuse3, so it works
from threads and (through the ``a``-prefixed functions, which run the same
code on a worker thread) from asyncio.

On a fencefs mount every function here is ordinary file I/O on the mount:
``update`` opens the file once for read-write, reads, computes, writes and
commits (``fsync``) through that one handle, so the handle's own claim is
judged at the commit, whatever else the process's other threads or tasks do.
The mount's errnos come back as exceptions: ``FenceConflict`` (``EAGAIN``),
``Fenced`` (``ESTALE``), ``ClaimBusy`` (``EBUSY``).

On any other directory the same API works through a local fallback, meant for
developing without FUSE (see ``docs/adapters.md``): each file's version and
epoch are kept beside it in a hidden sidecar ``.NAME.fencefs-version``, and a
commit takes the directory's lock (``flock`` on ``.fencefs-local.lock``),
checks the version and epoch, writes a temporary file, fsyncs it and renames
it over the file. It raises the same errors on a stale version. It fences
only writers that use this library (a plain ``open(path, "w")`` bypasses it),
and it knows no claims, policies or leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as _errno
import fcntl
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from fencefs import wire
from fencefs.wire import ClaimInfo

__all__ = [
    "ClaimBusy",
    "ClaimInfo",
    "ClaimState",
    "FenceConflict",
    "FenceError",
    "Fenced",
    "Versioned",
    "aread_versioned",
    "areplace",
    "aupdate",
    "claim_state",
    "is_fencefs",
    "read_versioned",
    "reclaim",
    "replace",
    "transaction",
    "update",
    "update_many",
]

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


# -- local fallback ------------------------------------------------------------


def _sidecar(path: str) -> str:
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}{SIDECAR_SUFFIX}")


@contextlib.contextmanager
def _dir_lock(path: str, how: int) -> Iterator[None]:
    """``flock`` on the directory's lock file. flock (not fcntl) locks belong
    to the open file description, so they also keep threads of one process
    apart."""
    lock = os.path.join(os.path.dirname(path) or ".", LOCK_NAME)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)  # releases the lock


class _LocalState(NamedTuple):
    version: int
    epoch: int
    exists: bool
    adopted: bool  # the data changed behind the sidecar's back (or has none)


def _fingerprint(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _local_state(path: str) -> _LocalState:
    """The file's version and epoch under the fallback; the caller holds the lock.

    A sidecar remembers the fingerprint (inode, size, mtime) of the content its
    version belongs to. Content that does not match (written without this
    library, or left by a commit interrupted between its two renames) counts as
    one version more, so versions never go down and nothing resting on the old
    version can commit.
    """
    try:
        with open(_sidecar(path)) as f:
            side = json.load(f)
        version, epoch, fp = int(side["version"]), int(side["epoch"]), side.get("fp")
    except FileNotFoundError:
        version, epoch, fp = 0, 0, None
    except (ValueError, KeyError, TypeError):
        version, epoch, fp = 0, 0, None  # unreadable: treat as a foreign file
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _LocalState(version, epoch, False, False)
    if fp == _fingerprint(st):
        return _LocalState(version, epoch, True, False)
    return _LocalState(version + 1, epoch, True, True)


def _write_sidecar(path: str, version: int, epoch: int, fp: list[int] | None) -> None:
    side = _sidecar(path)
    tmp = f"{side}{_TMP_MARK}{os.getpid()}.{random.getrandbits(32):08x}"
    with open(tmp, "w") as f:
        json.dump({"version": version, "epoch": epoch, "fp": fp}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, side)


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _local_read(path: str) -> tuple[Versioned, bool]:
    """(content, version, epoch) under the lock, and whether the file exists."""
    with _dir_lock(path, fcntl.LOCK_SH):
        state = _local_state(path)
        if not state.adopted:
            data = _read_file(path) if state.exists else b""
            return Versioned(data, state.version, state.epoch), state.exists
    with _dir_lock(path, fcntl.LOCK_EX):  # record the adoption, so it stays put
        state = _local_state(path)
        if state.adopted:
            st = os.stat(path)
            _write_sidecar(path, state.version, state.epoch, _fingerprint(st))
        data = _read_file(path) if state.exists else b""
        return Versioned(data, state.version, state.epoch), state.exists


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class _LocalTxn(_Txn):
    """Read under the lock; commit is compare-and-swap under the lock."""

    def __init__(self, path: str, create: bool) -> None:
        self.path = path
        read, self.exists = _local_read(path)
        if not self.exists and not create:
            raise FileNotFoundError(_errno.ENOENT, os.strerror(_errno.ENOENT), path)
        self.data, self.version, self.epoch = read
        if not self.exists:
            self.version = 0  # as on the mount: a missing file reads as version 0

    def commit(self, new: bytes) -> Versioned:
        path = self.path
        with _dir_lock(path, fcntl.LOCK_EX):
            state = _local_state(path)
            rested = (self.version, self.epoch)
            if self.exists:
                if state.epoch != self.epoch:
                    raise Fenced(path, rested_version=self.version, rested_epoch=self.epoch,
                                 current_version=state.version, current_epoch=state.epoch)
                if not state.exists or state.version != self.version:
                    raise FenceConflict(path, rested_version=self.version,
                                        rested_epoch=self.epoch,
                                        current_version=state.version,
                                        current_epoch=state.epoch)
            elif state.exists:  # it was missing, and someone created it meanwhile
                raise FenceConflict(path, rested_version=rested[0], rested_epoch=rested[1],
                                    current_version=state.version, current_epoch=state.epoch)
            tmp = f"{os.path.join(os.path.dirname(path), '.' + os.path.basename(path))}" \
                  f"{_TMP_MARK}{os.getpid()}.{random.getrandbits(32):08x}"
            try:
                with open(tmp, "wb") as f:
                    f.write(new)
                    f.flush()
                    os.fsync(f.fileno())
                    fp = _fingerprint(os.fstat(f.fileno()))
                try:
                    os.chmod(tmp, os.stat(path).st_mode & 0o7777)
                except FileNotFoundError:
                    pass
                version = state.version + 1
                # The sidecar first, naming the new content's fingerprint: a crash
                # between the two renames leaves old content that no longer
                # matches, which then counts as a version more (never less).
                _write_sidecar(path, version, state.epoch, fp)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            _fsync_dir(path)
        return Versioned(new, version, state.epoch)


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


# -- multi-file commits ----------------------------------------------------------


class Transaction:
    """Several files read and written as one commit: all land, or none.

    Made by ``transaction(MOUNTPOINT)``. ``read(path)`` returns a file's
    bytes and records, for this program, what the commit will rest on;
    ``write(path, data)`` and ``delete(path)`` stage changes; ``commit()``
    (run on leaving the ``with`` block without an exception) commits them
    all or none. Paths are relative to the mount point.

    On a fencefs mount the commit is a staging directory
    (``MOUNT/.fencefs/txn/NAME``) committed by ``user.fencefs.commit``: the
    daemon checks every file's guard in one step. A refusal raises
    ``FenceConflict`` or ``Fenced`` whose ``moved`` names every file that
    moved; the refused bytes are kept under ``.fencefs/rejected/``. Under the
    local fallback the commit takes the lock of every directory involved,
    checks every version, then replaces the files one by one: all or none
    among writers using this library, but a crash in the middle can leave
    some files replaced (the mount rolls such a crash forward; the fallback
    cannot).
    """

    def __init__(self, mountpoint: str | os.PathLike[str], *, name: str | None = None) -> None:
        self.root = os.path.abspath(os.fspath(mountpoint))
        self.fencefs = is_fencefs(self.root)
        self.name = name or f"py-{os.getpid()}-{random.getrandbits(40):010x}"
        self.reads: dict[str, tuple[int, int] | None] = {}  # None: the file was missing
        self.writes: dict[str, bytes] = {}
        self.deletes: set[str] = set()
        self.done = False

    def _path(self, rel: str | os.PathLike[str]) -> tuple[str, str]:
        text = os.fspath(rel).rstrip("/")
        parts = text.split("/")
        if (not text or text.startswith("/") or parts[0] == ".fencefs"
                or any(p in ("", ".", "..") for p in parts)):
            raise ValueError(f"{rel!r}: a transaction names files inside the mount "
                             f"(relative, no '..', not in .fencefs/)")
        return text, os.path.join(self.root, text)

    def read(self, rel: str | os.PathLike[str], default: bytes | None = None) -> bytes:
        """The file's bytes; ``default`` (if given) for a missing file."""
        key, path = self._path(rel)
        if key in self.writes:
            return self.writes[key]
        try:
            got = read_versioned(path)
        except FileNotFoundError:
            if default is None:
                raise
            self.reads[key] = None
            return default
        self.reads[key] = (got.version, got.epoch)
        return got.data

    def write(self, rel: str | os.PathLike[str], data: bytes | str) -> None:
        key, _ = self._path(rel)
        self.deletes.discard(key)
        self.writes[key] = data.encode() if isinstance(data, str) else bytes(data)

    def delete(self, rel: str | os.PathLike[str]) -> None:
        key, _ = self._path(rel)
        self.writes.pop(key, None)
        self.deletes.add(key)

    def commit(self) -> None:
        if self.done:
            raise RuntimeError("this transaction has already committed")
        self.done = True
        if not self.writes and not self.deletes:
            return
        if self.fencefs:
            self._commit_mount()
        else:
            self._commit_local()

    def _commit_mount(self) -> None:
        stage = os.path.join(self.root, wire.TXN_DIR, self.name)
        os.mkdir(stage)
        try:
            for key, data in self.writes.items():
                target = os.path.join(stage, key)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(data)
            if self.deletes:
                with open(os.path.join(stage, wire.DELETE_LIST), "w") as f:
                    f.write("".join(f"{k}\n" for k in sorted(self.deletes)))
            rests = {k: v for k, v in self.reads.items() if k in self.writes or k in self.deletes}
            if rests:  # exactly what this transaction read, missing files included
                with open(os.path.join(stage, wire.RESTS_LIST), "wb") as f:
                    f.write(wire.format_rests(rests))
            try:
                os.setxattr(stage, wire.COMMIT, b"1")
            except OSError as e:
                raise self._refused(stage, e) from e
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(stage)

    def _refused(self, stage: str, e: OSError) -> BaseException:
        """The typed error of a refused commit, with the files that moved.
        The daemon also keeps its answer as ``user.fencefs.result`` (a
        kernel may hand a setxattr's EAGAIN over as EOPNOTSUPP)."""
        try:
            code, _reason, moved = wire.parse_result(os.getxattr(stage, wire.RESULT))
        except OSError:
            code, moved = "", []
        cls = {"EAGAIN": FenceConflict, "ESTALE": Fenced}.get(code)
        if cls is None:
            return e
        first = moved[0] if moved else next(iter(self.writes or self.deletes))
        rested = self.reads.get(first)
        cv, ce = _current(os.path.join(self.root, first))
        err = cls(os.path.join(self.root, first),
                  rested_version=rested[0] if rested else None,
                  rested_epoch=rested[1] if rested else None,
                  current_version=cv, current_epoch=ce)
        err.moved = tuple(moved)
        return err

    def _commit_local(self) -> None:
        keys = sorted(set(self.writes) | self.deletes)
        dirs = sorted({os.path.dirname(os.path.join(self.root, k)) for k in keys})
        with contextlib.ExitStack() as stack:
            for d in dirs:
                os.makedirs(d, exist_ok=True)
                stack.enter_context(_dir_lock(os.path.join(d, "x"), fcntl.LOCK_EX))
            moved, fenced = [], False
            states = {}
            for key in keys:
                path = os.path.join(self.root, key)
                state = states[key] = _local_state(path)
                seen = self.reads.get(key, (state.version, state.epoch) if state.exists else None)
                if seen is None:
                    if state.exists:
                        moved.append(key)
                elif not state.exists or state.version != seen[0]:
                    moved.append(key)
                elif state.epoch != seen[1]:
                    moved.append(key)
                    fenced = True
            if moved:
                path = os.path.join(self.root, moved[0])
                rested = self.reads.get(moved[0])
                cls: type[FenceError] = Fenced if fenced else FenceConflict
                err = cls(path, rested_version=rested[0] if rested else None,
                          rested_epoch=rested[1] if rested else None,
                          current_version=states[moved[0]].version,
                          current_epoch=states[moved[0]].epoch)
                err.moved = tuple(moved)
                raise err
            for key in keys:
                path = os.path.join(self.root, key)
                state = states[key]
                if key in self.deletes:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    _write_sidecar(path, state.version + 1, state.epoch, None)
                    continue
                tmp = f"{os.path.join(os.path.dirname(path), '.' + os.path.basename(path))}" \
                      f"{_TMP_MARK}{os.getpid()}.{random.getrandbits(32):08x}"
                with open(tmp, "wb") as f:
                    f.write(self.writes[key])
                    f.flush()
                    os.fsync(f.fileno())
                    fp = _fingerprint(os.fstat(f.fileno()))
                _write_sidecar(path, state.version + 1, state.epoch, fp)
                os.replace(tmp, path)
            for d in dirs:
                _fsync_dir(os.path.join(d, "x"))

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and not self.done:
            self.commit()


def transaction(mountpoint: str | os.PathLike[str], *, name: str | None = None) -> Transaction:
    """``with transaction(MOUNT) as tx: data = tx.read("plan.md"); tx.write(...)``:
    commits every write on leaving the block, all or none (see ``Transaction``)."""
    return Transaction(mountpoint, name=name)


def update_many(
    mountpoint: str | os.PathLike[str],
    paths: list[str],
    fn: Callable[[dict[str, bytes]], dict[str, bytes | None] | None],
    *,
    retries: int = 8,
    backoff: Backoff = 0.01,
) -> dict[str, bytes]:
    """Read-modify-write several files as one commit, retrying on conflicts.

    ``fn`` gets every file's current bytes (``b""`` for a missing file) and
    returns the new bytes of the files it changes (a value of ``None``
    deletes that file; files it leaves out stay as they are). If any file
    moved meanwhile (``FenceConflict``) the whole step is repeated on fresh
    content, as ``update`` does; ``Fenced`` is raised at once. ``fn`` may
    run several times. Returns the committed contents of the files ``fn``
    changed.
    """
    attempt = 0
    while True:
        tx = transaction(mountpoint)
        old = {p: tx.read(p, default=b"") for p in paths}
        new = fn(dict(old)) or {}
        for p, data in new.items():
            if data is None:
                tx.delete(p)
            elif data != old.get(p):
                tx.write(p, data)
        try:
            tx.commit()
            return dict(tx.writes)
        except FenceConflict:
            if attempt >= retries:
                raise
        time.sleep(_sleep_for(backoff, attempt))
        attempt += 1
