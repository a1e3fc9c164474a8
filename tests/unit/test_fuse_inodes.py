"""The inode table (fencefs.fuse.inodes): numbers for paths, renames,
unlinks and the kernel's lookup counts."""

from __future__ import annotations

import errno

import pyfuse3
import pytest

from fencefs.fuse.inodes import ROOT, InodeTable


def estale(fn: object, *args: object) -> None:
    with pytest.raises(pyfuse3.FUSEError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.errno == errno.ESTALE


def test_paths_of_nested_nodes() -> None:
    t = InodeTable()
    d = t.remember(ROOT, "dir")
    f = t.remember(d.ino, "plan.md")
    assert t.path(ROOT) == "" and t.path(d.ino) == "dir" and t.path(f.ino) == "dir/plan.md"
    assert t.child_path(d.ino, "x") == "dir/x" and t.child_path(ROOT, "x") == "x"
    assert t.ino_of("dir/plan.md") == f.ino and t.ino_of("") == ROOT
    assert t.ino_of("dir/other") is None and t.ino_of("nope/plan.md") is None
    assert t.find(d.ino, "plan.md") is f and t.find(ROOT, "plan.md") is None
    assert len(t) == 3
    estale(t.node, 9999)
    estale(t.path, 9999)


def test_the_same_entry_keeps_its_number_and_counts_lookups() -> None:
    t = InodeTable()
    a = t.remember(ROOT, "a")
    assert t.remember(ROOT, "a") is a and a.nlookup == 2
    assert t.forget(a.ino, 1) is None  # still known
    assert t.forget(a.ino, 1) == "a"  # the last forget gives its path
    assert t.ino_of("a") is None
    estale(t.path, a.ino)
    b = t.remember(ROOT, "a")
    assert b.ino != a.ino  # numbers are never reused
    assert t.forget(ROOT, 1) is None and t.path(ROOT) == ""  # the root is never forgotten
    assert t.forget(12345, 1) is None


def test_renaming_a_directory_moves_everything_below() -> None:
    t = InodeTable()
    d = t.remember(ROOT, "old")
    f = t.remember(d.ino, "f")
    t.moved(ROOT, "old", ROOT, "new")
    assert t.path(f.ino) == "new/f" and t.ino_of("new/f") == f.ino and t.ino_of("old") is None


def test_rename_over_detaches_the_replaced_node() -> None:
    t = InodeTable()
    src, dst = t.remember(ROOT, "tmp"), t.remember(ROOT, "plan.md")
    t.moved(ROOT, "tmp", ROOT, "plan.md")
    assert t.path(src.ino) == "plan.md"
    estale(t.path, dst.ino)  # the replaced file has no path any more
    assert t.detached(dst.ino) and not t.detached(src.ino)
    assert t.forget(dst.ino, 1) is None  # a detached node: no path to give back
    assert t.path(src.ino) == "plan.md"  # and the new one is untouched


def test_unlinked_directory_detaches_everything_below() -> None:
    t = InodeTable()
    d = t.remember(ROOT, "d")
    sub = t.remember(d.ino, "sub")
    f = t.remember(sub.ino, "f")
    t.unlinked(ROOT, "d")
    assert t.detached(f.ino) and t.detached(sub.ino)
    estale(t.path, f.ino)
    t.remember(ROOT, "d")  # a new entry of that name is a new node
    assert t.ino_of("d") != d.ino
    # Forgetting a node under a detached directory gives no path and does
    # not raise (the kernel forgets in any order).
    assert t.forget(f.ino, 1) is None
    assert t.forget(d.ino, 1) is None
    assert t.forget(sub.ino, 1) is None
    t.unlinked(ROOT, "never-known")  # nothing to do


def test_moving_onto_itself_of_an_unknown_name_changes_nothing() -> None:
    t = InodeTable()
    a = t.remember(ROOT, "a")
    t.moved(ROOT, "ghost", ROOT, "other")
    assert t.path(a.ino) == "a"
