"""Pure tests of the fencing core: no mount, no trio."""

from __future__ import annotations

import pytest

from fencefs.core import Conflict, Coordinator, Fenced, Persisted, decide
from fencefs.core.model import Kind


def fresh(path: str = "plan.md", version: int = 0, epoch: int = 0) -> Coordinator:
    core = Coordinator()
    core.adopt(path, Persisted(version, epoch))
    return core


def test_version_guard_conflict() -> None:
    core = fresh()
    a = core.open_write("plan.md", "A", 1, rewrite=False)
    b = core.open_write("plan.md", "B", 2, rewrite=False)
    installed: list[tuple[int, int]] = []
    assert core.commit(a, lambda v, e: installed.append((v, e))) == 1
    with pytest.raises(Conflict) as info:
        core.commit(b, lambda v, e: installed.append((v, e)))
    assert installed == [(1, 0)]
    assert (info.value.rested_version, info.value.current_version) == (0, 1)
    assert core.get("plan.md").version == 1  # type: ignore[union-attr]


def test_epoch_guard_fences_zombie() -> None:
    core = fresh()
    zombie = core.open_write("plan.md", "Z", 1, rewrite=False)
    persisted: list[int] = []
    assert core.reclaim("plan.md", persisted.append) == 1
    assert persisted == [1]
    with pytest.raises(Fenced):
        core.commit(zombie, lambda v, e: pytest.fail("a fenced commit installed"))
    # The version never moved, yet the zombie is refused (G2).
    assert core.get("plan.md").version == 0  # type: ignore[union-attr]


def test_failed_install_changes_nothing() -> None:
    core = fresh()
    a = core.open_write("plan.md", "A", 1, rewrite=False)

    def broken(v: int, e: int) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        core.commit(a, broken)
    assert core.get("plan.md").version == 0  # type: ignore[union-attr]
    assert core.commit(a, lambda v, e: None) == 1


def test_failed_reclaim_persist_keeps_epoch() -> None:
    core = fresh()

    def broken(epoch: int) -> None:
        raise OSError(5, "I/O error")

    with pytest.raises(OSError):
        core.reclaim("plan.md", broken)
    assert core.get("plan.md").epoch == 0  # type: ignore[union-attr]


def test_rewrite_rests_on_observation() -> None:
    core = fresh()
    core.observe("plan.md", "A", 1, 0, 0)
    b = core.open_write("plan.md", "B", 2, rewrite=True)
    core.commit(b, lambda v, e: None)
    with pytest.raises(Conflict):
        core.open_write("plan.md", "A", 1, rewrite=True)
    core.observe("plan.md", "A", 1, 1, 0)  # reading again refreshes the claim
    a = core.open_write("plan.md", "A", 1, rewrite=True)
    assert core.commit(a, lambda v, e: None) == 2


def test_observation_after_reclaim_is_fenced() -> None:
    core = fresh()
    core.observe("plan.md", "A", 1, 0, 0)
    core.reclaim("plan.md", lambda e: None)
    with pytest.raises(Fenced):
        core.open_write("plan.md", "A", 1, rewrite=True)


def test_own_commit_moves_observation() -> None:
    core = fresh()
    core.observe("plan.md", "A", 1, 0, 0)
    a = core.open_write("plan.md", "A", 1, rewrite=True)
    core.commit(a, lambda v, e: None)
    seen = core.get("plan.md").readers["A"]  # type: ignore[union-attr]
    assert (seen.version, seen.kind) == (1, Kind.READ)
    again = core.open_write("plan.md", "A", 1, rewrite=True)
    assert core.commit(again, lambda v, e: None) == 2


def test_append_ignores_version_not_epoch() -> None:
    core = fresh()
    app = core.open_write("plan.md", "A", 1, rewrite=False, append=True)
    other = core.open_write("plan.md", "B", 2, rewrite=False)
    core.commit(other, lambda v, e: None)
    assert decide(core.get("plan.md"), app) is None  # type: ignore[arg-type]
    core.reclaim("plan.md", lambda e: None)
    assert decide(core.get("plan.md"), app) is Fenced  # type: ignore[arg-type]


def test_commit_path_blind_and_observed() -> None:
    core = fresh()
    assert core.commit_path("plan.md", "A", 1, lambda v, e: None) == 1  # blind: lands
    core.observe("plan.md", "B", 2, 1, 0)
    core.commit_path("plan.md", "A", 1, lambda v, e: None)
    with pytest.raises(Conflict):
        core.commit_path("plan.md", "B", 2, lambda v, e: pytest.fail("installed"))


def test_moved_carries_claims() -> None:
    core = fresh("d/plan.md")
    claim = core.open_write("d/plan.md", "A", 1, rewrite=False)
    core.moved("d", "e")
    assert core.get("d/plan.md") is None
    assert claim.path == "e/plan.md"
    assert core.commit(claim, lambda v, e: None) == 1


def test_release_and_forget() -> None:
    core = fresh()
    claim = core.open_write("plan.md", "A", 1, rewrite=False)
    core.forget("plan.md")
    assert core.get("plan.md") is not None  # a claim rests on it
    core.release(claim)
    core.forget("plan.md")
    assert core.get("plan.md") is None


def test_observation_table_is_bounded() -> None:
    core = Coordinator(max_observations=3)
    for name in ("a", "b", "c", "d"):
        core.adopt(name, Persisted(0, 0))
        core.observe(name, "A", 1, 0, 0)
    assert core.observations() == 3
    assert "A" not in core.get("a").readers  # type: ignore[union-attr]  # oldest dropped
    core.observe("b", "A", 1, 0, 0)  # refreshed: now newest
    core.adopt("e", Persisted(0, 0))
    core.observe("e", "A", 1, 0, 0)
    assert "A" in core.get("b").readers and "A" not in core.get("c").readers  # type: ignore[union-attr]
    assert core.drop_identity("A") == 3 and core.observations() == 0


# -- the shared policy (issue 9) ------------------------------------------------


def test_policy_rules_own_then_globs_then_default() -> None:
    from fencefs.core.policy import DEFAULT_SHARED_GLOBS, PolicyRules, glob_matches

    rules = PolicyRules("exclusive", [*DEFAULT_SHARED_GLOBS, "data/*.bin"])
    assert rules.by_path("a/b/app.db") == "shared"  # a name pattern: any directory
    assert rules.by_path("app.sqlite3-journal") == "shared"
    assert rules.by_path("app.db.bak") == "exclusive"
    assert rules.by_path("data/x/y.bin") == "shared"  # '*' spans '/' in a path pattern
    assert rules.by_path("other/data/y.bin") == "exclusive"  # anchored at the root
    assert rules.effective("app.db", "optimistic") == "optimistic"  # its own wins
    assert glob_matches("/data/*.bin", "data/y.bin")
    assert not glob_matches("*.DB", "app.db")  # case-sensitive


def test_shared_commits_are_unguarded_and_counted() -> None:
    core = Coordinator(shared_globs=["*.db"])
    core.adopt("app.db", Persisted(3, 1))
    file = core.get("app.db")
    assert file is not None and core.policy_of(file) == "shared"
    core.observe("app.db", "A", 1, 2, 0)  # a stale read (older version and epoch)
    installed: list[tuple[int, int]] = []
    assert core.commit_path("app.db", "A", 1, lambda v, e: installed.append((v, e))) == 4
    assert core.commit_in_place("app.db", lambda v, e: installed.append((v, e))) == 5
    assert installed == [(4, 1), (5, 1)]

    def broken(v: int, e: int) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        core.commit_in_place("app.db", broken)
    assert file.version == 5
    # Its own policy wins over the glob: fenced again.
    core.set_policy("app.db", "optimistic", lambda p: None)
    with pytest.raises(Fenced):
        core.commit_path("app.db", "A", 1, lambda v, e: None)
