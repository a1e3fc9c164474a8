"""A reference model of fencefs, written from the actions of specs/Fencing.tla
and specs/Observation.tla, for the model-based tests.

It knows nothing of fencefs's code: it says what every call must return
(None for success, or the errno) and what the files must hold afterwards.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field


@dataclass
class File:
    version: int = 0
    epoch: int = 0
    content: bytes = b""


@dataclass
class Handle:
    file: str
    ident: str
    version: int
    epoch: int
    mode: str  # "rw", "trunc" or "append"
    content: bytes  # what the handle reads: its draft, else its base
    dirty: bool = False
    error: int | None = None


@dataclass
class Model:
    files: dict[str, File] = field(default_factory=dict)
    handles: dict[int, Handle] = field(default_factory=dict)
    observed: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    # -- guards (decide) ----------------------------------------------------

    def _decide(self, f: File, version: int, epoch: int, append: bool) -> int | None:
        if epoch != f.epoch:
            return errno.ESTALE  # EpochGuard
        if not append and version != f.version:
            return errno.EAGAIN  # VersionGuard
        return None

    def _refuse(self, h: Handle) -> int | None:
        """A handle that can no longer commit is dead from then on."""
        f = self.files[h.file]
        error = self._decide(f, h.version, h.epoch, append=h.mode == "append")
        if error is not None:
            h.error, h.dirty = error, False
        return error

    # -- actions ------------------------------------------------------------

    def create(self, name: str) -> None:
        self.files.setdefault(name, File())

    def observe(self, ident: str, name: str) -> bytes:
        f = self.files[name]
        self.observed[(ident, name)] = (f.version, f.epoch)
        return f.content

    def open_write(self, hid: int, ident: str, name: str, mode: str) -> int | None:
        f = self.files[name]
        seen = self.observed.get((ident, name))
        if mode == "trunc" and seen is not None:
            error = self._decide(f, seen[0], seen[1], append=False)
            if error is not None:
                return error
        content = b"" if mode in ("trunc", "append") else f.content
        self.handles[hid] = Handle(name, ident, f.version, f.epoch, mode, content,
                                   dirty=mode == "trunc")
        return None

    def write(self, hid: int, data: bytes) -> int | None:
        h = self.handles[hid]
        if h.error is not None:
            return h.error
        error = self._refuse(h)
        if error is not None:
            return error
        if h.mode == "append":
            h.content += data
        else:  # pwrite at offset 0
            h.content = data + h.content[len(data):]
        h.dirty = True
        return None

    def commit(self, hid: int) -> int | None:
        """fsync, or the close of the opener's only descriptor."""
        h = self.handles[hid]
        if h.error is not None:
            return h.error
        if not h.dirty:
            return None
        error = self._refuse(h)
        if error is not None:
            return error
        f = self.files[h.file]
        f.content = f.content + h.content if h.mode == "append" else h.content
        before = f.version
        f.version += 1
        h.version = f.version
        h.dirty = False
        if h.mode == "append":
            h.content = b""
        key = (h.ident, h.file)
        # The writer knows what it made, except that an append onto content
        # it never read leaves what it did read stale.
        if key in self.observed and (h.mode != "append"
                                     or self.observed[key] == (before, f.epoch)):
            self.observed[key] = (f.version, f.epoch)
        return None

    def close(self, hid: int) -> int | None:
        result = self.commit(hid)
        del self.handles[hid]
        return result

    def reclaim(self, name: str) -> None:
        self.files[name].epoch += 1

    def restart(self) -> None:
        """Crash/Restart with no handle open: claims are volatile."""
        assert not self.handles
        self.observed.clear()
