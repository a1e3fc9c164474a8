"""Snapshots in the store: hard links of the committed inodes (no mount)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fencefs.core.errors import BadValue
from fencefs.core.model import Persisted
from fencefs.store.backing import Backing
from fencefs.store.snapshots import Snapshots


def make(root: Path) -> tuple[Backing, Snapshots]:
    root.mkdir(exist_ok=True)
    backing = Backing(str(root))
    os.makedirs(backing.meta, exist_ok=True)
    return backing, Snapshots(backing)


def put(backing: Backing, rel: str, text: str, version: int) -> None:
    """A commit as the daemon makes it: a new inode renamed over the path."""
    path = Path(backing.abs(rel))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.rename(tmp, path)
    backing.write_state(rel, Persisted(version, 0), durable=False)


def test_cut_is_links_and_stays_put_across_commits(tmp_path: Path) -> None:
    backing, snaps = make(tmp_path / "b")
    put(backing, "plan.md", "plan v1", 1)
    put(backing, "dir/results.json", "results v3", 3)
    os.symlink("plan.md", backing.abs("link"))
    info = snaps.create("s1", now=100.0)
    assert (info.files, info.bytes, info.under) == (2, len("plan v1") + len("results v3"), "")
    snap = Path(snaps.path("s1"))
    # zero-copy: the same inode as the committed file
    assert (snap / "plan.md").stat().st_ino == Path(backing.abs("plan.md")).stat().st_ino
    assert os.readlink(snap / "link") == "plan.md"
    assert not (snap / ".fencefs").exists()
    put(backing, "plan.md", "plan v2", 2)  # a later commit
    assert (snap / "plan.md").read_text() == "plan v1"
    _, versions = snaps.show("s1")
    assert versions == {"plan.md": (1, 0), "dir/results.json": (3, 0)}
    assert [s.name for s in snaps.list()] == ["s1"]


def test_under_a_directory_and_copies_for_shared(tmp_path: Path) -> None:
    backing, snaps = make(tmp_path / "b")
    put(backing, "top.txt", "top", 1)
    put(backing, "sub/a.db", "db", 1)
    put(backing, "sub/b.txt", "b", 1)
    snaps.create("s", "sub", copy_instead=lambda rel: rel.endswith(".db"))
    snap = Path(snaps.path("s"))
    assert sorted(os.listdir(snap)) == ["a.db", "b.txt"]
    assert (snap / "a.db").stat().st_ino != Path(backing.abs("sub/a.db")).stat().st_ino
    assert (snap / "b.txt").stat().st_ino == Path(backing.abs("sub/b.txt")).stat().st_ino


@pytest.mark.parametrize("name", ["a/b", "..", ".", "x..y", ".hidden", "", "bad\nname"])
def test_bad_names_change_nothing(tmp_path: Path, name: str) -> None:
    backing, snaps = make(tmp_path / "b")
    put(backing, "f", "x", 1)
    with pytest.raises(BadValue):
        snaps.create(name)
    assert os.listdir(snaps.dir) == [] and os.listdir(snaps.meta_dir) == []


def test_existing_name_and_bad_under_change_nothing(tmp_path: Path) -> None:
    backing, snaps = make(tmp_path / "b")
    put(backing, "f", "x", 1)
    snaps.create("s")
    put(backing, "f", "y", 2)
    with pytest.raises(FileExistsError):
        snaps.create("s")
    assert (Path(snaps.path("s")) / "f").read_text() == "x"
    for under, exc in (("../etc", BadValue), (".fencefs", BadValue),
                       ("f", NotADirectoryError), ("nope", FileNotFoundError)):
        with pytest.raises(exc):
            snaps.create("t", under)
    assert sorted(os.listdir(snaps.dir)) == ["s"]


def test_delete_and_recover(tmp_path: Path) -> None:
    backing, snaps = make(tmp_path / "b")
    put(backing, "f", "x", 1)
    snaps.create("s")
    snaps.delete("s")
    assert snaps.list() == [] and os.listdir(snaps.dir) == []
    with pytest.raises(FileNotFoundError):
        snaps.delete("s")
    os.mkdir(os.path.join(snaps.dir, ".tmp-half"))  # a crash while cutting
    os.mkdir(os.path.join(snaps.dir, "nomanifest"))
    assert snaps.recover() == 2
    assert os.listdir(snaps.dir) == []
    assert Path(backing.abs("f")).read_text() == "x"


def test_directories_keep_their_mode(tmp_path: Path) -> None:
    backing, snaps = make(tmp_path / "b")
    put(backing, "private/secret.md", "s", 1)
    os.chmod(backing.abs("private"), 0o700)
    os.chmod(backing.abs("private/secret.md"), 0o600)
    snaps.create("s")
    snap = Path(snaps.path("s"))
    assert (snap / "private").stat().st_mode & 0o777 == 0o700
    assert (snap / "private" / "secret.md").stat().st_mode & 0o777 == 0o600
