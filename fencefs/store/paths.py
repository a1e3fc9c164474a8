"""Paths inside the backing directory, resolved without following symlinks.

The daemon runs with more privilege than most of its callers (often root),
and the backing directory can hold symlinks of any target: users make them
through the mount, and anyone with access to the backing directory can plant
one, or swap a directory for one while a request is under way. A symlink's
target is for the *caller's* kernel to resolve, in the caller's context; the
daemon itself must never follow one. So every path the daemon touches is
resolved here, relative to a descriptor on the backing root:

- the directories above the last name are opened with ``openat2`` and
  ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` (one system call, Linux >= 5.6):
  a symlink anywhere on the way is ``ELOOP``, and nothing resolves outside
  the root. Without ``openat2`` (older kernels, seccomp filters), the same by
  a walk, one ``openat(O_PATH | O_NOFOLLOW | O_DIRECTORY)`` per name;
- the last name is acted on with the ``*at()`` call that never follows it
  (``fstatat``/``fchownat``/``utimensat`` with ``AT_SYMLINK_NOFOLLOW``,
  ``unlinkat``, ``renameat``, ``mkdirat``, ``mknodat``, ``symlinkat``,
  ``readlinkat``; ``openat`` with ``O_NOFOLLOW``), on the directory's
  descriptor, so a directory swapped for a symlink after it was opened
  changes nothing: the descriptor still refers to the directory it opened;
- extended attributes go through an ``O_PATH | O_NOFOLLOW`` descriptor of
  the object itself (``/proc/self/fd/N``, which names that inode and is not
  followed any further).

Paths are never joined into one long absolute string either: a path longer
than the kernel's PATH_MAX (a working directory deep inside the mount plus a
long relative path) is resolved in pieces, each well under PATH_MAX.

``rel`` is a path relative to the backing root, made of names the kernel
handed the daemon: ``""`` is the root itself; no component is empty, ``.``
or ``..`` (``EINVAL`` otherwise).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on every architecture Linux added it to
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_CHUNK = 3000  # bytes of path per resolution step, well under PATH_MAX (4096)
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = _RESOLVE) -> int:
    """The openat2(2) system call; OSError on failure (ENOSYS where absent)."""
    how = _OpenHow(flags, mode if flags & (os.O_CREAT | os.O_TMPFILE) else 0, resolve)
    fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd),
                  ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                  ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def _have_openat2(root_fd: int) -> bool:
    try:
        os.close(openat2(root_fd, ".", os.O_PATH | os.O_CLOEXEC))
    except OSError:
        return False  # ENOSYS, or EPERM from a seccomp filter: walk instead
    return True


def split(rel: str) -> list[str]:
    if not rel:
        return []
    names = rel.split("/")
    for name in names:
        if name in ("", ".", ".."):
            raise OSError(errno.EINVAL, f"not a plain relative path: {rel!r}")
    return names


def _chunks(names: list[str]) -> Iterator[str]:
    """Consecutive names joined into pieces no longer than _CHUNK bytes."""
    piece: list[str] = []
    size = 0
    for name in names:
        n = len(os.fsencode(name)) + 1
        if piece and size + n > _CHUNK:
            yield "/".join(piece)
            piece, size = [], 0
        piece.append(name)
        size += n
    if piece:
        yield "/".join(piece)


class Tree:
    """The backing directory, reached only through descriptors."""

    def __init__(self, root: str, *, use_openat2: bool | None = None) -> None:
        self.root = os.path.realpath(root)
        self.root_fd = os.open(self.root, _DIR)
        self.openat2 = _have_openat2(self.root_fd) if use_openat2 is None else use_openat2

    def close(self) -> None:
        os.close(self.root_fd)

    # -- resolution --------------------------------------------------------

    def _step(self, dirfd: int, piece: str) -> int:
        """Open the directory ``piece`` (one or more names) below ``dirfd``."""
        if self.openat2:  # a link anywhere, the last name too: ELOOP
            return openat2(dirfd, piece, _DIR & ~os.O_NOFOLLOW)
        fd = dirfd
        try:
            for name in piece.split("/"):
                try:
                    nxt = os.open(name, _DIR, dir_fd=fd)
                except OSError as e:
                    if e.errno == errno.ENOTDIR and stat.S_ISLNK(
                            os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name) from None
                    raise
                if fd != dirfd:
                    os.close(fd)
                fd = nxt
        except BaseException:
            if fd != dirfd:
                os.close(fd)
            raise
        return fd

    def dir_fd(self, names: list[str]) -> int:
        """An O_PATH descriptor of the directory ``names`` (the caller closes
        it; the root's own descriptor is returned as a duplicate)."""
        if not names:
            return os.dup(self.root_fd)
        fd = self.root_fd
        for piece in _chunks(names):
            nxt = self._step(fd, piece)
            if fd != self.root_fd:
                os.close(fd)
            fd = nxt
        return fd

    @contextmanager
    def parent(self, rel: str) -> Iterator[tuple[int, str]]:
        """(descriptor of the directory holding ``rel``, its last name)."""
        names = split(rel)
        if not names:
            raise OSError(errno.EINVAL, "the backing root has no parent")
        if len(names) == 1:
            yield self.root_fd, names[0]
            return
        fd = self.dir_fd(names[:-1])
        try:
            yield fd, names[-1]
        finally:
            os.close(fd)

    def open(self, rel: str, flags: int, mode: int = 0o666) -> int:
        """Open ``rel`` without following a symlink anywhere (ELOOP)."""
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC
        if not rel:
            return os.open(f"/proc/self/fd/{self.root_fd}", flags & ~os.O_NOFOLLOW)
        with self.parent(rel) as (fd, name):
            return os.open(name, flags, mode, dir_fd=fd)

    def open_path(self, rel: str) -> int:
        """An O_PATH descriptor of the object at ``rel`` itself (a symlink
        too: never its target)."""
        return self.open(rel, os.O_PATH)

    # -- metadata ----------------------------------------------------------

    def lstat(self, rel: str) -> os.stat_result:
        if not rel:
            return os.stat(self.root_fd)
        with self.parent(rel) as (fd, name):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)

    def chmod(self, rel: str, mode: int) -> None:
        if not rel:
            os.chmod(f"/proc/self/fd/{self.root_fd}", mode)
            return
        with self.parent(rel) as (fd, name):
            try:
                os.chmod(name, mode, dir_fd=fd, follow_symlinks=False)
            except (NotImplementedError, ValueError):
                # fchmodat(AT_SYMLINK_NOFOLLOW) on a symlink: Linux keeps no
                # mode on symlinks (ext4 answers the same)
                raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP), rel) from None

    def chown(self, rel: str, uid: int, gid: int) -> None:
        if not rel:
            os.chown(self.root_fd, uid, gid)
            return
        with self.parent(rel) as (fd, name):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)

    def utime(self, rel: str, ns: tuple[int, int]) -> None:
        if not rel:
            os.utime(self.root_fd, ns=ns)
            return
        with self.parent(rel) as (fd, name):
            os.utime(name, ns=ns, dir_fd=fd, follow_symlinks=False)

    # -- names -------------------------------------------------------------

    def mkdir(self, rel: str, mode: int) -> None:
        with self.parent(rel) as (fd, name):
            os.mkdir(name, mode, dir_fd=fd)

    def rmdir(self, rel: str) -> None:
        with self.parent(rel) as (fd, name):
            os.rmdir(name, dir_fd=fd)

    def unlink(self, rel: str) -> None:
        with self.parent(rel) as (fd, name):
            os.unlink(name, dir_fd=fd)

    def symlink(self, target: str | bytes, rel: str) -> None:
        with self.parent(rel) as (fd, name):
            os.symlink(target, name, dir_fd=fd)

    def readlink(self, rel: str) -> bytes:
        with self.parent(rel) as (fd, name):
            return os.readlink(os.fsencode(name), dir_fd=fd)

    def mknod(self, rel: str, mode: int, device: int = 0) -> None:
        with self.parent(rel) as (fd, name):
            os.mknod(name, mode, device, dir_fd=fd)

    def rename(self, old: str, new: str) -> None:
        with self.parent(old) as (ofd, oname), self.parent(new) as (nfd, nname):
            os.rename(oname, nname, src_dir_fd=ofd, dst_dir_fd=nfd)

    def rename_from(self, src_dir_fd: int, src_name: str, new: str) -> None:
        """Rename a name of another directory (a draft) onto ``new``."""
        with self.parent(new) as (nfd, nname):
            os.rename(src_name, nname, src_dir_fd=src_dir_fd, dst_dir_fd=nfd)

    def listdir(self, rel: str, *, stats: bool = True
                ) -> list[tuple[str, os.stat_result | None]]:
        """Names with their lstat (None if the entry vanished meanwhile, or
        if ``stats`` is false)."""
        fd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        out: list[tuple[str, os.stat_result | None]] = []
        try:
            for name in os.listdir(fd):
                st: os.stat_result | None = None
                if stats:
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        pass
                out.append((name, st))
        finally:
            os.close(fd)
        return out

    def sync_dir(self, rel: str) -> None:
        fd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def statvfs(self) -> os.statvfs_result:
        return os.fstatvfs(self.root_fd)

    # -- extended attributes -------------------------------------------------

    @contextmanager
    def _object(self, rel: str) -> Iterator[str]:
        """A name for the object itself: /proc/self/fd/N of an O_PATH
        descriptor, which the kernel does not follow any further."""
        if not rel:
            yield f"/proc/self/fd/{self.root_fd}"
            return
        fd = self.open_path(rel)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)

    def getxattr(self, rel: str, name: str | bytes) -> bytes:
        with self._object(rel) as path:
            return os.getxattr(path, name)

    def setxattr(self, rel: str, name: str | bytes, value: bytes, flags: int = 0) -> None:
        with self._object(rel) as path:
            os.setxattr(path, name, value, flags)

    def listxattr(self, rel: str) -> list[str]:
        with self._object(rel) as path:
            return os.listxattr(path)

    def removexattr(self, rel: str, name: str | bytes) -> None:
        with self._object(rel) as path:
            os.removexattr(path, name)
