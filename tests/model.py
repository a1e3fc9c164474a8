"""A reference model of fencefs, written from the TLA+ specs, not from the code.

Every method is one action of specs/Fencing.tla, specs/Observation.tla or
specs/Leases.tla (the names are the specs'); the docstrings say which, and
where the model adds something the specs abstract away (bytes instead of
sets of appends, a dirty flag, paths that can be unlinked, kills). Each
action returns what the call must answer: None (or the bytes read) for
success, else the errno. The model never looks at fencefs.

Ghost state, as in Observation.tla: ``know`` is what each identity really
read (the version its copy is), from which its next rewrite is computed.
``lost`` collects every commit whose content was computed from a version
older than the one it replaced: ``NoLostUpdate`` says it stays empty. The
known gap ``gaps/Observation_CrashForgetsObservations`` (claims are
volatile, so after a restart an identity that read before the crash writes
blind) shows up there with cause ``"restart"`` (shown by
tests/test_model_based.py::test_restart_forgets_what_was_read), and
``gaps/Observation_UpdateFromOldRead`` (an O_RDWR handle that writes over
content it never read) with cause ``"update"``; the machines allow only
these two causes.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

OPTIMISTIC, EXCLUSIVE = "optimistic", "exclusive"
MODES = ("rewrite", "update", "append")  # Observation.tla's Modes


@dataclass
class File:
    version: int = 0
    epoch: int = 0
    content: bytes = b""
    exists: bool = True
    policy: str = OPTIMISTIC


@dataclass
class Handle:
    """A write handle: its claim (version, epoch) and what it reads."""

    file: str
    ident: str
    version: int
    epoch: int
    mode: str
    base: bytes  # the content it was served (at open, or its own last commit)
    draft: bytes | None  # its own uncommitted bytes; None: none yet
    base_from: int  # the version its next content is computed from (ghost)
    dirty: bool = False
    error: int | None = None  # a refused handle repeats its errno from then on
    expired: bool = False  # Leases.tla: the lease ran out
    observed: bool = False  # a read through it recorded an observation
    orphan: bool = False  # its path was unlinked: its claim left the file's table


@dataclass
class Model:
    files: dict[str, File] = field(default_factory=dict)
    handles: dict[int, Handle] = field(default_factory=dict)
    obs: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    know: dict[tuple[str, str], int] = field(default_factory=dict)
    restarted: set[tuple[str, str]] = field(default_factory=set)  # reads before a crash
    lost: list[tuple[str, str, int, int, str]] = field(default_factory=list)

    # -- the guards (Decide, OpenCheck, Busy) --------------------------------

    def decide(self, name: str, version: int, epoch: int, append: bool) -> int | None:
        """Decide(f, c): EpochGuard, then VersionGuard unless an append."""
        f = self.files[name]
        if epoch != f.epoch:
            return errno.ESTALE
        if not append and version != f.version:
            return errno.EAGAIN
        return None

    def _decide_handle(self, h: Handle) -> int | None:
        if not self.files[h.file].exists:
            # The path the claim rests on is gone (unlinked): it moved past
            # every claim on it, appends included (docs/guide.md).
            return errno.EAGAIN
        return self.decide(h.file, h.version, h.epoch, h.mode == "append")

    def valid(self, h: Handle) -> bool:
        """Leases.tla Valid: made under the file's current epoch. (A handle
        refused as a conflict still holds its claim until it is closed: the
        specs close it in the step that refuses it.)"""
        return h.epoch == self.files[h.file].epoch and not h.orphan

    def busy(self, ident: str, name: str) -> bool:
        """Leases.tla Busy: an exclusive file another identity holds live."""
        return self.files[name].policy == EXCLUSIVE and any(
            h.file == name and h.ident != ident and self.valid(h) and not h.expired
            for h in self.handles.values())

    def _lands(self, ident: str, name: str, base_from: int, cause: str = "") -> None:
        """NoLostUpdate's history check, in the state the commit creates."""
        f = self.files[name]
        if base_from != f.version:
            why = cause or ("restart" if (ident, name) in self.restarted else "model")
            self.lost.append((ident, name, base_from, f.version, why))

    def _computed_from(self, ident: str, name: str) -> int:
        """What a rewrite by ``ident`` is computed from: what it read, else
        (blind) the version current now."""
        return self.know.get((ident, name), self.files[name].version)

    # -- actions -------------------------------------------------------------

    def create(self, name: str) -> None:
        """A new path (not a commit): version and epoch 0, or, for a path
        that was unlinked, the ones its unlink left."""
        f = self.files.setdefault(name, File())
        f.exists = True

    def Observe(self, ident: str, name: str) -> bytes | int:
        """A read by path: records the served (version, epoch)."""
        f = self.files[name]
        if not f.exists:
            return errno.ENOENT
        self.obs[(ident, name)] = (f.version, f.epoch)
        self.know[(ident, name)] = f.version
        self.restarted.discard((ident, name))
        return f.content

    def ReadHandle(self, hid: int) -> bytes | int:
        """A read through a write handle (G4): its own draft if it has one;
        else the content it was served, which is an observation of the
        version it was served (Observation.tla Observe: "a read through an
        older handle records an older version")."""
        h = self.handles[hid]
        if h.error is not None:
            return h.error
        if h.draft is not None:
            return h.base + h.draft if h.mode == "append" else h.draft
        self.obs[(h.ident, h.file)] = (h.version, h.epoch)
        self.know[(h.ident, h.file)] = h.version
        self.restarted.discard((h.ident, h.file))
        h.observed = True
        return h.base

    def OpenWrite(self, hid: int, ident: str, name: str, mode: str) -> int | None:
        """Leases.tla OpenWrite (Busy; LeaseExpiredReclaim), then
        Observation.tla OpenWrite (OpenCheck for a rewrite)."""
        f = self.files[name]
        if not f.exists:
            return errno.ENOENT
        if self.busy(ident, name):
            return errno.EBUSY
        if f.policy == EXCLUSIVE and any(
                h.file == name and h.ident != ident and self.valid(h)
                for h in self.handles.values()):
            self.Reclaim(name)  # every other valid claim has expired: take over
        seen = self.obs.get((ident, name))
        if mode == "rewrite" and seen is not None:
            error = self.decide(name, seen[0], seen[1], append=False)
            if error is not None:
                return error
        base_from = self._computed_from(ident, name) if mode == "rewrite" else f.version
        self.handles[hid] = Handle(
            name, ident, f.version, f.epoch, mode, base=f.content,
            draft=b"" if mode == "rewrite" else None, base_from=base_from,
            dirty=mode == "rewrite")
        return None

    def Renew(self, hid: int, data: bytes) -> int | None:
        """write(): Leases.tla Renew. A refused write ends the handle."""
        h = self.handles[hid]
        if h.error is not None:
            return h.error
        error = self._decide_handle(h)
        if error is not None:
            h.error, h.dirty, h.draft = error, False, None
            return error
        if h.mode == "append":
            h.draft = (h.draft or b"") + data
        else:  # pwrite at offset 0 over what it reads
            old = h.base if h.draft is None else h.draft
            h.draft = data + old[len(data):]
        h.dirty, h.expired = True, False
        return None

    def Commit(self, hid: int) -> int | None:
        """fsync, or the close that commits: Fencing.tla Commit (the handle
        stays open and rests on the version it made), with Observation.tla's
        ObsAfterCommit and AppendedContent; it renews the lease."""
        h = self.handles[hid]
        if h.error is not None:
            return h.error
        if not h.dirty:
            return None
        error = self._decide_handle(h)
        if error is not None:
            h.error, h.dirty, h.draft = error, False, None
            return error
        f = self.files[h.file]
        key = (h.ident, h.file)
        before = f.version
        if h.mode != "append":
            computed, cause = h.base_from, ""
            if h.mode == "update" and not h.observed and \
                    self.know.get(key, computed) != computed:
                # Bytes written over content never read, by an identity that
                # read an older version: gaps/Observation_UpdateFromOldRead.
                computed, cause = self.know[key], "update"
            self._lands(h.ident, h.file, computed, cause)
        new = f.content + (h.draft or b"") if h.mode == "append" else (h.draft or b"")
        # ObsAfterCommit: the observation moves only if it rested on the
        # version (and epoch) replaced, or the commit was not an append.
        seen = self.obs.get(key)
        if seen is not None and (h.mode != "append" or seen == (before, f.epoch)):
            self.obs[key] = (before + 1, f.epoch)
        if key in self.know and (h.mode != "append" or self.know[key] == before):
            self.know[key] = before + 1  # it knows what it made
        f.content, f.version = new, before + 1
        h.version, h.base, h.draft, h.base_from = f.version, new, None, f.version
        h.dirty, h.expired = False, False
        return None

    def Release(self, hid: int) -> None:
        del self.handles[hid]

    def Close(self, hid: int) -> int | None:
        """close(): the commit of a dirty handle, then Release."""
        result = self.Commit(hid)
        self.Release(hid)
        return result

    def Kill(self, ident: str) -> None:
        """G7: the identity's process dies by a signal: its handles go away
        without a commit (their bytes go to rejected/). Observations of a
        named agent stay (the agent lives on in its next process)."""
        for hid in [k for k, h in self.handles.items() if h.ident == ident]:
            del self.handles[hid]

    def CommitPath(self, ident: str, name: str, kind: str, data: bytes = b"",
                   size: int = 0) -> int | None:
        """Observation.tla CommitPath: rename over (``data`` becomes the
        content), truncate (to ``size``), unlink. It rests on the identity's
        observation, or blind on the current version. Under exclusive it is
        kept out like an open (contract: a live write claim keeps other
        writers out)."""
        f = self.files[name]
        if not f.exists:
            return errno.ENOENT
        if self.busy(ident, name):
            return errno.EBUSY
        seen = self.obs.get((ident, name))
        base = seen if seen is not None else (f.version, f.epoch)
        error = self.decide(name, base[0], base[1], append=False)
        if error is not None:
            return error
        key = (ident, name)
        self._lands(ident, name, self._computed_from(ident, name))
        if kind == "rename":
            f.content = data
        elif kind == "truncate":
            f.content = f.content[:size] + b"\0" * max(0, size - len(f.content))
        else:
            f.content, f.exists = b"", False
            for h in self.handles.values():
                if h.file == name:
                    h.orphan = True  # it holds the file no more (EBUSY)
        f.version += 1
        if seen is not None:
            self.obs[key] = (f.version, seen[1])
        if key in self.know:
            self.know[key] = f.version
        return None

    def Reclaim(self, name: str) -> None:
        self.files[name].epoch += 1

    def AdoptForeign(self, name: str, data: bytes) -> None:
        """A write straight into the backing file becomes a version."""
        f = self.files[name]
        f.content, f.version = data, f.version + 1

    def SetPolicy(self, name: str, policy: str) -> None:
        self.files[name].policy = policy

    def Expire(self, hid: int) -> None:
        """Leases.tla Expire: time passes, the handle's lease runs out."""
        self.handles[hid].expired = True

    def Sweep(self, name: str) -> bool:
        """Leases.tla Sweep: reclaim a file holding a valid expired claim."""
        if any(h.file == name and self.valid(h) and h.expired for h in self.handles.values()):
            self.Reclaim(name)
            return True
        return False

    def Crash(self) -> None:
        """Crash then Restart (Fencing.tla, Observation.tla): every claim,
        write handles and observations, is volatile; versions, epochs,
        content and policies are persisted. What a program read stays in the
        program (``know``): NoLostUpdate is then the known gap."""
        self.handles.clear()
        self.restarted |= set(self.obs)
        self.obs.clear()
