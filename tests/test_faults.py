"""Full disks and failing backing stores (issue 7, item 2).

The backing directory sits on a small filesystem of its own: a 4 MiB tmpfs
for a full disk, a loop-mounted ext4 image for a store that turns read-only
(errors=remount-ro after an error) or fails every I/O (the shutdown ioctl).
Whatever happens, a commit that could not be written is refused with the
errno at write() or close(), the committed content and version stay as they
were, and the daemon goes on serving.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mount import Mount, require_fuse

MiB = 1 << 20


def need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the fault tests must run as root in CI")
        pytest.skip("needs root to mount a small filesystem")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def start(base: Path) -> Mount:
    m = Mount(base)
    m.start()
    return m


def finish(m: Mount, *, allow: tuple[str, ...] = ()) -> None:
    m.stop()
    log = m.log()
    assert "Traceback" not in log and " ERROR " not in log, f"daemon logged errors:\n{log}"
    for line in log.splitlines():
        if " WARNING " in line:
            assert any(a in line for a in allow), f"unexpected warning: {line}"


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    """A base directory whose backing/ is a 4 MiB tmpfs."""
    require_fuse()
    need_root()
    backing = tmp_path / "backing"
    backing.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(backing))
    try:
        yield tmp_path
    finally:
        subprocess.run(["umount", "-l", str(backing)], capture_output=True)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    """A base directory whose backing/ is a 64 MiB ext4 image on a loop device."""
    require_fuse()
    need_root()
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    sh("mkfs.ext4", "-q", "-F", str(image))
    backing = tmp_path / "backing"
    backing.mkdir()
    sh("mount", "-o", "loop,errors=remount-ro", str(image), str(backing))
    try:
        yield tmp_path
    finally:
        subprocess.run(["umount", "-l", str(backing)], capture_output=True)


def free_bytes(path: Path) -> int:
    sv = os.statvfs(path)
    return sv.f_bfree * sv.f_frsize  # root's view: the daemon writes as root


def fill(path: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``path`` (straight into it) until ``leave``
    bytes are left, or as near as it gets."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        want = max(free_bytes(path) - leave, 0) if leave else 1 << 62
        while want > 0:
            try:
                want -= os.write(fd, b"\0" * min(want, 64 * 1024))
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
        if not leave:
            while True:  # the last odd blocks
                try:
                    os.write(fd, b"\0" * 1024)
                except OSError:
                    break
        os.fsync(fd)
    finally:
        os.close(fd)
    return filler


def version(path: str) -> int:
    return int(os.getxattr(path, "user.fencefs.version"))


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def events(m: Mount, name: str) -> list[dict[str, object]]:
    return [e for e in m.journal() if e["file"] == name]


def test_write_that_does_not_fit_fails_with_enospc_and_commits_nothing(small: Path) -> None:
    m = start(small)
    try:
        path = m.seed("plan.md", "version one\n")
        free_before = free_bytes(m.backing)
        fd = os.open(path, os.O_RDWR)
        written = 0
        with pytest.raises(OSError) as info:
            while written < 8 * MiB:
                written += os.write(fd, b"x" * 65536)
        assert info.value.errno == errno.ENOSPC
        assert written > 0
        # Every later call on the handle repeats it; close() commits nothing.
        with pytest.raises(OSError) as info:
            os.write(fd, b"more")
        assert info.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as info:
            os.close(fd)
        assert info.value.errno == errno.ENOSPC
        assert read(path) == b"version one\n" and version(path) == 1
        assert os.listdir(m.backing / ".fencefs/drafts") == []
        assert free_bytes(m.backing) >= free_before - 64 * 1024  # the draft is gone
        failed = [e for e in events(m, "plan.md") if e["event"] == "failed"]
        assert failed and failed[0]["errno"] == "ENOSPC"
        # The daemon goes on serving: a commit that fits lands.
        m.seed("plan.md", "version two\n")
        assert read(path) == b"version two\n" and version(path) == 2
    finally:
        finish(m, allow=("failed: [Errno 28]",))


def test_append_that_cannot_be_built_fails_at_close(small: Path) -> None:
    m = start(small)
    try:
        path = m.seed("log.txt", "l" * (1536 * 1024))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"appended\n" * 1000)
        filler = fill(m.backing, leave=256 * 1024)  # too little for content + appends
        with pytest.raises(OSError) as info:
            os.close(fd)
        assert info.value.errno == errno.ENOSPC
        assert read(path) == b"l" * (1536 * 1024) and version(path) == 1
        assert os.listdir(m.backing / ".fencefs/drafts") == []
        filler.unlink()
        with open(path, "a") as f:
            f.write("after\n")
        assert read(path) == b"l" * (1536 * 1024) + b"after\n" and version(path) == 2
    finally:
        finish(m, allow=("failed: [Errno 28]",))


def test_commit_on_a_full_disk_is_journaled_or_refused(ext4: Path) -> None:
    """The draft is written, then the disk fills up. The commit either lands
    and is journaled, or is refused with ENOSPC and changes nothing; never
    a commit that close() reports as failed, nor one the journal misses."""
    m = start(ext4)
    try:
        path = m.seed("plan.md", "old")
        journal = m.backing / ".fencefs/journal.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"new content")
        # The journal's next line needs a fresh page: pad it to a page edge.
        with open(journal, "ab") as j:
            j.write(b"\n" * (-journal.stat().st_size % 4096 or 4096))
        fill(m.backing)
        try:
            os.close(fd)
            closed = None
        except OSError as e:
            closed = e.errno
        commits = [e for e in events(m, "plan.md") if e["event"] == "commit"]
        if closed is None:
            assert read(path) == b"new content" and version(path) == 2
            assert len(commits) == 2, "a commit the journal does not have"
        else:
            assert closed == errno.ENOSPC
            assert read(path) == b"old" and version(path) == 1, \
                "close() failed but the commit landed"
        assert m.proc is not None and m.proc.poll() is None
        (m.backing / "filler").unlink()
        m.seed("plan.md", "fits again")
        assert read(path) == b"fits again"
    finally:
        finish(m, allow=("failed: [Errno 28]", "no room left to journal"))


def test_rename_commit_on_a_full_disk_is_journaled_or_refused(small: Path) -> None:
    """An atomic writer's rename needs no new space, but its journal line
    does. It must land and be journaled, or be refused and change nothing."""
    m = start(small)
    keep = -1
    try:
        path = m.seed("plan.md", "old")
        tmp = m.seed("plan.md.tmp", "new content")
        keep = os.open(path, os.O_RDONLY)  # the old content stays allocated
        journal = m.backing / ".fencefs/journal.jsonl"
        with open(journal, "ab") as j:  # the next line needs a fresh page
            j.write(b"\n" * (-journal.stat().st_size % 4096 or 4096))
        fill(m.backing)
        try:
            os.rename(tmp, path)
            renamed = None
        except OSError as e:
            renamed = e.errno
        os.close(keep)
        keep = -1
        (m.backing / "filler").unlink()
        commits = [e for e in events(m, "plan.md") if e["event"] == "commit"]
        if renamed is None:
            assert read(path) == b"new content" and version(path) == 2
            assert len(commits) == 2, "a commit the journal does not have"
        else:
            assert renamed == errno.ENOSPC
            assert read(path) == b"old" and version(path) == 1, \
                "rename() failed but the commit landed"
            assert read(tmp) == b"new content"
        m.seed("plan.md", "fits again")
        assert read(path) == b"fits again"
    finally:
        if keep >= 0:
            os.close(keep)
        finish(m)


def test_backing_store_turning_read_only(ext4: Path) -> None:
    m = start(ext4)
    try:
        path = m.seed("plan.md", "committed")
        other = m.seed("other.md", "other")
        writer = os.open(path, os.O_RDWR)
        os.write(writer, b"draft ")
        appender = os.open(other, os.O_WRONLY | os.O_APPEND)
        # The filesystem hits an error and remounts itself read-only.
        device = os.path.basename(os.path.realpath(_source_of(m.backing)))
        Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("fencefs test\n")
        with pytest.raises(OSError) as info:
            os.write(appender, b"tail")
            os.close(appender)
        assert info.value.errno == errno.EROFS
        with pytest.raises(OSError) as info:
            os.write(writer, b"more")
            os.close(writer)
        assert info.value.errno == errno.EROFS
        for fd in (writer, appender):
            try:
                os.close(fd)
            except OSError:
                pass
        with pytest.raises(OSError) as info:
            with open(path, "w") as f:
                f.write("new")
        assert info.value.errno == errno.EROFS
        with pytest.raises(OSError) as info:
            os.setxattr(path, "user.fencefs.reclaim", b"1")
        assert info.value.errno == errno.EROFS
        # Reads, claim state and listings go on.
        assert read(path) == b"committed" and version(path) == 1
        assert read(other) == b"other" and version(other) == 1
        assert os.getxattr(path, "user.fencefs.epoch") == b"0"
        assert {"other.md", "plan.md"} <= set(os.listdir(m.mnt))
        assert m.proc is not None and m.proc.poll() is None
    finally:
        finish(m, allow=("Errno 30", "could not record"))


def test_backing_store_failing_every_io(ext4: Path) -> None:
    m = start(ext4)
    try:
        path = m.seed("plan.md", "committed")
        writer = os.open(path, os.O_RDWR)
        os.write(writer, b"draft")
        # EXT4_IOC_SHUTDOWN, NOLOGFLUSH: from now on every I/O fails with EIO.
        fd = os.open(m.backing, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, 0x8004587D, (2).to_bytes(4, "little"))
        finally:
            os.close(fd)
        with pytest.raises(OSError) as info:
            os.close(writer)
        assert info.value.errno == errno.EIO
        with pytest.raises(OSError) as info:
            read(path)
        assert info.value.errno == errno.EIO
        assert m.proc is not None and m.proc.poll() is None
    finally:
        finish(m, allow=("Errno 5", "could not record"))


def _source_of(mountpoint: Path) -> str:
    out = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "-M", str(mountpoint)],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]
