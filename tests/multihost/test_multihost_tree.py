"""Across hosts, what came with the merge of main: the roll-forward renames
through the backing's descriptor tree (no symlink followed out of the backing
directory), and multi-file transactions are refused under --etcd with
EOPNOTSUPP (docs/multihost.md, Limits).

Which test catches which break (tried by hand): renaming with
``os.rename(draft, os.path.join(root, target))`` in ``EtcdCoordination._install``
fails ``test_roll_forward_never_follows_a_symlink_out``; dropping the name
check in ``_draft_there`` fails ``test_record_content_is_a_name_not_a_path``;
``commit_many`` falling through to the local decision fails
``test_transaction_refused_across_hosts``.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
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


def test_transaction_refused_across_hosts(hosts: HostsFactory) -> None:
    a, _b = hosts()
    a.seed("plan.md", "plan 0\n")
    stage = a.mnt / ".fencefs" / "txn" / "t1"
    env = {**os.environ, "FENCEFS_AGENT": "a"}
    subprocess.run(["bash", "-c", f"""cd {a.mnt}; mkdir .fencefs/txn/t1; cat plan.md >/dev/null
                    echo 'plan 1' > .fencefs/txn/t1/plan.md"""], env=env, check=True)
    rejected_before = len(a.rejected())
    code = ("import os, sys\ntry:\n    os.setxattr(sys.argv[1], 'user.fencefs.commit', b'1')\n"
            "except OSError as e:\n    print(e.errno)\nelse:\n    print(0)")
    proc = subprocess.run([sys.executable, "-c", code, str(stage)], env=env,
                          capture_output=True, text=True, check=True)
    assert int(proc.stdout) == errno.EOPNOTSUPP   # by the owner (agent a)
    answer = os.getxattr(stage, "user.fencefs.result").decode()
    # errno 95 is EOPNOTSUPP and ENOTSUP on Linux; errno.errorcode names it ENOTSUP
    assert answer.startswith("ENOTSUP [Errno 95] multi-file transactions are not supported "
                             "across hosts (--etcd)"), answer
    assert Path(a.path("plan.md")).read_text() == "plan 0\n"
    assert int(os.getxattr(a.path("plan.md"), "user.fencefs.version")) == 1
    assert os.listdir(stage) == []
    assert len(a.rejected()) == rejected_before + 1   # the staged bytes are kept
    refused = [ev for ev in a.journal() if ev["event"] == "txn-refused"]
    assert refused and refused[-1]["files"] == ["plan.md"]
