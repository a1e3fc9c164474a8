"""scripts/check-trace: a real journal passes; a doctored one fails, naming
the first bad event, one doctored journal per rule."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.agent import Agent
from tests.support.mount import Mount
from tests.support.trace import check_trace


def version(path: str) -> int:
    return int(os.getxattr(path, "user.fencefs.version"))


@pytest.fixture(scope="module")
def real_journal(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The journal of a real mount that saw commits, appends, a reclaim, a
    conflict, a fenced writer, a killed writer, a rename over and an unlink."""
    from tests.support.mount import require_fuse

    require_fuse()
    m = Mount(tmp_path_factory.mktemp("trace"))
    m.start()
    try:
        plan = m.seed("plan.md", "v1\n")
        m.seed("plan.md", "v2\n")
        with Agent() as a, Agent() as b, Agent() as z:
            fa, fb = a.ok("open", plan, "O_RDWR"), b.ok("open", plan, "O_RDWR")
            a.ok("finish", fa, "a")
            assert b.do("finish", fb, "b")["err"] == "EAGAIN"  # a conflict
            fz = z.ok("open", plan, "O_RDWR")
            z.ok("write", fz, "zombie")
            os.setxattr(plan, "user.fencefs.reclaim", b"1")
            assert z.do("close", fz)["err"] == "ESTALE"  # fenced
            a.ok("writefile", m.path("log.txt"), "1\n", "append")
            a.ok("writefile", m.path("log.txt"), "2\n", "append")
            k = a.ok("open", plan, "O_WRONLY|O_TRUNC")
            a.ok("write", k, "killed half-way")
            a.proc.kill()
            a.proc.communicate(timeout=30)
            b.ok("writefile", m.path("plan.tmp"), "replacement")
            b.ok("rename", m.path("plan.tmp"), plan)  # a commit of plan.md
            b.ok("writefile", m.path("gone.txt"), "x")
            b.ok("unlink", m.path("gone.txt"))
            b.ok("writefile", m.path("gone.txt"), "again")
            b.ok("rename", m.path("gone.txt"), m.path("moved.txt"))  # onto a free name
            b.ok("writefile", m.path("moved.txt"), "moved, then rewritten")
            b.close()
            z.close()
        events = [e["event"] for e in m.journal()]
        for kind in ("commit", "conflict", "fenced", "reclaim", "killed", "rename"):
            assert kind in events, (kind, events)
        assert version(plan) == 4
        lines = m.journal_path().read_text().splitlines()
    finally:
        m.stop()
    return lines


def doctored(tmp_path: Path, lines: list[str], *extra: dict[str, object]) -> Path:
    path = tmp_path / "journal.jsonl"
    path.write_text("".join(line + "\n" for line in lines)
                    + "".join(json.dumps({"ts": 0, **e}) + "\n" for e in extra))
    return path


def last(lines: list[str], event: str, file: str = "plan.md") -> dict[str, object]:
    found = [json.loads(line) for line in lines]
    return [e for e in found if e["event"] == event and e["file"] == file][-1]


def test_a_real_journal_follows_the_specs(real_journal: list[str], tmp_path: Path) -> None:
    result = check_trace(doctored(tmp_path, real_journal))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 journal(s) follow" in result.stdout


# plan.md ends at version 4, epoch 1; the doctored events come after.
RULES: dict[str, tuple[str, Callable[[list[str]], list[dict[str, object]]]]] = {
    "skip": ("VersionMonotonic", lambda lines: [
        {"event": "commit", "file": "plan.md", "pid": 1, "version": 5, "new_version": 6,
         "epoch": 1}]),
    "repeat": ("VersionMonotonic", lambda lines: [
        {"event": "foreign", "file": "plan.md", "version": 3, "new_version": 4, "epoch": 1}]),
    "two commits on one version": ("OneWinner", lambda lines: [
        {**last(lines, "commit"), "pid": 1, "draft": "1-1.draft"}]),
    "commit under an epoch older than a reclaim": ("NoStaleApply", lambda lines: [
        {"event": "commit", "file": "plan.md", "pid": 1, "version": 4, "new_version": 5,
         "epoch": 0}]),
    "append under an epoch older than a reclaim": ("NoStaleApply", lambda lines: [
        {"event": "commit", "file": "plan.md", "pid": 1, "op": "append", "version": 4,
         "new_version": 5, "epoch": 0}]),
    "commit by a killed writer": ("KilledNeverCommits", lambda lines: [
        {"event": "commit", "file": "plan.md", "pid": last(lines, "killed")["pid"],
         "version": 4, "new_version": 5, "epoch": 1}]),
    "conflict for a current claim": ("DecideConflict", lambda lines: [
        {"event": "conflict", "file": "plan.md", "pid": 1, "op": "close", "version": 4,
         "epoch": 1, "current_version": 4, "current_epoch": 1}]),
    "conflict naming a version the file is not at": ("DecideConflict", lambda lines: [
        {"event": "conflict", "file": "plan.md", "pid": 1, "op": "close", "version": 4,
         "epoch": 1, "current_version": 5, "current_epoch": 1}]),
    "fenced under the current epoch": ("DecideFenced", lambda lines: [
        {"event": "fenced", "file": "plan.md", "pid": 1, "op": "close", "version": 4,
         "epoch": 1, "current_version": 4, "current_epoch": 1}]),
    "epoch that goes back": ("EpochMonotonic", lambda lines: [
        {"event": "reclaim", "file": "plan.md", "version": 4, "epoch": 0, "new_epoch": 1}]),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_a_doctored_journal_fails_at_its_first_bad_event(real_journal: list[str],
                                                         tmp_path: Path, rule: str) -> None:
    name, extra = RULES[rule]
    bad = extra(real_journal)
    # A good event after the bad one: the first bad one is named, not the last.
    path = doctored(tmp_path, real_journal, *bad,
                    {"event": "commit", "file": "other.txt", "version": 0, "new_version": 1,
                     "epoch": 0})
    result = check_trace(path)
    assert result.returncode == 1, (rule, result.stdout, result.stderr)
    line = len(real_journal) + 1
    assert result.stdout.startswith(f"{path}:{line}: {name}: "), (rule, result.stdout)


def test_the_same_journal_before_the_doctoring_passes_and_several_are_checked(
        real_journal: list[str], tmp_path: Path) -> None:
    good = doctored(tmp_path, real_journal)
    (tmp_path / "b").mkdir()
    bad = doctored(tmp_path / "b", real_journal, *RULES["skip"][1](real_journal))
    assert check_trace(good, good).returncode == 0
    result = check_trace(good, bad)
    assert result.returncode == 1 and result.stdout.startswith(f"{bad}:")


def test_a_failed_or_abandoned_commit_does_not_count(tmp_path: Path) -> None:
    events = [
        {"event": "commit", "file": "f", "version": 0, "new_version": 1, "epoch": 0},
        {"event": "commit", "file": "f", "version": 1, "new_version": 2, "epoch": 0,
         "draft": "9-1.draft"},
        {"event": "abandoned", "file": "f", "draft": "9-1.draft", "reason": "daemon-restart"},
        {"event": "commit", "file": "f", "version": 1, "new_version": 2, "epoch": 0},
        {"event": "commit", "file": "f", "op": "truncate", "new_version": 3, "epoch": 0},
        {"event": "failed", "file": "f", "op": "truncate", "new_version": 3, "errno": "EIO"},
        {"event": "commit", "file": "f", "op": "unlink", "new_version": 3, "epoch": 0},
        {"event": "commit", "file": "f", "version": 0, "new_version": 1, "epoch": 0},
    ]
    assert check_trace(doctored(tmp_path, [], *events)).returncode == 0
    events.insert(3, {"event": "commit", "file": "f", "version": 2, "new_version": 3,
                      "epoch": 0})
    result = check_trace(doctored(tmp_path, [], *events))
    assert result.returncode == 1 and ":4: VersionMonotonic: " in result.stdout


def test_torn_lines_are_skipped_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text('{"ts":1,"event":"commit","file":"f","version":0,"new_version":1}\n'
                    '{"ts":2,"event":"comm{"ts":3,"event":"commit","file":"f","version":1,'
                    '"new_version":2}\n{"ts":4,"event":"com')
    assert check_trace(path).returncode == 0
    missing = check_trace(tmp_path / "nope.jsonl")
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert check_trace().returncode == 2


# A file moved onto a free name (journaled as ``rename``), then committed
# at its new path: only a checker that follows the move sees what it rests on.
MOVES: dict[str, tuple[str, list[dict[str, object]]]] = {
    "stale epoch after a move": ("NoStaleApply", [
        {"event": "commit", "file": "f", "version": 0, "new_version": 1, "epoch": 0},
        {"event": "reclaim", "file": "f", "version": 1, "epoch": 0, "new_epoch": 1},
        {"event": "rename", "file": "g", "source": "f", "kind": "file", "version": 1,
         "epoch": 1},
        {"event": "commit", "file": "g", "version": 1, "new_version": 2, "epoch": 0}]),
    "version repeated after a move": ("VersionMonotonic", [
        {"event": "commit", "file": "f", "version": 0, "new_version": 1, "epoch": 0},
        {"event": "commit", "file": "f", "version": 1, "new_version": 2, "epoch": 0},
        {"event": "rename", "file": "g", "source": "f", "kind": "file", "version": 2,
         "epoch": 0},
        {"event": "foreign", "file": "g", "version": 1, "new_version": 2, "epoch": 0}]),
    "stale epoch after a directory move": ("NoStaleApply", [
        {"event": "commit", "file": "d/f", "version": 0, "new_version": 1, "epoch": 0},
        {"event": "reclaim", "file": "d/f", "version": 1, "epoch": 0, "new_epoch": 1},
        {"event": "rename", "file": "e", "source": "d", "kind": "dir"},
        {"event": "commit", "file": "e/f", "version": 1, "new_version": 2, "epoch": 0}]),
}


@pytest.mark.parametrize("case", list(MOVES))
def test_a_moved_file_is_followed_to_its_new_name(tmp_path: Path, case: str) -> None:
    rule, events = MOVES[case]
    result = check_trace(doctored(tmp_path, [], *events))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f":{len(events)}: {rule}: " in result.stdout, result.stdout
    # Without the rename line the bad event is not caught: the new rule did it.
    unfollowed = [e for e in events if e["event"] != "rename"]
    assert check_trace(doctored(tmp_path, [], *unfollowed)).returncode == 0


def test_a_rename_must_carry_the_version_the_journal_has(tmp_path: Path) -> None:
    events = [
        {"event": "commit", "file": "f", "version": 0, "new_version": 1, "epoch": 0},
        {"event": "rename", "file": "g", "source": "f", "kind": "file", "version": 3,
         "epoch": 0},
    ]
    result = check_trace(doctored(tmp_path, [], *events))
    assert result.returncode == 1 and ":2: MovedWithItsVersion: " in result.stdout, \
        result.stdout
    events[1]["version"] = 1
    assert check_trace(doctored(tmp_path, [], *events)).returncode == 0
    # The old path holds nothing afterwards: a new file there starts afresh.
    events.append({"event": "commit", "file": "f", "version": 0, "new_version": 1, "epoch": 0})
    events.append({"event": "commit", "file": "g", "version": 1, "new_version": 2, "epoch": 0})
    assert check_trace(doctored(tmp_path, [], *events)).returncode == 0


def test_a_multi_file_commit_counts_for_each_member(tmp_path: Path) -> None:
    intent = {"event": "txn-intent", "file": "a", "txn": "T", "pid": 1, "members": [
        {"file": "a", "draft": "d1", "version": 2, "epoch": 0, "delete": False},
        {"file": "b", "draft": "d2", "version": 1, "epoch": 0, "delete": True}]}
    events = [
        {"event": "commit", "file": "a", "version": 0, "new_version": 1, "epoch": 0},
        {"event": "commit", "file": "b", "version": 0, "new_version": 1, "epoch": 0},
        intent, {"event": "txn-commit", "file": "a", "txn": "T"},
        {"event": "commit", "file": "a", "version": 2, "new_version": 3, "epoch": 0},
        {"event": "commit", "file": "b", "version": 0, "new_version": 1, "epoch": 0},
    ]
    assert check_trace(doctored(tmp_path, [], *events)).returncode == 0
    # A commit after it that rests on the version the transaction replaced.
    events.append({"event": "commit", "file": "a", "version": 1, "new_version": 2,
                   "epoch": 0})
    result = check_trace(doctored(tmp_path, [], *events))
    assert result.returncode == 1 and ":7: " in result.stdout, result.stdout
    # Rolled back at the next mount: it never landed.
    rolled_back = events[:3] + [{"event": "txn-recovered", "file": "a", "txn": "T",
                                 "rolled": "back"},
                                {"event": "commit", "file": "a", "version": 1,
                                 "new_version": 2, "epoch": 0}]
    assert check_trace(doctored(tmp_path, [], *rolled_back)).returncode == 0
