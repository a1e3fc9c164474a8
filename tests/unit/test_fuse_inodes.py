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


def scanned_paths_under(table: InodeTable, root: str) -> list[str]:
    """The reference: every known node's path, scanned (what paths_under
    did before it had the children index)."""
    found = []
    for ino in list(table._by_ino):
        if table.detached(ino):
            continue
        try:
            path = table.path(ino)
        except Exception:  # noqa: BLE001 - detached, or a parent forgotten first
            continue
        if path and path.startswith(root + "/" if root else ""):
            found.append(path)
    return sorted(found)


def test_paths_under_walks_only_the_subtree() -> None:
    t = InodeTable()
    txn = t.remember(t.remember(t.remember(ROOT, ".fencefs").ino, "txn").ino, "t1")
    sub = t.remember(txn.ino, "dir")
    t.remember(sub.ino, "a.md")
    t.remember(txn.ino, "b.md")
    t.remember(t.remember(ROOT, "t1").ino, "outside.md")
    under = t.paths_under(".fencefs/txn/t1")
    assert under[0] == ".fencefs/txn/t1/dir/a.md"   # deepest first
    assert sorted(under[1:]) == [".fencefs/txn/t1/b.md", ".fencefs/txn/t1/dir"]
    t.unlinked(txn.ino, "b.md")
    t.moved(txn.ino, "dir", ROOT, "moved")
    assert t.paths_under(".fencefs/txn/t1") == []
    assert t.paths_under("moved") == ["moved/a.md"]
    assert t.paths_under("nowhere") == []


@pytest.mark.parametrize("seed", range(30))
def test_paths_under_agrees_with_a_scan(seed: int) -> None:
    """Random lookups, forgets, unlinks and renames: the index gives what a
    scan of every node gives."""
    import random

    rnd = random.Random(seed)
    t = InodeTable()
    names = ["a", "b", "c"]
    for _ in range(300):
        dirs = [ROOT] + [n.ino for n in list(t._by_ino.values()) if n.ino != ROOT]
        op = rnd.random()
        parent = rnd.choice(dirs)
        if t.detached(parent):
            continue
        if op < 0.5:
            t.remember(parent, rnd.choice(names))
        elif op < 0.65:
            node = t._by_ino.get(rnd.choice(dirs))
            kids = [n for n in t._by_ino.values() if n.parent == getattr(node, "ino", 0)]
            if node is not None and node.ino != ROOT and not kids:  # the kernel forgets
                t.forget(node.ino, node.nlookup)                      # children first
        elif op < 0.8:
            t.unlinked(parent, rnd.choice(names))
        else:
            other = rnd.choice([ROOT, parent])   # never into its own subtree
            if not t.detached(other):
                t.moved(parent, rnd.choice(names), other, rnd.choice(names))
        for ino in [ROOT] + [n.ino for n in list(t._by_ino.values())][:5]:
            try:
                root = t.path(ino)
            except pyfuse3.FUSEError:
                continue
            assert sorted(t.paths_under(root)) == scanned_paths_under(t, root)
