"""Reads, and the observation claims they record.

A read through a fenced handle serves the committed version the handle
opened (or the handle's own draft, G4) and records, for the reading
identity, the (version, epoch) it was served: a later rewrite by the same
identity is judged against it (see the contract's "Observation claims").
"""

from __future__ import annotations

import os
import stat

from fencefs.engine.coordination import Coordination
from fencefs.engine.files import FileTable
from fencefs.engine.handles import Handle
from fencefs.engine.writers import HandleFailed


class Readers:
    def __init__(self, coord: Coordination, files: FileTable) -> None:
        self.coord = coord
        self.files = files
        # Reading processes per identity (named agents excepted): an identity
        # whose processes all exited loses its observation claims (prune).
        self.identity_pids: dict[str, set[int]] = {}

    def read(self, handle: Handle, off: int, size: int) -> bytes:
        if handle.error is not None:
            raise HandleFailed(handle.error, os.strerror(handle.error))
        if handle.draft is not None and not (handle.claim and handle.claim.append):
            return os.pread(handle.draft.fd, size, off)
        if handle.draft is not None:
            return self._read_appending(handle, off, size)
        if handle.base_fd is None:
            return b""
        data = os.pread(handle.base_fd, size, off)
        if not handle.meta and not handle.dirty and self._unrecorded(handle):
            self.observe(handle)
        return data

    def _unrecorded(self, handle: Handle) -> bool:
        """Whether the identity's observation is not what this handle serves:
        a read through a handle opened before a commit records that older
        version again, even after a newer read by path (Observation.tla
        Observe), or a rewrite computed from these bytes would land."""
        if handle.served != handle.observed:
            return True
        file = self.coord.get(handle.path)
        seen = file.readers.get(handle.caller.identity) if file is not None else None
        return seen is None or (seen.version, seen.epoch) != handle.served

    @staticmethod
    def _read_appending(handle: Handle, off: int, size: int) -> bytes:
        """An appending handle reads its own appends after the content it
        opened (where they would land if it committed now)."""
        assert handle.draft is not None
        base = os.fstat(handle.base_fd).st_size if handle.base_fd is not None else 0
        data = b""
        if off < base:
            assert handle.base_fd is not None
            data = os.pread(handle.base_fd, min(size, base - off), off)
            if off + len(data) < base:
                return data
        if len(data) < size:
            data += os.pread(handle.draft.fd, size - len(data), max(off - base, 0))
        return data

    def observe(self, handle: Handle) -> None:
        """Record what this handle serves, once per version (reads are hot)."""
        assert handle.served is not None
        if self.coord.get(handle.path) is None:  # gone cold meanwhile: warm it up
            try:
                st = self.files.backing.lstat(handle.path)
            except FileNotFoundError:
                return  # unlinked: nothing to judge a later write against
            if not stat.S_ISREG(st.st_mode):
                return
            self.files.file(handle.path, st)
        version, epoch = handle.served
        caller = handle.caller
        self.coord.observe(handle.path, caller.identity, caller.pid, version, epoch)
        handle.observed = handle.served
        if not caller.identity.startswith("agent:"):
            # A named agent outlives the tools that read for it (a `cat`
            # exits at once): its reads are dropped only by the table's cap.
            self.identity_pids.setdefault(caller.identity, set()).add(caller.pid)
