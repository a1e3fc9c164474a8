"""fencefs.client's multi-file commits: on a mount and under the local fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fencefs import client
from tests.conftest import Mount

RACER = r"""
import json, sys
from fencefs import client
root, rounds = sys.argv[1], int(sys.argv[2])
def step(old):
    n = json.loads(old["count.json"] or b"0")
    return {"count.json": json.dumps(n + 1).encode(),
            "log.txt": old["log.txt"] + f"{n + 1}\n".encode()}
for _ in range(rounds):
    client.update_many(root, ["count.json", "log.txt"], step, retries=1000, backoff=0.001)
"""


def run_racers(root: str, procs: int, rounds: int) -> None:
    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": repo}
    racers = [subprocess.Popen([sys.executable, "-c", RACER, root, str(rounds)], env=env,
                               stderr=subprocess.PIPE, text=True) for _ in range(procs)]
    for p in racers:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err


def check_race(root: Path, total: int) -> None:
    """Every increment landed once, and the two files always moved together."""
    assert json.loads((root / "count.json").read_text()) == total
    assert (root / "log.txt").read_text() == "".join(f"{n}\n" for n in range(1, total + 1))


def test_transaction_on_a_mount(mount: Mount) -> None:
    mount.seed("plan.md", "plan 0\n")
    with client.transaction(mount.mnt) as tx:
        plan = tx.read("plan.md")
        tx.write("plan.md", plan + b"step\n")
        tx.write("results/r.json", "[1]")
    assert Path(mount.path("plan.md")).read_text() == "plan 0\nstep\n"
    assert Path(mount.path("results/r.json")).read_text() == "[1]"
    assert os.listdir(mount.mnt / ".fencefs" / "txn") == []  # its staging directory is gone


def test_conflict_names_the_files_that_moved(mount: Mount) -> None:
    mount.seed("a.md", "a\n")
    mount.seed("b.md", "b\n")
    tx = client.transaction(mount.mnt)
    tx.read("a.md")
    tx.read("b.md")
    tx.write("a.md", "A")
    tx.write("b.md", "B")
    run = subprocess.run(["bash", "-c", f"cat {mount.path('b.md')} >/dev/null; "
                                        f"echo other > {mount.path('b.md')}"], check=True)
    assert run.returncode == 0
    with pytest.raises(client.FenceConflict) as info:
        tx.commit()
    assert info.value.moved == ("b.md",)
    assert info.value.path.endswith("b.md")
    assert Path(mount.path("a.md")).read_text() == "a\n"  # none of it landed


def test_fenced_is_raised_after_a_reclaim(mount: Mount) -> None:
    mount.seed("a.md", "a\n")
    tx = client.transaction(mount.mnt)
    tx.read("a.md")
    tx.write("a.md", "A")
    client.reclaim(mount.path("a.md"))
    with pytest.raises(client.Fenced) as info:
        tx.commit()
    assert info.value.moved == ("a.md",)


def test_update_many_races_on_a_mount(mount: Mount) -> None:
    mount.seed("count.json", "0")
    mount.seed("log.txt", "")
    run_racers(str(mount.mnt), 3, 15)
    check_race(mount.mnt, 45)


def test_update_many_races_under_the_fallback(tmp_path: Path) -> None:
    run_racers(str(tmp_path), 3, 15)
    check_race(tmp_path, 45)


def test_fallback_conflict_and_bad_paths(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("a")
    tx = client.transaction(tmp_path)
    assert tx.read("a.md") == b"a"
    tx.write("a.md", "A")
    client.update(tmp_path / "a.md", lambda old: old + b"!")
    with pytest.raises(client.FenceConflict) as info:
        tx.commit()
    assert info.value.moved == ("a.md",)
    for bad in ("../x", "/etc/passwd", ".fencefs/journal.jsonl", ""):
        with pytest.raises(ValueError):
            tx.write(bad, "x")
    with client.transaction(tmp_path) as tx2:
        tx2.read("a.md")
        tx2.delete("a.md")
    assert not (tmp_path / "a.md").exists()


def test_two_transactions_creating_one_file_second_conflicts(mount: Mount) -> None:
    """A file read as missing must still be missing at the commit (the
    client says what it read in the staging directory's .fencefs-rests)."""
    first, second = client.transaction(mount.mnt), client.transaction(mount.mnt)
    for tx in (first, second):
        assert tx.read("new.md", default=b"") == b""
        tx.write("new.md", f"by {id(tx)}")
    first.commit()
    with pytest.raises(client.FenceConflict) as info:
        second.commit()
    assert info.value.moved == ("new.md",)
    assert Path(mount.path("new.md")).read_text() == f"by {id(first)}"
