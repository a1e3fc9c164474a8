"""fencefs/store/paths.py: the daemon never follows a symlink in the backing
directory, whether planted there beforehand or swapped in during an
operation, and handles paths longer than PATH_MAX. Every test runs twice:
with openat2 and with the component-by-component walk that replaces it."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fencefs.store.paths import Tree, _have_openat2, split


@pytest.fixture(params=["openat2", "walk"])
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tree]:
    root = tmp_path / "backing"
    root.mkdir()
    probe = os.open(root, os.O_PATH)
    have = _have_openat2(probe)
    os.close(probe)
    if request.param == "openat2" and not have:
        if os.environ.get("CI"):
            pytest.fail("openat2 is missing on this kernel")
        pytest.skip("openat2 is missing on this kernel")
    t = Tree(str(root), use_openat2=request.param == "openat2")
    yield t
    t.close()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the backing one, with a file the daemon must
    never read, write, chmod, chown or unlink through a link."""
    d = tmp_path / "outside"
    d.mkdir()
    secret = d / "secret"
    secret.write_text("secret")
    os.chmod(secret, 0o600)
    os.setxattr(secret, "user.mark", b"outside")
    return d


def untouched(outside: Path) -> None:
    secret = outside / "secret"
    st = secret.lstat()
    assert secret.read_text() == "secret"
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
    assert os.getxattr(secret, "user.mark") == b"outside"
    assert sorted(os.listdir(outside)) == ["secret"]


def refused(call: Callable[[], object], *codes: int) -> int:
    with pytest.raises(OSError) as info:
        call()
    assert info.value.errno in codes, (info.value, codes)
    return info.value.errno or 0


# -- a link planted in the backing directory -----------------------------------


def test_a_planted_directory_link_is_never_crossed(tree: Tree, outside: Path) -> None:
    root = Path(tree.root)
    os.symlink(outside, root / "d")  # absolute target
    os.symlink("../outside", root / "rel")  # relative, climbing out
    for link in ("d", "rel"):
        secret = f"{link}/secret"
        new = f"{link}/new"
        refused(lambda: tree.open(secret, os.O_RDONLY), errno.ELOOP)
        refused(lambda: tree.open(secret, os.O_WRONLY | os.O_TRUNC), errno.ELOOP)
        refused(lambda: tree.open(new, os.O_WRONLY | os.O_CREAT, 0o644), errno.ELOOP)
        refused(lambda: tree.lstat(secret), errno.ELOOP)
        refused(lambda: tree.chmod(secret, 0o666), errno.ELOOP)
        refused(lambda: tree.chown(secret, 1, 1), errno.ELOOP)
        refused(lambda: tree.utime(secret, (0, 0)), errno.ELOOP)
        refused(lambda: tree.unlink(secret), errno.ELOOP)
        refused(lambda: tree.rename(secret, "stolen"), errno.ELOOP)
        refused(lambda: tree.mkdir(new, 0o755), errno.ELOOP)
        refused(lambda: tree.symlink("x", new), errno.ELOOP)
        refused(lambda: tree.mknod(new, stat.S_IFIFO | 0o644), errno.ELOOP)
        refused(lambda: tree.getxattr(secret, "user.mark"), errno.ELOOP)
        refused(lambda: tree.setxattr(secret, "user.mark", b"x"), errno.ELOOP)
        refused(lambda: tree.removexattr(secret, "user.mark"), errno.ELOOP)
        refused(lambda: tree.listdir(link), errno.ELOOP, errno.ENOTDIR)
        refused(lambda: tree.sync_dir(link), errno.ELOOP, errno.ENOTDIR)
        refused(lambda: tree.rename("stolen", secret), errno.ELOOP, errno.ENOENT)
    untouched(outside)


def test_a_link_as_the_last_name_is_acted_on_itself(tree: Tree, outside: Path) -> None:
    root = Path(tree.root)
    target = str(outside / "secret")
    tree.symlink(target, "l")
    assert tree.readlink("l") == os.fsencode(target)
    assert stat.S_ISLNK(tree.lstat("l").st_mode)
    refused(lambda: tree.open("l", os.O_RDONLY), errno.ELOOP)
    refused(lambda: tree.open("l", os.O_WRONLY | os.O_TRUNC), errno.ELOOP)
    refused(lambda: tree.chmod("l", 0o666), errno.EOPNOTSUPP)
    tree.chown("l", os.getuid(), os.getgid())  # the link's own owner
    tree.utime("l", (1_000_000_000, 1_000_000_000))
    assert tree.lstat("l").st_mtime_ns == 1_000_000_000
    refused(lambda: tree.getxattr("l", "user.mark"), errno.ENODATA)
    refused(lambda: tree.setxattr("l", "user.mark", b"x"), errno.EPERM)
    refused(lambda: tree.removexattr("l", "user.mark"), errno.ENODATA, errno.EPERM)
    assert "user.mark" not in tree.listxattr("l")
    fd = tree.open_path("l")  # O_PATH: the link, not its target
    assert stat.S_ISLNK(os.fstat(fd).st_mode)
    os.close(fd)
    tree.rename("l", "m")
    tree.unlink("m")  # the link goes, not its target
    assert not os.path.lexists(root / "m")
    untouched(outside)


# -- a link swapped in during operations --------------------------------------


def test_a_directory_swapped_for_a_link_during_operations(tree: Tree, outside: Path) -> None:
    """A thread swaps backing/d between a real directory and a symlink to
    the outside directory (each swap one atomic rename) while the daemon's
    operations run on d/secret over and over: none of them ever reaches
    the outside file."""
    root = Path(tree.root)
    (root / "real").mkdir()
    os.symlink(outside, root / "evil")
    os.rename(root / "real", root / "d")  # d: a real directory
    stop = threading.Event()
    swaps = [0, 0]

    def swapper() -> None:
        while not stop.is_set():
            os.rename(root / "d", root / "real")
            os.rename(root / "evil", root / "d")
            swaps[0] += 1
            os.rename(root / "d", root / "evil")
            os.rename(root / "real", root / "d")
            swaps[1] += 1

    ops: list[Callable[[], object]] = [
        lambda: os.close(tree.open("d/secret", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)),
        lambda: tree.chmod("d/secret", 0o666),
        lambda: tree.chown("d/secret", 12345, 12345),
        lambda: tree.utime("d/secret", (0, 0)),
        lambda: tree.setxattr("d/secret", "user.mark", b"inside"),
        lambda: tree.unlink("d/secret"),
        lambda: tree.rename("d/secret", "taken"),
    ]
    worked = 0
    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        for i in range(6000):
            try:
                ops[i % len(ops)]()
                worked += 1
            except OSError as e:
                assert e.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR), e
    finally:
        stop.set()
        thread.join()
    assert swaps[0] > 10 and swaps[1] > 10  # evidence that the race happened
    assert worked > 0  # and that operations landed inside meanwhile
    untouched(outside)


# -- long paths and names --------------------------------------------------------


def test_paths_longer_than_path_max(tree: Tree) -> None:
    names = [f"{i:03d}" + "d" * 200 for i in range(30)]  # about 6,100 bytes
    for depth in range(1, len(names) + 1):
        tree.mkdir("/".join(names[:depth]), 0o755)
    deep = "/".join(names)
    assert len(deep) > 4096
    leaf = f"{deep}/" + "f" * 255  # NAME_MAX
    fd = tree.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.write(fd, b"deep")
    os.close(fd)
    assert tree.lstat(leaf).st_size == 4
    tree.setxattr(leaf, "user.a", b"1")
    assert tree.getxattr(leaf, "user.a") == b"1"
    tree.chmod(leaf, 0o600)
    tree.utime(leaf, (5, 5))
    tree.rename(leaf, f"{deep}/g")
    assert [n for n, _ in tree.listdir(deep)] == ["g"]
    tree.symlink("../" * 40 + "etc/passwd", f"{deep}/l")
    assert tree.readlink(f"{deep}/l").endswith(b"etc/passwd")
    tree.unlink(f"{deep}/l")
    tree.sync_dir(deep)
    refused(lambda: tree.mkdir(f"{deep}/" + "x" * 256, 0o755), errno.ENAMETOOLONG)
    tree.unlink(f"{deep}/g")
    for depth in range(len(names), 0, -1):
        tree.rmdir("/".join(names[:depth]))
    assert tree.listdir("") == []


def test_only_plain_relative_paths() -> None:
    for bad in ("/etc", "a//b", "a/../b", "./a", "a/", ".."):
        refused(lambda: split(bad), errno.EINVAL)
    assert split("") == [] and split("a/b") == ["a", "b"]


def test_every_file_type(tree: Tree) -> None:
    tree.mkdir("dir", 0o755)
    tree.mknod("dir/fifo", stat.S_IFIFO | 0o640)
    tree.mknod("dir/sock", stat.S_IFSOCK | 0o640)
    kinds = {name: stat.S_IFMT(st.st_mode) for name, st in tree.listdir("dir") if st}
    assert kinds == {"fifo": stat.S_IFIFO, "sock": stat.S_IFSOCK}
    if os.geteuid() == 0:
        tree.mknod("dir/chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        assert tree.lstat("dir/chr").st_rdev == os.makedev(1, 3)
        # chmod and xattrs of a device never open it
        tree.chmod("dir/chr", 0o640)
        assert stat.S_IMODE(tree.lstat("dir/chr").st_mode) == 0o640
    # a fifo is never opened by chmod/xattr calls (that would block)
    tree.chmod("dir/fifo", 0o600)
    refused(lambda: tree.getxattr("dir/fifo", "user.x"), errno.ENODATA)
