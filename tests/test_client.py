"""fencefs.client: typed errors and fenced read-modify-write, on a mount and
on the local fallback (issue 8)."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from fencefs import client
from fencefs.client import ClaimBusy, FenceConflict, Fenced, FenceError
from tests.support.agent import Agent, all_answer
from tests.support.mount import Mount
from tests.support.procs import run_py


def racing(n: int) -> Callable[[Callable[[bytes], bytes]], Callable[[bytes], bytes]]:
    """Wrap fn so that its first call in each of ``n`` threads waits until all
    ``n`` have read: every thread computes from the same version."""
    barrier = threading.Barrier(n, timeout=20)
    local = threading.local()

    def wrap(fn: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        def inner(old: bytes) -> bytes:
            if not getattr(local, "waited", False):
                local.waited = True
                barrier.wait()
            return fn(old)
        return inner

    return wrap


def append_line(line: str) -> Callable[[bytes], bytes]:
    return lambda old: old + line.encode() + b"\n"


def run_threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    errors: list[BaseException] = []

    def guard(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as e:  # collected and checked by the test
            errors.append(e)

    threads = [threading.Thread(target=guard, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


def naive_race(path: str) -> list[BaseException]:
    """What unmodified code does, in two threads: read with one open, think,
    write with another. Both read before either writes; alice writes first."""
    both_read = threading.Barrier(2, timeout=20)
    alice_wrote = threading.Event()

    def agent(line: str, first: bool) -> None:
        with open(path) as f:
            old = f.read()
        both_read.wait()
        if not first:
            assert alice_wrote.wait(20)
        with open(path, "w") as f:
            f.write(old + line + "\n")
        alice_wrote.set()

    return run_threads([lambda: agent("alice", True), lambda: agent("bob", False)])


# -- errors --------------------------------------------------------------------


def test_errors_are_their_own_family() -> None:
    for cls, code in ((FenceConflict, errno.EAGAIN), (Fenced, errno.ESTALE),
                      (ClaimBusy, errno.EBUSY)):
        err = cls("/m/plan.md", rested_version=3, rested_epoch=0, current_version=4,
                  current_epoch=1)
        assert isinstance(err, FenceError) and err.errno == code
        assert not isinstance(err, OSError | ValueError | RuntimeError)
        assert "/m/plan.md" in str(err) and "version 3" in str(err) and "version 4" in str(err)
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and back.rested_version == 3 and back.current_epoch == 1


# -- the local fallback --------------------------------------------------------


def test_local_versions_and_sidecar(tmp_path: Path) -> None:
    path = str(tmp_path / "plan.md")
    assert not client.is_fencefs(path)
    with pytest.raises(FileNotFoundError):
        client.read_versioned(path)
    with pytest.raises(FileNotFoundError):
        client.update(path, append_line("x"))
    assert client.update(path, append_line("a"), create=True) == (b"a\n", 1, 0)
    assert client.update(path, append_line("b")) == (b"a\nb\n", 2, 0)
    assert client.read_versioned(path) == (b"a\nb\n", 2, 0)
    # fn returning the same bytes or None commits nothing
    assert client.update(path, lambda old: old).version == 2
    assert client.update(path, lambda old: None).version == 2
    names = sorted(os.listdir(tmp_path))
    assert names == [".fencefs-local.lock", ".plan.md.fencefs-version", "plan.md"]
    state = client.claim_state(path)
    assert (state.version, state.epoch, state.fencefs, state.claims) == (2, 0, False, ())


def test_local_replace_is_compare_and_swap(tmp_path: Path) -> None:
    path = str(tmp_path / "doc.json")
    assert client.replace(path, b"one", version=0) == (b"one", 1, 0)
    with pytest.raises(FenceConflict) as info:
        client.replace(path, b"also one", version=0)  # it exists now
    assert info.value.current_version == 1
    old = client.read_versioned(path)
    client.replace(path, b"two", version=old.version, epoch=old.epoch)
    with pytest.raises(FenceConflict) as info:
        client.replace(path, b"stale", version=old.version, epoch=old.epoch)
    err = info.value
    assert (err.path, err.rested_version, err.current_version) == (path, 1, 2)
    assert client.read_versioned(path) == (b"two", 2, 0)


def test_local_reclaim_fences_and_is_not_retried(tmp_path: Path) -> None:
    path = str(tmp_path / "task.md")
    client.replace(path, b"mine", version=0)
    calls = []

    def stall_then_write(old: bytes) -> bytes:
        calls.append(old)
        client.reclaim(path)  # an operator takes the task while we think
        return b"zombie"

    with pytest.raises(Fenced) as info:
        client.update(path, stall_then_write, retries=5)
    assert len(calls) == 1  # never retried
    assert (info.value.rested_epoch, info.value.current_epoch) == (0, 1)
    assert client.read_versioned(path) == (b"mine", 1, 1)
    with pytest.raises(Fenced):
        client.replace(path, b"zombie", version=1, epoch=0)


def test_local_foreign_write_counts_as_a_version(tmp_path: Path) -> None:
    path = str(tmp_path / "notes.txt")
    client.replace(path, b"v1", version=0)
    with open(path, "w") as f:  # bypasses the library
        f.write("edited by hand, longer")
    assert client.read_versioned(path) == (b"edited by hand, longer", 2, 0)
    assert client.read_versioned(path).version == 2  # adopted once, stays put
    with pytest.raises(FenceConflict):
        client.replace(path, b"stale", version=1)
    # A crash between the sidecar's rename and the data's: the sidecar names
    # content that is not there. The version goes up, never down.
    side = tmp_path / ".notes.txt.fencefs-version"
    side.write_text('{"version": 7, "epoch": 0, "fp": [1, 2, 3]}')
    assert client.read_versioned(path).version == 8


def test_local_two_threads_lose_an_update_without_the_library(tmp_path: Path) -> None:
    path = str(tmp_path / "memory.md")
    Path(path).write_text("")
    assert naive_race(path) == []
    assert Path(path).read_text() == "bob\n"  # alice's update is lost


def test_local_two_threads_lose_nothing_with_update(tmp_path: Path) -> None:
    path = str(tmp_path / "memory.md")
    client.replace(path, b"", version=0)
    race = racing(2)
    errors = run_threads([
        lambda: client.update(path, race(append_line("alice")), backoff=0.001),
        lambda: client.update(path, race(append_line("bob")), backoff=0.001),
    ])
    assert errors == []
    assert sorted(client.read_versioned(path).data.decode().split()) == ["alice", "bob"]
    assert client.read_versioned(path).version == 3


def test_local_without_retries_the_loser_gets_the_conflict(tmp_path: Path) -> None:
    path = str(tmp_path / "memory.md")
    client.replace(path, b"", version=0)
    race = racing(2)
    errors = run_threads([
        lambda: client.update(path, race(append_line("alice")), retries=0),
        lambda: client.update(path, race(append_line("bob")), retries=0),
    ])
    assert [type(e) for e in errors] == [FenceConflict]
    assert client.read_versioned(path).data.count(b"\n") == 1


def counter_race(path: str, procs: int, each: int) -> None:
    client.update(path, lambda _: b"0", create=True)
    # Each agent increments the counter ``each`` times with client.update.
    workers = [Agent() for _ in range(procs)]
    answers = all_answer(workers, "client_count", path, each)
    assert [w.close(timeout=120) for w in workers] == [0] * procs
    assert answers == [{"ok": each}] * procs
    data = client.read_versioned(path).data
    assert int(data) == procs * each


def test_local_processes_count_exactly(tmp_path: Path) -> None:
    counter_race(str(tmp_path / "count"), 3, 30)


# -- on a mount ----------------------------------------------------------------


def test_mount_is_detected(mount: Mount, tmp_path: Path) -> None:
    assert client.is_fencefs(mount.mnt)
    assert client.is_fencefs(mount.path("not/yet/there.txt"))
    assert not client.is_fencefs(mount.backing)


def test_mount_update_and_read(mount: Mount) -> None:
    path = mount.path("plan.md")
    assert client.update(path, append_line("a"), create=True) == (b"a\n", 1, 0)
    assert client.update(path, append_line("b")) == (b"a\nb\n", 2, 0)
    assert client.read_versioned(path) == (b"a\nb\n", 2, 0)
    assert os.getxattr(path, "user.fencefs.version") == b"2"
    assert not any(n.startswith(".plan.md") for n in os.listdir(mount.mnt))  # no sidecar
    state = client.claim_state(path)
    assert (state.version, state.epoch, state.policy, state.fencefs) == (2, 0, "optimistic", True)
    assert all(c.kind == "read" for c in state.claims)


def test_mount_threads_lose_an_update_without_the_library(mount: Mount) -> None:
    """Threads of one process are one identity: separate opens are not fenced."""
    path = mount.seed("memory.md", "")
    assert naive_race(path) == []
    with open(path) as f:
        assert f.read() == "bob\n"  # alice's update is lost, and nobody was told


def test_mount_threads_lose_nothing_with_update(mount: Mount) -> None:
    path = mount.seed("memory.md", "")
    start = client.read_versioned(path).version
    race = racing(2)
    errors = run_threads([
        lambda: client.update(path, race(append_line("alice")), backoff=0.001),
        lambda: client.update(path, race(append_line("bob")), backoff=0.001),
    ])
    assert errors == []
    data = client.read_versioned(path)
    assert sorted(data.data.decode().split()) == ["alice", "bob"]
    assert data.version == start + 2
    events = [e["event"] for e in mount.journal() if e.get("file") == "memory.md"]
    assert events.count("conflict") == 1  # the mount refused the loser's first commit


def test_mount_conflict_without_retries(mount: Mount) -> None:
    path = mount.seed("memory.md", "x")
    race = racing(2)
    errors = run_threads([
        lambda: client.update(path, race(append_line("alice")), retries=0),
        lambda: client.update(path, race(append_line("bob")), retries=0),
    ])
    assert [type(e) for e in errors] == [FenceConflict]
    err = errors[0]
    assert isinstance(err, FenceConflict)
    assert (err.rested_version, err.current_version) == (1, 2)
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.EAGAIN


def test_mount_replace_against_an_old_read(mount: Mount) -> None:
    path = mount.seed("doc.json", "{}")
    old = client.read_versioned(path)
    run_py("import sys; open(sys.argv[1], 'w').write('{\"other\": 1}')", path)
    with pytest.raises(FenceConflict) as info:
        client.replace(path, b'{"mine": 1}', version=old.version, epoch=old.epoch)
    assert (info.value.rested_version, info.value.current_version) == (1, 2)
    assert client.replace(path, b"new", version=2).version == 3
    assert client.replace(mount.path("fresh.json"), b"x", version=0) == (b"x", 1, 0)
    with pytest.raises(FenceConflict):
        client.replace(mount.path("fresh.json"), b"y", version=0)


def test_mount_reclaim_fences_and_is_not_retried(mount: Mount) -> None:
    path = mount.seed("task.md", "mine")
    calls = []

    def stall_then_write(old: bytes) -> bytes:
        calls.append(old)
        out = run_py("import sys; from fencefs import client; print(client.reclaim(sys.argv[1]))",
                     path)
        assert out.stdout.strip() == "1", out.stderr
        return b"zombie"

    with pytest.raises(Fenced) as info:
        client.update(path, stall_then_write, retries=5)
    assert len(calls) == 1
    assert (info.value.rested_epoch, info.value.current_epoch) == (0, 1)
    assert client.read_versioned(path) == (b"mine", 1, 1)
    rejected = [n for n in mount.rejected() if ".fenced." in n]
    assert len(rejected) == 1  # the zombie's bytes are kept, not installed
    assert (mount.backing / ".fencefs" / "rejected" / rejected[0]).read_bytes() == b"zombie"


def test_mount_exclusive_holder_gives_claim_busy(mount: Mount) -> None:
    path = mount.seed("plan.md", "v1")
    os.setxattr(path, "user.fencefs.policy", b"exclusive")
    with subprocess.Popen(
        [sys.executable, "-c",
         "import os,sys; fd=os.open(sys.argv[1], os.O_RDWR); print('ready', flush=True);"
         " sys.stdin.readline()", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        try:
            with pytest.raises(ClaimBusy) as info:
                client.update(path, append_line("x"))
            assert info.value.errno == errno.EBUSY
        finally:
            holder.communicate("\n", timeout=10)
    assert client.update(path, append_line("x")).data == b"v1x\n"


def test_mount_reads_pair_content_with_its_version(mount: Mount) -> None:
    """The content read is exactly the version reported, while commits land."""
    path = mount.seed("count", "1")  # content == version, kept so by every commit
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            client.update(path, lambda b: str(int(b) + 1).encode(), retries=100)

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(300):
            data, version, _epoch = client.read_versioned(path)
            assert int(data) == version
    finally:
        stop.set()
        t.join(30)


def test_mount_processes_count_exactly(mount: Mount) -> None:
    counter_race(mount.path("count"), 3, 15)
