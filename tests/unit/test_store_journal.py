"""The journal (fencefs.store.journal): lines, the reserve past its end, and
a full disk (a small tmpfs, and an injected failing preallocation)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fencefs.store import journal as journal_mod
from fencefs.store.journal import MIN_ROOM, RESERVE, Journal, read_journal


def test_lines_round_trip_and_are_counted(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "journal.jsonl"))
    try:
        j.record("commit", "plan.md", version=2, epoch=0, identity="agent:a", skipped=None)
        j.record("conflict", "é/\n", op="open")
        assert (j.written, j.synced, j.lost) == (2, 0, 0)
        j.sync()
        assert j.synced == 2
    finally:
        j.close()
    entries = read_journal(str(tmp_path / "journal.jsonl"))
    assert [(e["event"], e["file"]) for e in entries] == [("commit", "plan.md"),
                                                         ("conflict", "é/\n")]
    assert "skipped" not in entries[0]  # None fields are left out
    raw = (tmp_path / "journal.jsonl").read_bytes()
    assert raw.isascii() and raw.count(b"\n") == 2  # one line per event, whatever the name


def test_read_journal_skips_torn_and_garbage_lines(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"event":"commit","file":"a"}\n\n{"event":"comm\n\xff\xfe\n'
                     b'{"event":"reclaim","file":"b"}\n{"event":"cut')
    assert [e["event"] for e in read_journal(str(path))] == ["commit", "reclaim"]


def test_reserve_keeps_room_allocated_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    j = Journal(str(path))
    try:
        assert j.reserve()
        st = os.stat(path)
        assert st.st_size == 0
        assert st.st_blocks * 512 >= RESERVE  # allocated, not counted in the size
    finally:
        j.close()


def test_no_room_to_reserve_refuses_once_the_reserve_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = Journal(str(tmp_path / "journal.jsonl"))
    try:
        def full(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(journal_mod, "_preallocate", full)
        line = 1000
        # Lines fill the reserve; reserve() says yes while MIN_ROOM is left.
        while j._end + line <= RESERVE - MIN_ROOM:
            j.record("commit", "x" * (line - 60))
            assert j.reserve()
        while j._end < RESERVE - MIN_ROOM // 2:
            j.record("commit", "x" * (line - 60))
        assert not j.reserve()  # a commit now is refused (ENOSPC) by its caller
        assert j.lost == 0
    finally:
        j.close()


def test_a_filesystem_that_cannot_preallocate_never_refuses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(journal_mod, "_preallocate", unsupported)
    j = Journal(str(tmp_path / "journal.jsonl"))
    try:
        for _ in range(400):
            j.record("commit", "y" * 1000)
        assert j.reserve()
    finally:
        j.close()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of our own (root only)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the full-disk journal test must run in CI (as root)")
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_a_full_disk_refuses_commits_and_never_raises_from_record(small_tmpfs: Path) -> None:
    j = Journal(str(small_tmpfs / "journal.jsonl"))
    try:
        assert j.reserve()
        # Everything else fills the disk.
        fd = os.open(small_tmpfs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        # The reserve still takes lines until it runs low...
        for _ in range(RESERVE // 900):
            if not j.reserve():
                break
            j.record("commit", "plan.md", pad="z" * 900)
        assert not j.reserve()
        assert j.lost == 0
        # ...then commits are refused, and what is recorded anyway is counted
        # as lost, never raised.
        assert RESERVE - MIN_ROOM <= j._end <= RESERVE + 4096
        for _ in range(100):
            j.record("commit", "plan.md", pad="z" * 900)
        assert j.lost > 0
        assert not j.reserve()
        os.unlink(small_tmpfs / "filler")  # room again
        assert j.reserve()
    finally:
        j.close()
