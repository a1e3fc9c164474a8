"""Everything that is not a fenced commit behaves as on the backing filesystem."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time

import pytest

from tests.support.mount import Mount


def test_directories_files_rename_unlink(mount: Mount) -> None:
    os.makedirs(mount.path("a/b/c"))
    with open(mount.path("a/b/c/f.txt"), "w") as f:
        f.write("hello")
    os.rename(mount.path("a/b"), mount.path("a/moved"))
    with open(mount.path("a/moved/c/f.txt")) as f:
        assert f.read() == "hello"
    assert (mount.backing / "a/moved/c/f.txt").read_text() == "hello"
    os.rename(mount.path("a/moved/c/f.txt"), mount.path("a/g.txt"))
    assert sorted(os.listdir(mount.path("a"))) == ["g.txt", "moved"]
    os.unlink(mount.path("a/g.txt"))
    assert not os.path.exists(mount.path("a/g.txt"))
    os.rmdir(mount.path("a/moved/c"))
    with pytest.raises(OSError) as info:
        os.rmdir(mount.path("a"))
    assert info.value.errno == errno.ENOTEMPTY


def test_rename_keeps_version_and_writes_after_dir_rename(mount: Mount) -> None:
    os.mkdir(mount.path("d"))
    path = mount.path("d/plan.md")
    for text in ("1", "2"):
        with open(path, "w") as f:
            f.write(text)
    fd = os.open(path, os.O_RDWR)
    os.rename(mount.path("d"), mount.path("e"))
    os.write(fd, b"3")
    os.close(fd)  # the handle follows its path
    moved = mount.path("e/plan.md")
    with open(moved) as f:
        assert f.read() == "3"
    assert os.getxattr(moved, "user.fencefs.version") == b"3"


def test_truncate_chmod_utimens_statfs(mount: Mount) -> None:
    path = mount.path("f.bin")
    with open(path, "wb") as f:
        f.write(b"0123456789")
    os.truncate(path, 4)
    with open(path, "rb") as f:
        assert f.read() == b"0123"
    os.truncate(path, 8)
    with open(path, "rb") as f:
        assert f.read() == b"0123\0\0\0\0"
    os.chmod(path, 0o640)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert stat.S_IMODE((mount.backing / "f.bin").stat().st_mode) == 0o640
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(path).st_mtime_ns == 2_000_000_000
    # Our own utime is no foreign write: the version stays.
    version = os.getxattr(path, "user.fencefs.version")
    os.stat(path)
    assert os.getxattr(path, "user.fencefs.version") == version
    # A commit keeps the mode.
    with open(path, "w") as f:
        f.write("new")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    sv = os.statvfs(mount.mnt)
    assert sv.f_blocks > 0 and sv.f_bsize > 0


def test_times_set_before_the_close_survive_the_commit(mount: Mount) -> None:
    """futimens() on a handle whose draft is not committed yet (what tar and
    cp -p do before they close): the kernel sends it without the handle, so
    the times go to the path's pending drafts too."""
    path = mount.path("f.txt")
    with open(path, "w") as f:
        f.write("x")
        f.flush()
        os.utime(f.fileno(), ns=(1_000_000_000_000_000_000, 1_100_000_000_123_456_789))
    assert os.stat(path).st_mtime_ns == 1_100_000_000_123_456_789
    assert os.getxattr(path, "user.fencefs.version") == b"1"


def test_ftruncate_on_write_handle_is_part_of_the_draft(mount: Mount) -> None:
    path = mount.seed("f.txt", "abcdef")
    fd = os.open(path, os.O_RDWR)
    os.ftruncate(fd, 2)
    with open(path) as f:
        assert f.read() == "abcdef"  # not yet committed
    os.close(fd)
    with open(path) as f:
        assert f.read() == "ab"


def test_symlinks_of_any_target(mount: Mount) -> None:
    """As on any filesystem: a symlink's target is the caller's to follow,
    in the caller's own context; the daemon never follows one (test_paths)."""
    with open(mount.path("target.txt"), "w") as f:
        f.write("t")
    os.mkdir(mount.path("sub"))
    os.symlink("../target.txt", mount.path("sub/link"))
    with open(mount.path("sub/link")) as f:
        assert f.read() == "t"
    assert os.readlink(mount.path("sub/link")) == "../target.txt"
    for i, target in enumerate(("/etc/hostname", "../../outside", "../sub/../../x")):
        os.symlink(target, mount.path(f"sub/l{i}"))
        assert os.readlink(mount.path(f"sub/l{i}")) == target
        assert os.readlink(mount.backing / f"sub/l{i}") == target
    with open(mount.path("sub/l0")) as f, open("/etc/hostname") as g:
        assert f.read() == g.read()
    # A symlink planted in the backing directory reads as it is.
    os.symlink("/etc/hostname", mount.backing / "planted")
    assert os.readlink(mount.path("planted")) == "/etc/hostname"
    # The daemon acts on a link, never through it: user.* attributes are
    # refused on symlinks (EPERM), as on the backing filesystem.
    with pytest.raises(OSError) as info:
        os.setxattr(mount.path("planted"), "user.x", b"1", follow_symlinks=False)
    assert info.value.errno == errno.EPERM


def test_hard_links_refused(mount: Mount) -> None:
    with open(mount.path("a"), "w") as f:
        f.write("a")
    with pytest.raises(OSError) as info:
        os.link(mount.path("a"), mount.path("b"))
    assert info.value.errno == errno.EPERM


def test_large_directory_listing(mount: Mount) -> None:
    d = mount.backing / "many"
    d.mkdir()
    names = {f"file-{i:05d}" for i in range(5000)}
    for name in names:
        (d / name).touch()
    assert set(os.listdir(mount.path("many"))) == names
    assert len(list(os.scandir(mount.path("many")))) == 5000


def test_user_xattrs_pass_through_and_survive_commits(mount: Mount) -> None:
    path = mount.seed("x.txt", "1")
    os.setxattr(path, "user.color", b"blue")
    assert os.getxattr(path, "user.color") == b"blue"
    assert os.getxattr(str(mount.backing / "x.txt"), "user.color") == b"blue"
    with open(path, "w") as f:
        f.write("2")
    assert os.getxattr(path, "user.color") == b"blue"
    names = os.listxattr(path)
    assert "user.color" in names and "user.fencefs.version" in names
    assert "user.fencefs.state" not in names  # internal state stays hidden
    os.removexattr(path, "user.color")
    assert "user.color" not in os.listxattr(path)


def test_meta_dir_is_read_only_and_drafts_hidden(mount: Mount) -> None:
    with open(mount.path("f"), "w") as f:
        f.write("x")
    # (journal/, the older journal segments, appears once the journal rotates)
    assert sorted(os.listdir(mount.path(".fencefs"))) == [
        "journal.jsonl", "rejected", "snapshot-meta", "snapshots", "txn", "versions"]
    with open(mount.path(".fencefs/journal.jsonl")) as f:
        assert '"event":"commit"' in f.read()
    for action in (
        lambda: open(mount.path(".fencefs/journal.jsonl"), "a"),
        lambda: open(mount.path(".fencefs/new"), "w"),
        lambda: os.unlink(mount.path(".fencefs/journal.jsonl")),
        lambda: os.mkdir(mount.path(".fencefs/x")),
        lambda: os.rename(mount.path("f"), mount.path(".fencefs/f")),
        lambda: open(mount.path(".fencefs/snapshots/new"), "w"),
        lambda: os.rmdir(mount.path(".fencefs/txn")),
    ):
        with pytest.raises(OSError) as info:
            action()
        assert info.value.errno == errno.EROFS
    assert not os.path.exists(mount.path(".fencefs/drafts"))


def test_foreign_write_is_adopted_and_journaled(mount: Mount) -> None:
    path = mount.seed("plan.md", "through the mount")
    stale = os.open(path, os.O_RDWR)
    (mount.backing / "plan.md").write_text("straight into the backing dir, longer")
    with open(path) as f:
        assert f.read() == "straight into the backing dir, longer"
    assert os.getxattr(path, "user.fencefs.version") == b"2"
    with pytest.raises(OSError) as info:
        os.write(stale, b"x")
    assert info.value.errno == errno.EAGAIN
    with pytest.raises(OSError) as info:
        os.close(stale)
    assert info.value.errno == errno.EAGAIN
    assert any(e["event"] == "foreign" and e["file"] == "plan.md" for e in mount.journal())


def test_unmount_and_remount_keep_files(mount: Mount) -> None:
    with open(mount.path("keep.txt"), "w") as f:
        f.write("kept")
    mount.remount()
    with open(mount.path("keep.txt")) as f:
        assert f.read() == "kept"
    out = subprocess.run(["stat", "-f", "-c", "%T", str(mount.mnt)], capture_output=True,
                         text=True).stdout
    assert "fuse" in out


def test_mount_is_private_to_the_mounting_user(mount: Mount) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    with open(mount.path("secret.txt"), "w") as f:
        f.write("x")
    code = ("import os,sys\nos.setgid(65534)\nos.setuid(65534)\n"
            "try:\n    os.stat(sys.argv[1])\n    print('visible')\n"
            "except OSError as e:\n    print(e.errno)\n")
    out = subprocess.run([sys.executable, "-c", code, mount.path("secret.txt")],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(errno.EACCES)  # no allow_other: other users get EACCES


def test_stat_sees_a_commit_at_once(mount: Mount) -> None:
    """The kernel caches attributes (attr_timeout), and every commit through
    the mount drops them: no stat() after a commit returned shows the old
    size, by the same process or another."""
    path = mount.seed("plan.md", "v1\n")
    for i in range(2, 30):
        assert os.stat(path).st_size == len(f"v{i - 1}\n" * (i - 1))  # cached now
        other = subprocess.run([sys.executable, "-c",
                                "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                                path, f"v{i}\n" * i], capture_output=True, text=True)
        assert other.returncode == 0, other.stderr
        assert os.stat(path).st_size == len(f"v{i}\n" * i)


def test_a_writers_draft_size_is_its_own(mount: Mount) -> None:
    """A writer's fstat shows what it wrote; nobody else sees that size,
    not even from the kernel's attribute cache (G4)."""
    path = mount.seed("plan.md", "committed\n")
    with open(path, "r+b", buffering=0) as f:
        f.write(b"x" * 100)
        assert os.fstat(f.fileno()).st_size == 100
        other = subprocess.run([sys.executable, "-c",
                                "import os, sys; print(os.stat(sys.argv[1]).st_size)", path],
                               capture_output=True, text=True, check=True)
        assert int(other.stdout) == len("committed\n")
    assert os.stat(path).st_size == 100  # committed at close


def test_stat_sees_a_foreign_write_once_an_open_noticed_it(mount: Mount) -> None:
    """A write straight into the backing directory is noticed when the file is
    next opened through the mount; from then on stat() shows it, although
    the kernel had the old attributes cached."""
    path = mount.seed("notes.md", "short\n")
    assert os.stat(path).st_size == 6  # cached
    (mount.backing / "notes.md").write_text("a much longer foreign content\n")
    os.close(os.open(path, os.O_RDONLY))  # an open, no read (a read refreshes anyway)
    assert os.stat(path).st_size == len("a much longer foreign content\n")


def test_unlinked_files_leave_through_the_trash(mount: Mount) -> None:
    """An unlink takes the name away at once (a rename into .fencefs/trash/);
    the content is deleted by the daemon's trash thread soon after, and
    whatever a crash left in the trash is deleted at the next mount."""
    trash = mount.backing / ".fencefs" / "trash"
    for i in range(50):
        mount.seed(f"f{i}", "x" * 10_000)
    for i in range(50):
        os.unlink(mount.path(f"f{i}"))
        assert not os.path.exists(mount.path(f"f{i}"))
        assert not (mount.backing / f"f{i}").exists()
    deadline = time.monotonic() + 30
    while os.listdir(trash):  # evidence: the trash thread emptied it
        assert time.monotonic() < deadline, os.listdir(trash)
        time.sleep(0.01)
    assert sorted(os.listdir(mount.mnt)) == [".fencefs"]
    mount.stop()
    (trash / "left-by-a-crash").write_text("x")
    mount.start()
    assert os.listdir(trash) == []
