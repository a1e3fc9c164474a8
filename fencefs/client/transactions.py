"""Several files at once: ``transaction(MOUNTPOINT)`` and ``update_many``.
All land, or none (see docs/guide.md, "Several files at once")."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import time
from collections.abc import Callable

from fencefs import wire
from fencefs.client.base import (
    _TMP_MARK,
    FenceConflict,
    Fenced,
    FenceError,
    is_fencefs,
)
from fencefs.client.fallback import (
    _dir_lock,
    _fingerprint,
    _fsync_dir,
    _local_state,
    _write_sidecar,
)
from fencefs.client.files import (
    Backoff,
    _current,
    _sleep_for,
    read_versioned,
)

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
