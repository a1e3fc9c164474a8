"""Access checks (fencefs.fuse.access) against made-up stat results."""

from __future__ import annotations

import os
import stat

import pytest

from fencefs.fuse.access import READ, WRITE, Access, allowed, groups_of

UID, GID, OTHER_UID, OTHER_GID = 1000, 1000, 2000, 2000


def st(mode: int, uid: int = OTHER_UID, gid: int = OTHER_GID) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize(("mode", "uid", "gid", "want", "ok"), [
    (0o600, UID, OTHER_GID, READ, True),
    (0o600, UID, OTHER_GID, WRITE, True),
    (0o400, UID, OTHER_GID, WRITE, False),
    (0o060, UID, GID, READ, False),  # the owner's bits count, not the group's
    (0o040, OTHER_UID, GID, READ, True),
    (0o040, OTHER_UID, GID, READ | WRITE, False),
    (0o004, OTHER_UID, OTHER_GID, READ, True),
    (0o404, OTHER_UID, GID, READ, False),  # the group's bits count, not other's
    (0o002, OTHER_UID, OTHER_GID, WRITE, True),
    (0o000, OTHER_UID, OTHER_GID, READ, False),
])
def test_bits(mode: int, uid: int, gid: int, want: int, ok: bool) -> None:
    assert allowed(st(stat.S_IFREG | mode, uid, gid), UID, frozenset({GID}), want) is ok


def test_root_may_do_all() -> None:
    assert allowed(st(stat.S_IFREG), 0, frozenset(), READ | WRITE)


def test_supplementary_groups_count() -> None:
    assert allowed(st(stat.S_IFREG | 0o040, OTHER_UID, 77), UID, frozenset({GID, 77}), READ)


def tree(entries: dict[str, os.stat_result]) -> Access:
    calls: list[str] = []

    def lstat(rel: str) -> os.stat_result:
        calls.append(rel)
        try:
            return entries[rel]
        except KeyError:
            raise FileNotFoundError(rel) from None

    access = Access(UID, GID, os.getpid(), lstat)
    access.calls = calls  # type: ignore[attr-defined]
    return access


def test_every_directory_above_needs_search() -> None:
    d = stat.S_IFDIR
    a = tree({
        "": st(d | 0o755), "open": st(d | 0o711), "open/file": st(stat.S_IFREG | 0o644),
        "closed": st(d | 0o744), "closed/file": st(stat.S_IFREG | 0o666),
        "open/closed": st(d | 0o700), "open/closed/file": st(stat.S_IFREG | 0o666),
        "notadir": st(stat.S_IFREG | 0o777), "notadir/file": st(stat.S_IFREG | 0o666),
    })
    assert a.may("open/file", READ) and not a.may("open/file", WRITE)
    assert not a.may("closed/file", READ)  # readable, but its directory has no x for us
    assert not a.may("open/closed/file", READ)
    assert not a.may("notadir/file", READ)
    assert not a.may("open/missing", READ)
    assert not a.may("missing/file", READ)


def test_directory_answers_are_cached_per_request() -> None:
    d = stat.S_IFDIR
    a = tree({"": st(d | 0o755), "dir": st(d | 0o755),
              "dir/a": st(stat.S_IFREG | 0o644), "dir/b": st(stat.S_IFREG | 0o644)})
    assert a.may("dir/a", READ) and a.may("dir/b", READ)
    assert a.calls.count("dir") == 1 and a.calls.count("") == 1  # type: ignore[attr-defined]


def test_the_root_user_is_not_even_asked_about() -> None:
    a = Access(0, 0, os.getpid(), lambda rel: (_ for _ in ()).throw(AssertionError(rel)))
    assert a.everything and a.may("any/thing", READ | WRITE)


def test_groups_of_this_process() -> None:
    assert groups_of(os.getpid(), 4242) == frozenset({4242, *os.getgroups()})
    assert groups_of(2**22 + 12345, 7) == frozenset({7})  # no such process
