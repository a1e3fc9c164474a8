"""The local fallback: a directory that is not a fencefs mount gets the same
API from sidecar version files, a lock per directory and atomic replace."""

from __future__ import annotations

import contextlib
import errno as _errno
import fcntl
import json
import os
import random
from collections.abc import Iterator
from typing import NamedTuple

from fencefs.client.base import (
    _TMP_MARK,
    LOCK_NAME,
    SIDECAR_SUFFIX,
    FenceConflict,
    Fenced,
    Versioned,
    _Txn,
)

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
