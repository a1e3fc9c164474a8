"""POSIX conformance: fencefs against an ordinary directory (issue 7, item 3).

Each scenario runs the same system calls twice, once in a plain directory
on the host filesystem (the reference a passthrough would match) and once
in the mount, and compares what the caller sees: return values, data,
sizes, modes, owners, times, and errno names. Where fencefs differs on
purpose (hard links, shared writable mmap) the test pins the documented
errno instead.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.mount import Mount

Outcome = tuple[str, Any]


def outcome(fn: Callable[[], Any]) -> Outcome:
    try:
        return ("ok", fn())
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno or 0, str(e.errno)))


def same_on_both(scenario: Callable[[Path], list[Outcome]], plain: Path,
                 mount: Mount) -> list[Outcome]:
    plain.mkdir(exist_ok=True)
    expected = scenario(plain)
    got = scenario(mount.mnt)
    assert got == expected
    return got


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def listing(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root) if n != ".fencefs")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- scenarios: each returns what a caller observes --------------------------


def files_and_errors(root: Path) -> list[Outcome]:
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []

    def create_excl() -> int:
        fd = os.open(p("f"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        n = os.write(fd, b"hello")
        os.close(fd)
        return n

    out.append(outcome(create_excl))
    out.append(outcome(create_excl))  # EEXIST
    out.append(outcome(lambda: stat.S_IMODE(os.stat(p("f")).st_mode)))
    out.append(outcome(lambda: read(p("f"))))
    out.append(outcome(lambda: os.open(p("missing"), os.O_RDONLY)))  # ENOENT
    out.append(outcome(lambda: os.open(p("f"), os.O_RDONLY | os.O_DIRECTORY)))  # ENOTDIR
    out.append(outcome(lambda: os.mkdir(p("d"))))
    out.append(outcome(lambda: os.mkdir(p("d"))))  # EEXIST
    out.append(outcome(lambda: os.open(p("d"), os.O_WRONLY)))  # EISDIR
    out.append(outcome(lambda: os.rmdir(p("f"))))  # ENOTDIR
    out.append(outcome(lambda: os.unlink(p("d"))))  # EISDIR
    out.append(outcome(lambda: os.close(os.open(p("d/inner"), os.O_WRONLY | os.O_CREAT))))
    out.append(outcome(lambda: os.rmdir(p("d"))))  # ENOTEMPTY
    out.append(outcome(lambda: os.unlink(p("missing"))))  # ENOENT
    out.append(outcome(lambda: os.truncate(p("d"), 0)))  # EISDIR

    def write_on_read_only_fd() -> int:
        fd = os.open(p("f"), os.O_RDONLY)
        try:
            return os.write(fd, b"x")
        finally:
            os.close(fd)

    out.append(outcome(write_on_read_only_fd))  # EBADF

    def o_trunc_leaves_empty() -> int:
        os.close(os.open(p("f"), os.O_WRONLY | os.O_TRUNC))
        return os.stat(p("f")).st_size

    out.append(outcome(o_trunc_leaves_empty))
    out.append(outcome(lambda: listing(root)))
    return out


def rename_cases(root: Path) -> list[Outcome]:
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []
    for name, text in (("a", "A"), ("b", "B")):
        with open(p(name), "w") as f:
            f.write(text)
    os.makedirs(p("full/x"))
    os.mkdir(p("empty"))
    out.append(outcome(lambda: os.rename(p("a"), p("a2"))))
    out.append(outcome(lambda: os.rename(p("a2"), p("b"))))  # over a file
    out.append(outcome(lambda: read(p("b"))))
    out.append(outcome(lambda: os.path.exists(p("a2"))))
    out.append(outcome(lambda: os.rename(p("missing"), p("z"))))  # ENOENT
    out.append(outcome(lambda: os.rename(p("b"), p("full"))))  # EISDIR
    out.append(outcome(lambda: os.rename(p("full"), p("b"))))  # ENOTDIR
    out.append(outcome(lambda: os.rename(p("empty"), p("full"))))  # ENOTEMPTY
    out.append(outcome(lambda: os.rename(p("full"), p("empty"))))  # over an empty dir
    out.append(outcome(lambda: os.rename(p("empty"), p("empty/x/sub"))))  # EINVAL
    out.append(outcome(lambda: os.listdir(p("empty"))))
    out.append(outcome(lambda: renameat2(p("b"), p("empty/x"), NOREPLACE)))  # EEXIST
    out.append(outcome(lambda: renameat2(p("b"), p("c"), NOREPLACE)))
    out.append(outcome(lambda: listing(root)))
    return out


NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old: str, new: str, flags: int) -> None:
    at_fdcwd = -100
    if _libc.renameat2(at_fdcwd, old.encode(), at_fdcwd, new.encode(), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def metadata_cases(root: Path) -> list[Outcome]:
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []
    with open(p("m"), "w") as f:
        f.write("0123456789")
    os.chmod(p("m"), 0o600)
    out.append(outcome(lambda: stat.S_IMODE(os.stat(p("m")).st_mode)))
    os.chmod(p("m"), 0o4755)  # setuid bit kept for root
    out.append(outcome(lambda: stat.S_IMODE(os.stat(p("m")).st_mode)))
    os.chown(p("m"), 4321, 8765)
    out.append(outcome(lambda: (os.stat(p("m")).st_uid, os.stat(p("m")).st_gid)))
    os.chown(p("m"), -1, 1111)
    out.append(outcome(lambda: (os.stat(p("m")).st_uid, os.stat(p("m")).st_gid)))
    os.utime(p("m"), ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    st = os.stat(p("m"))
    out.append(("ok", (st.st_atime_ns, st.st_mtime_ns)))
    before = time.time()
    os.utime(p("m"))  # UTIME_NOW
    out.append(("ok", abs(os.stat(p("m")).st_mtime - before) < 5))
    # A commit keeps mode and owner.
    with open(p("m"), "w") as f:
        f.write("new")
    st = os.stat(p("m"))
    out.append(("ok", (stat.S_IMODE(st.st_mode) & 0o777, st.st_uid, st.st_gid, st.st_size)))
    os.truncate(p("m"), 1)
    out.append(outcome(lambda: read(p("m"))))
    os.truncate(p("m"), 5)
    out.append(outcome(lambda: read(p("m"))))
    fd = os.open(p("m"), os.O_RDWR)
    os.ftruncate(fd, 2)
    os.close(fd)
    out.append(outcome(lambda: read(p("m"))))
    out.append(outcome(lambda: os.access(p("m"), os.R_OK | os.W_OK)))
    return out


def symlink_cases(root: Path) -> list[Outcome]:
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []
    os.mkdir(p("sub"))
    with open(p("target"), "w") as f:
        f.write("t")
    out.append(outcome(lambda: os.symlink("../target", p("sub/link"))))
    out.append(outcome(lambda: os.readlink(p("sub/link"))))
    out.append(outcome(lambda: stat.S_ISLNK(os.lstat(p("sub/link")).st_mode)))
    out.append(outcome(lambda: read(p("sub/link"))))
    out.append(outcome(lambda: os.open(p("sub/link"), os.O_RDONLY | os.O_NOFOLLOW)))  # ELOOP
    out.append(outcome(lambda: os.symlink("nowhere", p("dangling"))))
    out.append(outcome(lambda: os.open(p("dangling"), os.O_RDONLY)))  # ENOENT
    out.append(outcome(lambda: os.symlink("target", p("sub/link"))))  # EEXIST
    out.append(outcome(lambda: os.rename(p("sub/link"), p("sub/link2"))))
    out.append(outcome(lambda: os.readlink(p("sub/link2"))))
    out.append(outcome(lambda: os.unlink(p("sub/link2"))))
    out.append(outcome(lambda: listing(root)))
    return out


def offset_cases(root: Path) -> list[Outcome]:
    """O_EXCL, O_APPEND, seeking past the end, the size a writer sees."""
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []
    with open(p("log"), "wb") as f:
        f.write(b"head\n")
    fd = os.open(p("log"), os.O_WRONLY | os.O_APPEND)
    out.append(outcome(lambda: os.write(fd, b"one\n")))
    out.append(outcome(lambda: os.lseek(fd, 0, os.SEEK_SET)))
    out.append(outcome(lambda: os.write(fd, b"two\n")))  # still lands at the end
    out.append(outcome(lambda: os.lseek(fd, 0, os.SEEK_CUR)))
    os.close(fd)
    out.append(outcome(lambda: read(p("log"))))
    # An appending O_RDWR handle reads its own appends.
    fd = os.open(p("log"), os.O_RDWR | os.O_APPEND)
    os.write(fd, b"three\n")
    out.append(outcome(lambda: os.pread(fd, 100, 0)))
    out.append(outcome(lambda: os.pread(fd, 4, 12)))
    out.append(outcome(lambda: os.fstat(fd).st_size))
    os.fsync(fd)
    out.append(outcome(lambda: os.pread(fd, 100, 0)))
    os.write(fd, b"four\n")
    out.append(outcome(lambda: os.pread(fd, 100, 0)))
    os.close(fd)
    # Seek past the end: a hole reads as zeros.
    fd = os.open(p("holey"), os.O_RDWR | os.O_CREAT, 0o644)
    out.append(outcome(lambda: os.lseek(fd, 4096 * 3 + 7, os.SEEK_SET)))
    out.append(outcome(lambda: os.write(fd, b"end")))
    out.append(outcome(lambda: os.pread(fd, 20, 4096 * 3)))
    os.close(fd)
    out.append(outcome(lambda: os.stat(p("holey")).st_size))
    out.append(outcome(lambda: read(p("holey"))[:8]))
    # A writer sees the size of what it wrote, and SEEK_END goes there.
    with open(p("grow"), "wb") as f:
        f.write(b"12345")
    fd = os.open(p("grow"), os.O_RDWR)
    os.write(fd, b"abcdefghij")
    out.append(outcome(lambda: os.fstat(fd).st_size))
    out.append(outcome(lambda: os.lseek(fd, 0, os.SEEK_END)))
    os.write(fd, b"XY")
    out.append(outcome(lambda: os.pread(fd, 100, 0)))
    os.close(fd)
    out.append(outcome(lambda: read(p("grow"))))
    # pwrite/pread at offsets, read past the end.
    fd = os.open(p("grow"), os.O_RDWR)
    out.append(outcome(lambda: os.pwrite(fd, b"__", 3)))
    out.append(outcome(lambda: os.pread(fd, 10, 100)))
    os.close(fd)
    out.append(outcome(lambda: read(p("grow"))))
    # Python's own idioms: "a" mode tell(), "r+" rewrite with truncate().
    with open(p("py"), "w") as f:
        f.write("abc")
    with open(p("py"), "a") as f:
        f.write("def")
        out.append(("ok", f.tell()))
    with open(p("py"), "r+") as f:
        data = f.read()
        f.seek(0)
        f.write(data.upper()[:2])
        f.truncate()
    out.append(outcome(lambda: read(p("py"))))
    return out


def open_file_lifetimes(root: Path) -> list[Outcome]:
    """An open descriptor outlives unlink and rename, as on any filesystem."""
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []
    with open(p("f"), "w") as f:
        f.write("kept")
    fd = os.open(p("f"), os.O_RDONLY)
    os.unlink(p("f"))
    out.append(outcome(lambda: os.pread(fd, 10, 0)))
    out.append(outcome(lambda: os.fstat(fd).st_size))
    out.append(outcome(lambda: os.path.exists(p("f"))))
    os.close(fd)
    # A file replaced by a rename: the old descriptor still reads and stats.
    for name, text in (("r", "replaced"), ("r.tmp", "replacement")):
        with open(p(name), "w") as f:
            f.write(text)
    fd = os.open(p("r"), os.O_RDONLY)
    os.rename(p("r.tmp"), p("r"))
    out.append(outcome(lambda: os.pread(fd, 20, 0)))
    out.append(outcome(lambda: os.fstat(fd).st_size))
    out.append(outcome(lambda: os.stat(p("r")).st_size))
    os.close(fd)
    with open(p("g"), "w") as f:
        f.write("g1")
    fd = os.open(p("g"), os.O_RDWR)
    os.rename(p("g"), p("h"))
    os.write(fd, b"G2")
    os.close(fd)
    out.append(outcome(lambda: read(p("h"))))
    out.append(outcome(lambda: listing(root)))
    return out


def mknod_cases(root: Path) -> list[Outcome]:
    """Plain files and FIFOs made by mknod (tar --xattrs makes files so)."""
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []
    out.append(outcome(lambda: os.mknod(p("reg"), 0o640 | stat.S_IFREG)))
    out.append(outcome(lambda: stat.S_IMODE(os.stat(p("reg")).st_mode)))
    out.append(outcome(lambda: os.stat(p("reg")).st_size))
    with open(p("reg"), "w") as f:
        f.write("made by mknod")
    out.append(outcome(lambda: read(p("reg"))))
    out.append(outcome(lambda: os.mknod(p("reg"), 0o640 | stat.S_IFREG)))  # EEXIST
    out.append(outcome(lambda: os.mkfifo(p("fifo"), 0o600)))
    out.append(outcome(lambda: stat.S_ISFIFO(os.stat(p("fifo")).st_mode)))
    out.append(outcome(lambda: os.unlink(p("fifo"))))
    return out


@pytest.mark.parametrize("scenario", [files_and_errors, rename_cases, metadata_cases,
                                      symlink_cases, offset_cases, open_file_lifetimes,
                                      mknod_cases])
def test_same_as_plain_directory(scenario: Callable[[Path], list[Outcome]], mount: Mount,
                                 tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        same_on_both(scenario, tmp_path / "plain", mount)
    finally:
        os.umask(old)


def test_readdir_with_thousands_of_entries_made_through_the_mount(mount: Mount) -> None:
    os.mkdir(mount.path("many"))
    names = {f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(2000)}
    for name in names:
        os.close(os.open(mount.path(f"many/{name}"), os.O_WRONLY | os.O_CREAT, 0o644))
    assert set(os.listdir(mount.path("many"))) == names
    seen = {e.name: e.inode() for e in os.scandir(mount.path("many"))}
    assert set(seen) == names and len(set(seen.values())) == len(names)
    for name in sorted(names)[::2]:
        os.unlink(mount.path(f"many/{name}"))
    assert set(os.listdir(mount.path("many"))) == set(sorted(names)[1::2])


def big_file_roundtrip(mount: Mount, mib: int) -> None:
    path = mount.path("big.bin")
    block = hashlib.sha256(b"fencefs").digest() * (1 << 15)  # 1 MiB
    chunk_of = lambda i: i.to_bytes(4, "little") + block[4:]  # noqa: E731
    digest = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for i in range(mib):
        write_all(fd, chunk_of(i))
        digest.update(chunk_of(i))
    os.close(fd)
    assert os.stat(path).st_size == mib << 20
    assert (mount.backing / "big.bin").stat().st_size == mib << 20

    def content_digest() -> str:
        check = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                check.update(chunk)
        return check.hexdigest()

    assert content_digest() == digest.hexdigest()
    # Change one byte in the middle through a read-write handle.
    middle = mib // 2
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, b"\xff", (middle << 20) + 100)
    os.close(fd)
    changed = hashlib.sha256()
    for i in range(mib):
        chunk = chunk_of(i)
        if i == middle:
            chunk = chunk[:100] + b"\xff" + chunk[101:]
        changed.update(chunk)
    assert content_digest() == changed.hexdigest()
    assert os.getxattr(path, "user.fencefs.version") == b"2"


def test_large_file(mount: Mount) -> None:
    big_file_roundtrip(mount, 320)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_large_file_several_hundred_mib(mount: Mount) -> None:
    big_file_roundtrip(mount, 1024)


def test_sparse_file_stays_sparse_through_a_rewrite(mount: Mount) -> None:
    path = mount.path("sparse.img")
    size = 256 << 20
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"tail", size - 4)
    os.close(fd)
    backing = mount.backing / "sparse.img"
    assert backing.stat().st_size == size
    assert backing.stat().st_blocks * 512 < 1 << 20
    # A small in-place change: the draft copies the content, holes included.
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, b"head", 0)
    os.close(fd)
    st = backing.stat()
    assert st.st_size == size
    assert st.st_blocks * 512 < 1 << 20, f"{st.st_blocks * 512} bytes allocated"
    with open(path, "rb") as f:
        assert f.read(4) == b"head"
        f.seek(size - 4)
        assert f.read() == b"tail"
        f.seek(size // 2)
        assert f.read(4096) == bytes(4096)


def test_fsync_of_file_and_directory(mount: Mount) -> None:
    os.mkdir(mount.path("d"))
    fd = os.open(mount.path("d/f"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"x")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    dfd = os.open(mount.path("d"), os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    assert (mount.backing / "d/f").read_bytes() == b"x"


# -- where fencefs differs on purpose (docs/guide.md, Known limits) ----------


def test_hard_link_refused_with_eperm(mount: Mount, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain/a").write_text("a")
    os.link(tmp_path / "plain/a", tmp_path / "plain/b")  # the reference allows it
    mount.seed("a", "a")
    with pytest.raises(OSError) as info:
        os.link(mount.path("a"), mount.path("b"))
    assert info.value.errno == errno.EPERM
    assert not os.path.exists(mount.path("b"))


def test_shared_writable_mmap_refused_with_enodev(mount: Mount) -> None:
    path = mount.seed("m.bin", "0123456789")
    with open(path, "r+b") as f:
        with pytest.raises(OSError) as info:
            mmap.mmap(f.fileno(), 10, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        assert info.value.errno == errno.ENODEV
        private = mmap.mmap(f.fileno(), 10, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
        private[0:1] = b"X"  # a private copy: never reaches the file
        assert private[:3] == b"X12"
        private.close()
    with open(path, "rb") as f:
        assert f.read() == b"0123456789"


def test_writes_to_an_unlinked_file_are_a_conflict(mount: Mount, tmp_path: Path) -> None:
    """On a plain filesystem the bytes written to an unlinked file vanish at
    the last close. fencefs treats the unlink as a commit the writer's claim
    did not rest on: EAGAIN, and the bytes are kept under rejected/."""
    for mode, data in (("rw", b"late"), ("append", b"late line\n")):
        path = mount.seed(f"{mode}.txt", "committed\n")
        flags = os.O_RDWR if mode == "rw" else os.O_WRONLY | os.O_APPEND
        fd = os.open(path, flags)
        if mode == "append":
            os.write(fd, b"early line\n")
        os.unlink(path)
        with pytest.raises(OSError) as info:
            os.write(fd, data)
            os.close(fd)
        assert info.value.errno == errno.EAGAIN
        with pytest.raises(OSError) as info:
            os.close(fd)
        assert info.value.errno == errno.EAGAIN
        assert not os.path.exists(path)
    kept = mount.rejected()
    assert len(kept) == 2 and all(".conflict." in name for name in kept)
