"""Pure tests of the multi-file decision (fencefs/core/transaction.py)."""

from __future__ import annotations

import errno

import pytest

from fencefs.core import Coordinator, Persisted
from fencefs.core.errors import Conflict, Fenced
from fencefs.core.model import FileState
from fencefs.core.transaction import Member, Planned, TxnRefused, commit_many, decide_many


def core_with(**versions: int) -> Coordinator:
    core = Coordinator()
    for path, version in versions.items():
        core.adopt(path, Persisted(version, 0))
    return core


def files_of(core: Coordinator, *paths: str) -> dict[str, FileState | None]:
    return {p: core.get(p) for p in paths}


def run(core: Coordinator, members: list[Member], identity: str = "A",
        installed: list[list[Planned]] | None = None) -> list[Planned]:
    sink = installed if installed is not None else []
    return commit_many(files_of(core, *(m.path for m in members)), members, identity,
                       sink.append, core.adopt, core.removed)


def test_all_guards_pass_all_advance() -> None:
    core = core_with(a=1, b=4, c=0)
    installed: list[list[Planned]] = []
    planned = run(core, [Member("a", 1, 0), Member("b", 4, 0), Member("c", 0, 0)],
                  installed=installed)
    assert [(p.path, p.version) for p in planned] == [("a", 2), ("b", 5), ("c", 1)]
    assert installed == [planned]  # one install call for the whole transaction
    assert [core.get(p).version for p in "abc"] == [2, 5, 1]  # type: ignore[union-attr]


def test_one_stale_member_refuses_all_and_installs_nothing() -> None:
    """The second member is stale: nothing is installed, not even the first
    (this is what the FirstGuardOnly mutant of the spec breaks)."""
    core = core_with(a=1, b=4, c=0)
    installed: list[list[Planned]] = []
    with pytest.raises(TxnRefused) as info:
        run(core, [Member("a", 1, 0), Member("b", 3, 0), Member("c", 0, 0)],
            installed=installed)
    assert installed == []
    assert info.value.errno == errno.EAGAIN
    assert info.value.paths == ["b"]
    r = info.value.refusals[0]
    assert (r.error, r.rested_version, r.current_version) == (Conflict, 3, 4)
    assert [core.get(p).version for p in "abc"] == [1, 4, 0]  # type: ignore[union-attr]


def test_last_member_stale_is_caught_too() -> None:
    core = core_with(a=0, b=0, c=2)
    with pytest.raises(TxnRefused) as info:
        run(core, [Member("a", 0, 0), Member("b", 0, 0), Member("c", 1, 0)])
    assert info.value.paths == ["c"]


def test_fenced_member_makes_it_estale_and_names_every_mover() -> None:
    core = core_with(a=0, b=0)
    core.reclaim("a", lambda e: None)
    core.adopt_foreign("b", lambda v, e: None)
    with pytest.raises(TxnRefused) as info:
        run(core, [Member("a", 0, 0), Member("b", 0, 0)])
    assert info.value.errno == errno.ESTALE
    assert [(r.path, r.error) for r in info.value.refusals] == [("a", Fenced), ("b", Conflict)]


def test_failed_install_changes_nothing() -> None:
    core = core_with(a=0, b=0)

    def broken(plan: list[Planned]) -> None:
        raise OSError(errno.ENOSPC, "full")

    with pytest.raises(OSError) as failed:
        commit_many(files_of(core, "a", "b"), [Member("a", 0, 0), Member("b", 0, 0)], "A",
                    broken, core.adopt, core.removed)
    assert failed.value.errno == errno.ENOSPC
    assert [core.get(p).version for p in "ab"] == [0, 0]  # type: ignore[union-attr]


def test_create_and_delete_members() -> None:
    core = core_with(old=3)
    planned = run(core, [Member("new", 5, 1, exists=False), Member("old", 3, 0, delete=True)])
    assert [(p.path, p.version, p.epoch, p.delete) for p in planned] == [
        ("new", 6, 1, False), ("old", 4, 0, True)]
    assert core.get("old") is None
    assert core.get("new").version == 6  # type: ignore[union-attr]


def test_absent_base_conflicts_when_created_meanwhile_and_gone_file_conflicts() -> None:
    core = core_with(x=0)
    with pytest.raises(TxnRefused) as info:
        run(core, [Member("x", 0, 0, exists=False)])
    assert info.value.refusals[0].error is Conflict
    with pytest.raises(TxnRefused) as info:
        run(core, [Member("gone", 2, 0)])
    assert info.value.refusals[0].current_version is None


def test_observation_moves_to_created_version() -> None:
    core = core_with(a=0, b=0)
    core.observe("a", "A", 1, 0, 0)
    core.observe("a", "B", 2, 0, 0)
    run(core, [Member("a", 0, 0), Member("b", 0, 0)], identity="A")
    assert core.get("a").readers["A"].version == 1  # type: ignore[union-attr]
    # B read v0 and did not commit: its next rewrite of a conflicts.
    assert core.get("a").readers["B"].version == 0  # type: ignore[union-attr]
    with pytest.raises(Conflict):
        core.open_write("a", "B", 2, rewrite=True)


def test_empty_or_duplicate_members_are_bad_input() -> None:
    core = core_with(a=0)
    with pytest.raises(ValueError):
        run(core, [])
    with pytest.raises(ValueError, match="twice"):
        run(core, [Member("a", 0, 0), Member("a", 0, 0)])
    assert core.get("a").version == 0  # type: ignore[union-attr]


def test_decide_many_reports_all() -> None:
    core = core_with(a=1, b=1)
    refusals = decide_many(files_of(core, "a", "b"), [Member("a", 0, 0), Member("b", 0, 0)])
    assert [r.path for r in refusals] == ["a", "b"]
