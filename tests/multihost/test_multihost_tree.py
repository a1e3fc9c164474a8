"""Across hosts, what came with the merge of main: the roll-forward renames
through the backing's descriptor tree (no symlink followed out of the backing
directory). (Multi-file transactions across hosts: test_multihost_txn.py.)

Which test catches which break (tried by hand): renaming with
``os.rename(draft, os.path.join(root, target))`` in ``EtcdCoordination._install``
fails ``test_roll_forward_never_follows_a_symlink_out``; dropping the name
check in ``_draft_there`` fails ``test_record_content_is_a_name_not_a_path``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fencefs.core import Coordinator
from fencefs.etcd.engine import EtcdCoordination, EtcdSettings
from fencefs.store.backing import Backing
from fencefs.store.drafts import Drafts
from tests.support.mount import Mount

HostsFactory = Callable[..., tuple[Mount, Mount]]   # the hosts fixture (conftest.py)


def coordination(root: Path) -> tuple[EtcdCoordination, Drafts]:
    """An EtcdCoordination over a backing directory; no etcd is contacted
    (the install step needs none)."""
    drafts = Drafts(Backing(str(root)))
    settings = EtcdSettings(["http://127.0.0.1:1"], "t", "host-A")
    return EtcdCoordination(Coordinator(), settings, drafts), drafts


def a_draft(drafts: Drafts, target: str, text: bytes) -> str:
    draft = drafts.create(target, "a", 1, None)
    os.write(draft.fd, text)
    os.close(draft.fd)
    return draft.name


def test_roll_forward_never_follows_a_symlink_out(tmp_path: Path) -> None:
    root = tmp_path / "backing"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "sub").symlink_to(outside)         # a user's symlink in the tree
    coord, drafts = coordination(root)
    name = a_draft(drafts, "sub/f", b"decided\n")
    with pytest.raises(OSError) as e:
        coord._install(name, "sub/f")
    assert e.value.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV)
    assert os.listdir(outside) == []           # nothing landed outside
    assert coord._draft_there(name)            # the draft is still there

    (root / "real").mkdir()
    coord._install(name, "real/f")             # a plain path: installed
    assert (root / "real" / "f").read_bytes() == b"decided\n"
    assert not coord._draft_there(name)


def test_record_content_is_a_name_not_a_path(tmp_path: Path) -> None:
    root = tmp_path / "backing"
    root.mkdir()
    (root / "victim").write_text("mine\n")
    coord, drafts = coordination(root)
    a_draft(drafts, "x", b"x\n")
    # a record naming a path (../../victim) is not a draft of drafts/
    for bad in ("../../victim", "/etc/hostname", ".", "..", ""):
        assert not coord._draft_there(bad)
        with pytest.raises(FileNotFoundError):
            coord._install(bad, "y")
    assert (root / "victim").read_text() == "mine\n"
    assert not (root / "y").exists()
