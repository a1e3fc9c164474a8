"""Multi-file commits: every member's guard decided in one step (G9).

Pure and synchronous, like the rest of the core. ``commit_many`` is the
``CommitMany`` action of ``specs/Transactions.tla``: it runs ``decide`` on
every member of a transaction (epoch guard, then version guard, each against
what that member rests on) and either calls ``install_all`` once with the
whole plan and then advances every file, or changes nothing and raises
``TxnRefused`` naming every member that moved. There is no partial outcome:
a transaction whose first member passes and whose second is stale installs
nothing (the ``Transactions_FirstGuardOnly`` mutant shows what goes wrong
otherwise).

The caller loads every member's ``FileState`` (or learns that the path is
absent) and calls ``commit_many`` with no ``await`` in between, so the
decision and the install are one step, as for single files (G3). The same
step maps to one etcd transaction across hosts: one compare per member (the
file's epoch and version keys), and on success one put per member.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fencefs.core.coordinator import decide
from fencefs.core.errors import BadValue, Conflict, Fenced, FenceError
from fencefs.core.model import Claim, FileState, Kind, Persisted


@dataclass(frozen=True, slots=True)
class Member:
    """One file of a transaction and what its draft rests on.

    ``version``/``epoch``: the identity's observation of the path, or, if it
    never read it, the file's state when the draft was first staged (a blind
    write). ``exists`` is False when the path was absent then: the member
    creates the file, and conflicts if someone else created it meanwhile.
    ``delete``: the member removes the file instead of writing it.
    ``content``: the name of its draft (or delete marker), which a
    distributed store records for roll-forward; one host needs it not.
    """

    path: str
    version: int
    epoch: int
    exists: bool = True
    delete: bool = False
    content: str = ""


@dataclass(frozen=True, slots=True)
class Planned:
    """What ``install_all`` must make durable for one member."""

    path: str
    version: int  # the version the new content carries (unused for a delete)
    epoch: int
    delete: bool


@dataclass(frozen=True, slots=True)
class Refusal:
    """A member whose guard failed, with the state that failed it."""

    path: str
    error: type[FenceError]
    rested_version: int
    rested_epoch: int
    current_version: int | None
    current_epoch: int | None


class TxnRefused(FenceError):
    """A multi-file commit refused as a whole.

    ``errno`` is ``ESTALE`` when any member was fenced (a reclaim revoked
    what it rested on: stop), else ``EAGAIN`` (some file moved: re-read and
    retry). ``refusals`` names every member that failed its guard.
    """

    def __init__(self, refusals: Sequence[Refusal]) -> None:
        self.refusals = tuple(refusals)
        fenced = any(r.error is Fenced for r in self.refusals)
        self.errno = errno.ESTALE if fenced else errno.EAGAIN
        self.reason = "fenced" if fenced else "conflict"
        first = self.refusals[0]
        super().__init__(first.path, rested_version=first.rested_version,
                         rested_epoch=first.rested_epoch,
                         current_version=first.current_version,
                         current_epoch=first.current_epoch)
        self.args = (f"transaction {self.reason}: "
                     + ", ".join(f"{r.path!r} ({r.error.reason})" for r in self.refusals),)

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.refusals]


def decide_member(file: FileState | None, member: Member) -> Refusal | None:
    """The guard of one member: ``decide`` against what it rests on.

    A member that rests on an absent path conflicts if the path now holds a
    file; one that rests on a file conflicts if the file is gone.
    """
    if not member.exists:
        if file is None:
            return None
        return Refusal(member.path, Conflict, member.version, member.epoch,
                       file.version, file.epoch)
    if file is None:
        return Refusal(member.path, Conflict, member.version, member.epoch, None, None)
    base = Claim(0, member.path, "", 0, Kind.WRITE, member.version, member.epoch)
    error = decide(file, base)
    if error is None:
        return None
    return Refusal(member.path, error, member.version, member.epoch, file.version, file.epoch)


def decide_many(files: Mapping[str, FileState | None],
                members: Sequence[Member]) -> list[Refusal]:
    """Every member's guard, all of them: the refusals (empty: it may commit)."""
    refusals = []
    for member in members:
        refusal = decide_member(files.get(member.path), member)
        if refusal is not None:
            refusals.append(refusal)
    return refusals


def plan(files: Mapping[str, FileState | None], members: Sequence[Member]) -> list[Planned]:
    """The version and epoch each member installs (its file's + 1, or, for a
    file it creates, the version it rested on + 1: a path's version never
    goes down, not even across an unlink and a re-create)."""
    out = []
    for m in members:
        file = files.get(m.path)
        if file is None:
            out.append(Planned(m.path, m.version + 1, m.epoch, m.delete))
        else:
            out.append(Planned(m.path, file.version + 1, file.epoch, m.delete))
    return out


def check_members(members: Sequence[Member]) -> None:
    """A transaction names each path once, and at least one."""
    if not members:
        raise BadValue("a transaction needs at least one file")
    seen: set[str] = set()
    for m in members:
        if m.path in seen:
            raise BadValue(f"{m.path!r} is named twice in one transaction")
        seen.add(m.path)


def commit_many(
    files: Mapping[str, FileState | None],
    members: Sequence[Member],
    identity: str,
    install_all: Callable[[list[Planned]], None],
    adopt: Callable[[str, Persisted], FileState],
    removed: Callable[[str], object],
) -> list[Planned]:
    """CommitMany: decide every guard, install all, advance all; one step.

    ``files`` maps each member's path to its current ``FileState``, or None
    when the path holds no regular file. ``install_all(plan)`` makes every
    new content durable-or-rolled-forward (the intent record, then the
    renames); if it raises, nothing changed here. Then every file advances:
    written files to their new version (a created one is ``adopt``-ed),
    deleted ones are ``removed``; the committing identity's observation of
    each written file moves to the version it created.
    """
    check_members(members)
    refusals = decide_many(files, members)
    if refusals:
        raise TxnRefused(refusals)
    planned = plan(files, members)
    install_all(planned)
    for p in planned:
        file = files.get(p.path)
        if p.delete:
            if file is not None:
                removed(p.path)
            continue
        if file is None:
            file = adopt(p.path, Persisted(p.version, p.epoch))
        file.version = p.version
        seen = file.readers.get(identity)
        if seen is not None:
            seen.version, seen.epoch = p.version, file.epoch
    return planned
