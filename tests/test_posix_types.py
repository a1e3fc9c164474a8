"""POSIX conformance for every file type (issue 17, item 1).

As in test_conformance.py: each scenario makes the same calls in a plain
directory and in the mount and compares what the caller sees (values,
modes, kinds, errno names). The types: regular files, directories,
symlinks (any target, ELOOP where POSIX says so), FIFOs, sockets, block and
character devices (made as root: the kernel checks CAP_MKNOD before the
request reaches the daemon); names up to NAME_MAX and paths up to PATH_MAX
relative to a directory deep inside the mount; modes on create under the
caller's umask.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.mount import Mount
from tests.test_conformance import Outcome, listing, outcome, read

NAME_MAX = 255
PATH_MAX = 4096


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def compare(scenario: Callable[[Path, Path], list[Outcome]], tmp_path: Path,
            mount: Mount) -> list[Outcome]:
    """Run ``scenario(root, outside)`` in a plain directory and in the mount;
    ``outside`` is a directory outside both, the same for both runs."""
    plain = tmp_path / "plain"
    plain.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "file").write_text("outside")
    expected = scenario(plain, outside)
    got = scenario(mount.mnt, outside)
    assert got == expected
    return got


def kind(path: str) -> str:
    mode = os.lstat(path).st_mode
    for name in ("REG", "DIR", "LNK", "FIFO", "SOCK", "BLK", "CHR"):
        if getattr(stat, f"S_IS{name}")(mode):
            return name
    return "?"


# -- symlinks ------------------------------------------------------------------


def symlinks_any_target(root: Path, outside: Path) -> list[Outcome]:
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []
    os.mkdir(p("sub"))
    targets = {
        "abs": str(outside / "file"),  # absolute, outside the mount
        "climb": os.path.relpath(outside / "file", root / "sub"),  # ../../outside/file
        "abs_dir": str(outside),
        "dangling": "/nonexistent/fencefs-test",
        "dot": ".",
        "long": "x/" * 1000 + "y",  # a 2,001-byte target
    }
    for name, target in targets.items():
        out.append(outcome(lambda: os.symlink(target, p(f"sub/{name}"))))
        out.append(outcome(lambda: os.readlink(p(f"sub/{name}")) == target))
        out.append(outcome(lambda: os.lstat(p(f"sub/{name}")).st_size))
        out.append(outcome(lambda: kind(p(f"sub/{name}"))))
    out.append(outcome(lambda: read(p("sub/abs"))))  # followed by the caller's kernel
    out.append(outcome(lambda: read(p("sub/climb"))))
    out.append(outcome(lambda: sorted(os.listdir(p("sub/abs_dir")))))
    out.append(outcome(lambda: os.open(p("sub/dangling"), os.O_RDONLY)))  # ENOENT
    out.append(outcome(lambda: os.open(p("sub/abs"), os.O_RDONLY | os.O_NOFOLLOW)))  # ELOOP
    os.symlink("b", p("a"))
    os.symlink("a", p("b"))
    out.append(outcome(lambda: os.symlink(str(root / "a"), p("abs_loop"))))
    out.append(outcome(lambda: os.open(p("abs_loop"), os.O_RDONLY)))  # ELOOP
    out.append(outcome(lambda: os.rename(p("sub/abs"), p("moved"))))
    out.append(outcome(lambda: os.readlink(p("moved")) == targets["abs"]))
    out.append(outcome(lambda: os.chown(p("moved"), 0, 0, follow_symlinks=False)))
    out.append(outcome(lambda: os.utime(p("moved"), ns=(10**9, 2 * 10**9),
                                        follow_symlinks=False)))
    out.append(outcome(lambda: os.lstat(p("moved")).st_mtime_ns))
    out.append(outcome(lambda: read(str(outside / "file"))))  # untouched
    out.append(outcome(lambda: os.unlink(p("moved"))))
    out.append(outcome(lambda: os.path.exists(str(outside / "file"))))
    out.append(outcome(lambda: sorted(os.listdir(p("sub")))))
    return out


def symlink_loops_and_bad_names(root: Path, outside: Path) -> list[Outcome]:
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []
    os.symlink("b", p("a"))
    os.symlink("a", p("b"))
    os.symlink("self", p("self"))
    for name in ("a", "self"):
        out.append(outcome(lambda: os.open(p(name), os.O_RDONLY)))  # ELOOP
        out.append(outcome(lambda: os.stat(p(name))))  # ELOOP
        out.append(outcome(lambda: os.lstat(p(name)).st_size))
    out.append(outcome(lambda: os.open(p("a/x"), os.O_RDONLY)))  # ELOOP
    out.append(outcome(lambda: os.mkdir(p("self/x"))))  # ELOOP
    # a name with a slash is a path: its directory must exist
    out.append(outcome(lambda: os.symlink("t", p("nodir/name"))))  # ENOENT
    out.append(outcome(lambda: os.symlink("t", p("a/"))))  # EEXIST
    out.append(outcome(lambda: os.symlink("t", p("x" * (NAME_MAX + 1)))))  # ENAMETOOLONG
    out.append(outcome(lambda: os.symlink("t", p("x" * NAME_MAX))))
    out.append(outcome(lambda: os.readlink(p("x" * NAME_MAX))))
    out.append(outcome(lambda: os.symlink("", p("empty"))))  # ENOENT
    out.append(outcome(lambda: listing(root)))
    return out


# -- FIFOs, sockets, devices ---------------------------------------------------


def fifos_and_sockets(root: Path, outside: Path) -> list[Outcome]:
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []
    out.append(outcome(lambda: os.mkfifo(p("fifo"), 0o640)))
    out.append(outcome(lambda: kind(p("fifo"))))
    out.append(outcome(lambda: stat.S_IMODE(os.stat(p("fifo")).st_mode)))

    def through_fifo() -> bytes:
        fd = os.open(p("fifo"), os.O_RDWR)  # a writer and a reader at once
        try:
            os.write(fd, b"through the pipe")
            return os.read(fd, 100)
        finally:
            os.close(fd)

    out.append(outcome(through_fifo))
    out.append(outcome(lambda: os.stat(p("fifo")).st_size))
    out.append(outcome(lambda: os.chmod(p("fifo"), 0o600)))
    out.append(outcome(lambda: os.rename(p("fifo"), p("fifo2"))))
    out.append(outcome(lambda: kind(p("fifo2"))))
    out.append(outcome(lambda: os.mknod(p("sock"), stat.S_IFSOCK | 0o644)))
    out.append(outcome(lambda: kind(p("sock"))))
    out.append(outcome(lambda: os.unlink(p("sock"))))

    def bound_socket() -> bytes:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            server.bind(p("s"))
            client.sendto(b"hello over a socket", p("s"))
            return server.recv(100)
        finally:
            server.close()
            client.close()

    out.append(outcome(bound_socket))
    out.append(outcome(lambda: kind(p("s"))))
    out.append(outcome(lambda: os.unlink(p("s"))))
    out.append(outcome(lambda: os.unlink(p("fifo2"))))
    out.append(outcome(lambda: listing(root)))
    return out


def devices(root: Path, outside: Path) -> list[Outcome]:
    """Block and character devices, as root. The mount is nodev (as FUSE
    mounts are): the nodes are made, listed, renamed and removed, never
    opened."""
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []
    for name, mode, dev in (("null", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
                            ("loop", stat.S_IFBLK | 0o660, os.makedev(7, 200))):
        out.append(outcome(lambda: os.mknod(p(name), mode, dev)))
        out.append(outcome(lambda: kind(p(name))))
        out.append(outcome(lambda: os.stat(p(name)).st_rdev == dev))
        out.append(outcome(lambda: stat.S_IMODE(os.stat(p(name)).st_mode)))
        out.append(outcome(lambda: os.chmod(p(name), 0o600)))
        out.append(outcome(lambda: os.chown(p(name), 1, 1)))
        out.append(outcome(lambda: (os.stat(p(name)).st_uid, os.stat(p(name)).st_gid)))
        out.append(outcome(lambda: os.mknod(p(name), mode, dev)))  # EEXIST
    out.append(outcome(lambda: os.rename(p("null"), p("null2"))))
    out.append(outcome(lambda: os.stat(p("null2")).st_rdev == os.makedev(1, 3)))
    out.append(outcome(lambda: listing(root)))
    out.append(outcome(lambda: os.unlink(p("null2"))))
    out.append(outcome(lambda: os.unlink(p("loop"))))
    return out


# -- names and paths -----------------------------------------------------------


def name_max(root: Path, outside: Path) -> list[Outcome]:
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []
    long, too_long = "n" * NAME_MAX, "n" * (NAME_MAX + 1)
    out.append(outcome(lambda: os.close(os.open(p(long), os.O_WRONLY | os.O_CREAT, 0o644))))
    out.append(outcome(lambda: os.open(p(too_long), os.O_WRONLY | os.O_CREAT, 0o644)))
    out.append(outcome(lambda: os.mkdir(p("d" * NAME_MAX))))
    out.append(outcome(lambda: os.mkdir(p("d" * (NAME_MAX + 1)))))
    out.append(outcome(lambda: os.mkfifo(p("f" * NAME_MAX))))
    out.append(outcome(lambda: os.mkfifo(p("f" * (NAME_MAX + 1)))))
    out.append(outcome(lambda: os.rename(p(long), p("r" * NAME_MAX))))
    out.append(outcome(lambda: os.rename(p("r" * NAME_MAX), p(too_long))))
    out.append(outcome(lambda: os.stat(p(too_long))))
    with open(p("r" * NAME_MAX), "w") as f:
        f.write("v1")
    with open(p("r" * NAME_MAX), "w") as f:
        f.write("v2")
    out.append(outcome(lambda: read(p("r" * NAME_MAX))))
    out.append(outcome(lambda: listing(root)))
    return out


def _deep(root: Path) -> tuple[int, str]:
    """A directory whose path from ``root`` is longer than PATH_MAX, made
    one level at a time from the level above (as a shell's cd would); its
    descriptor and the relative path of a target under it."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    name = "d" * 200
    for _ in range(25):  # 25 * 201 bytes: about 5,000
        os.mkdir(name, dir_fd=fd)
        nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    rel = "/".join(["e" * 200] * 15)  # about 3,000 bytes below it
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        os.mkdir("/".join(parts[:i]), dir_fd=fd)
    return fd, rel


def path_max(root: Path, outside: Path) -> list[Outcome]:
    """Every operation on paths up to PATH_MAX relative to a directory that
    is itself deeper than PATH_MAX below the mount's root."""
    out: list[Outcome] = []
    base, rel = _deep(root)
    try:
        f = f"{rel}/" + "f" * 50
        assert len(f) < PATH_MAX
        at = {"dir_fd": base}

        def create() -> int:
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640, **at)
            try:
                return os.write(fd, b"deep content")
            finally:
                os.close(fd)

        def cat(name: str) -> bytes:
            fd = os.open(name, os.O_RDONLY, **at)
            try:
                return os.read(fd, 100)
            finally:
                os.close(fd)

        def rewrite() -> int:
            fd = os.open(f, os.O_WRONLY | os.O_TRUNC, **at)
            try:
                return os.write(fd, b"rewritten")
            finally:
                os.close(fd)

        out.append(outcome(create))
        out.append(outcome(lambda: cat(f)))
        out.append(outcome(rewrite))
        out.append(outcome(lambda: cat(f)))
        out.append(outcome(lambda: os.stat(f, **at).st_size))
        out.append(outcome(lambda: os.chmod(f, 0o600, **at)))
        out.append(outcome(lambda: os.utime(f, ns=(10**9, 10**9), **at)))
        out.append(outcome(lambda: os.rename(f, f + "2", src_dir_fd=base, dst_dir_fd=base)))
        out.append(outcome(lambda: os.symlink("f" * 50 + "2", f"{rel}/link", **at)))
        out.append(outcome(lambda: cat(f"{rel}/link")))
        out.append(outcome(lambda: os.readlink(f"{rel}/link", **at)))
        out.append(outcome(lambda: os.mkfifo(f"{rel}/fifo", **at)))
        out.append(outcome(lambda: os.mkdir(f"{rel}/sub", **at)))
        out.append(outcome(lambda: sorted(os.listdir(os.open(rel, os.O_RDONLY, **at)))))
        out.append(outcome(lambda: os.rmdir(f"{rel}/sub", **at)))
        for name in ("link", "fifo", "f" * 50 + "2"):
            out.append(outcome(lambda: os.unlink(f"{rel}/{name}", **at)))
    finally:
        os.close(base)
    return out


# -- modes on create -----------------------------------------------------------


def modes_on_create(root: Path, outside: Path) -> list[Outcome]:
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []
    for i, mode in enumerate((0o666, 0o664, 0o777, 0o620, 0o600, 0o1777)):
        out.append(outcome(lambda: os.close(os.open(p(f"f{i}"), os.O_WRONLY | os.O_CREAT,
                                                    mode))))
        out.append(outcome(lambda: oct(stat.S_IMODE(os.stat(p(f"f{i}")).st_mode))))
        out.append(outcome(lambda: os.mkdir(p(f"d{i}"), mode)))
        out.append(outcome(lambda: oct(stat.S_IMODE(os.stat(p(f"d{i}")).st_mode))))
        out.append(outcome(lambda: os.mkfifo(p(f"p{i}"), mode & 0o777)))
        out.append(outcome(lambda: oct(stat.S_IMODE(os.stat(p(f"p{i}")).st_mode))))
        out.append(outcome(lambda: os.mknod(p(f"r{i}"), stat.S_IFREG | mode & 0o777)))
        out.append(outcome(lambda: oct(stat.S_IMODE(os.stat(p(f"r{i}")).st_mode))))
    return out


def setgid_on_create(root: Path, outside: Path) -> list[Outcome]:
    """A file created with S_ISGID keeps it (the caller is root, or in the
    file's group), as does a directory made in a setgid directory."""
    p = lambda name: str(root / name)  # noqa: E731
    out: list[Outcome] = []
    out.append(outcome(lambda: os.close(os.open(p("f"), os.O_WRONLY | os.O_CREAT, 0o2775))))
    out.append(outcome(lambda: oct(stat.S_IMODE(os.stat(p("f")).st_mode))))
    out.append(outcome(lambda: os.mkdir(p("g"), 0o775)))
    out.append(outcome(lambda: os.chmod(p("g"), 0o2775)))
    out.append(outcome(lambda: os.mkdir(p("g/sub"), 0o775)))
    out.append(outcome(lambda: oct(stat.S_IMODE(os.stat(p("g/sub")).st_mode))))
    out.append(outcome(lambda: os.close(os.open(p("g/f"), os.O_WRONLY | os.O_CREAT, 0o664))))
    out.append(outcome(lambda: oct(stat.S_IMODE(os.stat(p("g/f")).st_mode))))
    return out


# -- the comparisons ------------------------------------------------------------

SCENARIOS = [
    pytest.param(symlinks_any_target),
    pytest.param(symlink_loops_and_bad_names),
    pytest.param(fifos_and_sockets),
    pytest.param(devices),
    pytest.param(name_max),
    pytest.param(setgid_on_create),
    pytest.param(path_max),
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_same_as_plain_directory(scenario: Callable[[Path, Path], list[Outcome]],
                                 mount: Mount, tmp_path: Path) -> None:
    if scenario is devices and os.geteuid() != 0:
        pytest.skip("device nodes need root (CAP_MKNOD)")
    with umask(0o022):
        compare(scenario, tmp_path, mount)


@pytest.mark.parametrize("mask", [
    pytest.param(0o022),
    pytest.param(0o002),
    pytest.param(0o000),
    pytest.param(0o077),
])
def test_modes_on_create_follow_the_umask(mask: int, mount: Mount, tmp_path: Path) -> None:
    with umask(mask):
        got = compare(modes_on_create, tmp_path, mount)
    assert ("ok", oct(0o666 & ~mask)) in got  # the mode of f0, as the caller asked


# -- what only the mount can show --------------------------------------------------


def test_a_fifo_opened_for_writing_is_no_commit(mount: Mount) -> None:
    """A FIFO is not a regular file: writing through it makes no draft, no
    version and no journal line."""
    os.mkfifo(mount.path("fifo"))
    fd = os.open(mount.path("fifo"), os.O_RDWR)
    os.write(fd, b"x" * 1000)
    assert os.read(fd, 2000) == b"x" * 1000
    os.close(fd)
    with pytest.raises(OSError) as info:
        os.getxattr(mount.path("fifo"), "user.fencefs.version")
    assert info.value.errno == errno.ENODATA
    assert os.listdir(mount.backing / ".fencefs" / "drafts") == []
    assert [e for e in mount.journal() if e.get("file") == "fifo"] == []


def test_long_path_conflict_keeps_a_rejected_copy(mount: Mount) -> None:
    """A conflict deep below PATH_MAX, on a NAME_MAX name: EAGAIN, and the
    rejected bytes and the journal's record of them are kept."""
    base, rel = _deep(mount.mnt)
    name = f"{rel}/" + "c" * NAME_MAX
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=base)
        os.write(fd, b"first")
        os.close(fd)
        slow = os.open(name, os.O_RDWR, dir_fd=base)
        os.read(slow, 10)
        os.write(slow, b"slow")
        fast = os.open(name, os.O_WRONLY | os.O_TRUNC, dir_fd=base)
        os.write(fast, b"fast")
        os.close(fast)
        with pytest.raises(OSError) as info:  # slow's claim rests on the version before
            os.close(slow)
        assert info.value.errno == errno.EAGAIN
        fd = os.open(name, os.O_RDONLY, dir_fd=base)
        assert os.read(fd, 100) == b"fast"
        os.close(fd)
    finally:
        os.close(base)
    (kept,) = mount.rejected()
    assert (mount.backing / ".fencefs" / "rejected" / kept).read_bytes() == b"firstslow"
    conflicts = [e for e in mount.journal() if e.get("event") == "conflict"]
    assert len(conflicts) == 1 and str(conflicts[0]["file"]).endswith("c" * NAME_MAX)
    assert len(str(conflicts[0]["file"])) > PATH_MAX
