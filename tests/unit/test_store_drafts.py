"""Drafts (fencefs.store.drafts) on a plain directory: creation, copies,
prepare/install, rejected writes and their names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fencefs.core.model import Persisted
from fencefs.store.backing import Backing
from fencefs.store.drafts import DRAFT_XATTR, Drafts, copy_content, rejected_name

NAME_MAX = 255


@pytest.fixture
def drafts(tmp_path: Path) -> Drafts:
    return Drafts(Backing(str(tmp_path)))


def test_a_draft_is_private_and_names_its_target(drafts: Drafts, tmp_path: Path) -> None:
    d = drafts.create("dir/plan.md", "agent:a", 42, None)
    try:
        assert os.path.dirname(d.path) == str(tmp_path / ".fencefs" / "drafts")
        assert os.stat(d.path).st_mode & 0o777 == 0o600
        assert json.loads(os.getxattr(d.path, DRAFT_XATTR)) == \
            {"path": "dir/plan.md", "identity": "agent:a", "pid": 42}
        assert os.fstat(d.fd).st_size == 0
        assert drafts.orphans() == [(d.path, {"path": "dir/plan.md", "identity": "agent:a",
                                              "pid": 42})]
    finally:
        drafts.discard(d)
    assert not os.path.exists(d.path)
    assert drafts.orphans() == []


def test_an_orphan_with_a_garbage_attribute_is_still_found(drafts: Drafts) -> None:
    d = drafts.create("plan.md", "pid:1", 1, None)
    os.setxattr(d.path, DRAFT_XATTR, b"{not json")
    os.close(d.fd)
    assert drafts.orphans() == [(d.path, {"path": "?", "identity": "?", "pid": 0})]


def test_a_copy_keeps_content_and_holes(drafts: Drafts, tmp_path: Path) -> None:
    src = tmp_path / "sparse"
    with open(src, "wb") as f:
        f.write(b"head")
        f.seek(8 << 20)
        f.write(b"tail")
    fd = os.open(src, os.O_RDONLY)
    try:
        d = drafts.create("sparse", "pid:1", 1, fd)
    finally:
        os.close(fd)
    try:
        data = os.pread(d.fd, (8 << 20) + 4, 0)
        assert data[:4] == b"head" and data[-4:] == b"tail" and data[4:-4].count(0) == len(data) - 8
        assert os.fstat(d.fd).st_blocks * 512 < 4 << 20  # the hole stayed a hole
    finally:
        drafts.discard(d)


def test_copy_content_of_a_file_ending_in_a_hole(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    with open(src, "wb") as f:
        f.write(b"x")
        f.truncate(1 << 20)
    dst.touch()
    with open(src, "rb") as s, open(dst, "r+b") as d:
        copy_content(s.fileno(), d.fileno())
    assert dst.read_bytes() == src.read_bytes()


def test_prepare_then_install_carries_state_and_metadata(drafts: Drafts,
                                                         tmp_path: Path) -> None:
    target = tmp_path / "plan.md"
    target.write_text("old")
    os.chmod(target, 0o640)
    os.setxattr(target, "user.note", b"kept")
    d = drafts.create("plan.md", "pid:1", 1, None)
    os.write(d.fd, b"new content")
    drafts.prepare(d, Persisted(5, 2), durable=True)
    drafts.install(d)
    os.close(d.fd)
    assert target.read_text() == "new content"
    assert os.stat(target).st_mode & 0o777 == 0o640
    assert os.getxattr(target, "user.note") == b"kept"
    persisted, fp = Backing(str(tmp_path)).read_state("plan.md")
    assert persisted == Persisted(5, 2)
    assert fp is not None and fp.ino == os.stat(target).st_ino and fp.size == 11


def test_reject_keeps_the_bytes_under_rejected(drafts: Drafts, tmp_path: Path) -> None:
    target = tmp_path / "plan.md"
    target.write_text("committed")
    os.chmod(target, 0o604)
    d = drafts.create("plan.md", "agent:bob", 7, None)
    os.write(d.fd, b"refused bytes")
    name = drafts.reject(d, "agent:bob", "conflict")
    kept = tmp_path / ".fencefs" / "rejected" / name
    assert kept.read_bytes() == b"refused bytes"
    assert os.stat(kept).st_mode & 0o777 == 0o604  # the target's access
    assert DRAFT_XATTR not in os.listxattr(kept)
    assert ".conflict.agent:bob.plan.md" in name
    assert not os.listdir(tmp_path / ".fencefs" / "drafts")
    assert target.read_text() == "committed"


@pytest.mark.parametrize("target", [
    "n" * 255,
    "d" * 200 + "/" + "f" * 255,
    "é" * 127,  # two bytes each
    "\udcff" * 200,  # bytes that are not UTF-8
    "sub/" * 60 + "x",
])
def test_rejected_names_fit_name_max(target: str) -> None:
    for identity in ("pid:1", "agent:" + "a" * 300, "agent:" + "%" * 100):
        name = rejected_name(target, identity, "conflict")
        assert len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX, name
        assert "/" not in name and "\0" not in name
        assert ".conflict." in name


def test_long_rejected_names_keep_a_digest_that_tells_targets_apart() -> None:
    a = rejected_name("x" * 250 + "a", "pid:1", "fenced")
    b = rejected_name("x" * 250 + "b", "pid:1", "fenced")
    assert a.rsplit(".", 1)[1] != b.rsplit(".", 1)[1]
    assert len(a.rsplit(".", 1)[1]) == 10


def test_short_rejected_names_are_whole_and_escaped() -> None:
    name = rejected_name("dir/my plan.md", "agent:a b", "killed")
    assert name.endswith(".killed.agent:a%20b.dir%2Fmy%20plan.md")


def test_a_rejected_name_for_a_hostile_target_is_a_valid_file_name(drafts: Drafts,
                                                                   tmp_path: Path) -> None:
    target = "é" * 127
    (tmp_path / target).write_text("t")
    d = drafts.create(target, "pid:1", 1, None)
    name = drafts.reject(d, "pid:1", "conflict")
    assert os.path.exists(tmp_path / ".fencefs" / "rejected" / name)
