"""Who is calling: the identity a claim belongs to, and whether it is dying.

FUSE reports the calling thread's id. The default identity is the value of
FENCEFS_AGENT in the caller's environment when set, else the thread group
(the process). ``/proc/TID/environ`` works for any thread of the process.
"""

from __future__ import annotations

import os

from fencefs.core.model import Caller  # re-exported: the FUSE layer resolves callers

__all__ = ["Caller", "IdentityResolver"]

from fencefs.wire import mount_at, read_mountinfo

AGENT_VAR = b"FENCEFS_AGENT="
SCOPES = ("agent", "process", "thread", "session")
_MAX_AGENT = 256
_CACHE_SIZE = 4096
PF_EXITING = 0x4


def _read(path: str) -> bytes | None:
    """A whole /proc file (raw calls: these run on every open and flush)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def tgid_of(tid: int) -> int:
    status = _read(f"/proc/{tid}/status")
    if status:
        for line in status.splitlines():
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    return tid


def agent_of(tid: int) -> str | None:
    env = _read(f"/proc/{tid}/environ")
    if not env:
        return None
    for item in env.split(b"\0"):
        if item.startswith(AGENT_VAR):
            raw = item[len(AGENT_VAR):][:_MAX_AGENT]
            if raw:
                return "agent:" + raw.decode("utf-8", "backslashreplace")
    return None


def incarnation_of(tid: int) -> tuple[int, int] | None:
    """What tells this thread's life apart from another with the same id,
    and its program from the one before an execve (which keeps the id and
    the start time): its start time and where its environment begins
    (fields 22 and 50 of /proc/TID/stat; the stack moves at every exec)."""
    stat = _read(f"/proc/{tid}/stat")
    if not stat:
        return None
    try:
        fields = stat[stat.rfind(b")") + 2:].split()
        return int(fields[22 - 3]), int(fields[50 - 3])
    except (IndexError, ValueError):
        return None


def anchors_of(pid: int) -> list[tuple[int, int]]:
    """A process and its parent, each as (pid, start time): what makes a
    staging directory's owner alive (a shell's ``mkdir`` is a child of the
    shell). Start times tell a live process from a later one with its id."""
    out = []
    stat = _read(f"/proc/{pid}/stat")
    if stat:
        try:
            fields = stat[stat.rfind(b")") + 2:].split()
            out.append((pid, int(fields[22 - 3])))
            parent = int(fields[4 - 3])
            if parent > 1:
                pstat = _read(f"/proc/{parent}/stat")
                if pstat:
                    out.append((parent, int(pstat[pstat.rfind(b")") + 2:].split()[22 - 3])))
        except (IndexError, ValueError):
            pass
    return out


def anchor_alive(anchor: tuple[int, int]) -> bool:
    """Is the process of ``anchors_of`` still the one that was recorded?"""
    stat = _read(f"/proc/{anchor[0]}/stat")
    if not stat:
        return False
    try:
        fields = stat[stat.rfind(b")") + 2:].split()
        return int(fields[22 - 3]) == anchor[1] and fields[0] != b"Z"
    except (IndexError, ValueError):
        return False


def session_of(tid: int) -> int | None:
    stat = _read(f"/proc/{tid}/stat")
    if not stat:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[3])  # field 6: session id


class IdentityResolver:
    """Maps a request's thread id to an identity, per the mount's scope."""

    def __init__(self, scope: str = "agent") -> None:
        if scope not in SCOPES:
            raise ValueError(f"identity scope must be one of {', '.join(SCOPES)}")
        self.scope = scope
        self._cache: dict[int, tuple[tuple[int, int], Caller]] = {}

    def resolve(self, tid: int) -> Caller:
        """The caller behind thread ``tid``, cached per thread incarnation
        (one short /proc read instead of two longer ones): a thread's process
        and environment do not change until it dies or execs. A session
        can (setsid), so that scope is never cached."""
        if not tid or self.scope == "session":
            return self._resolve(tid)
        born = incarnation_of(tid)
        cached = self._cache.get(tid)
        if cached is not None and cached[0] == born and born is not None:
            return cached[1]
        caller = self._resolve(tid)
        if born is not None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))  # the oldest entry
            self._cache[tid] = (born, caller)
        return caller

    def _resolve(self, tid: int) -> Caller:
        pid = tgid_of(tid) if tid else 0
        if self.scope == "thread":
            return Caller(f"thread:{tid}", pid)
        if self.scope == "agent":
            agent = agent_of(tid)
            if agent is not None:
                return Caller(agent, pid)
        if self.scope == "session":
            sid = session_of(tid)
            if sid is not None:
                return Caller(f"session:{sid}", pid)
        return Caller(f"pid:{pid}", pid)


def dying_by_signal(pid: int) -> int | None:
    """The signal that is killing ``pid``, or None if it is not being killed.

    The kernel sends the FLUSH for a dying process's files while the process
    still exists, with PF_EXITING set in its flags (field 9 of
    /proc/PID/stat) and its exit code (field 52) already set: a low byte that
    is non-zero is the terminating signal; a normal exit has status << 8.
    """
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    # fields[0] is field 3 (state); field N is fields[N - 3].
    try:
        flags = int(fields[9 - 3])
        exit_code = int(fields[52 - 3])
    except (IndexError, ValueError):
        return None
    if not flags & PF_EXITING:
        return None
    signal = exit_code & 0x7F
    return signal or None


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def holds_for_writing(pid: int, mount_id: int, ino: int) -> int:
    """How many descriptors process ``pid`` still has open for writing on the
    FUSE inode ``ino`` of mount ``mount_id``.

    A FLUSH arrives for every close of every descriptor: a dup, a forked
    child closing what it inherited (subprocess does so before exec). Only
    the opener's last close should commit. Reads /proc/PID/fdinfo, which
    never calls back into the filesystem. (Every descriptor's fdinfo is
    read: the path a descriptor shows depends on the caller's mount
    namespace, so it cannot tell which ones are on this mount.)
    """
    base = f"/proc/{pid}/fdinfo"
    try:
        fds = os.listdir(base)
    except OSError:
        return 0
    count = 0
    want_mnt = f"mnt_id:\t{mount_id}".encode()
    want_ino = f"ino:\t{ino}".encode()
    for fd in fds:
        info = _read(f"{base}/{fd}")
        if not info or want_mnt not in info:
            continue
        lines = info.splitlines()
        if want_ino not in lines or want_mnt not in lines:
            continue
        for line in lines:
            if line.startswith(b"flags:"):
                if int(line.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY:
                    count += 1
    return count


def mount_id_of(mountpoint: str) -> int | None:
    """The mount id of an absolute, resolved mount point (no stat: the mount
    may not answer yet when this runs)."""
    try:
        found = mount_at(mountpoint, read_mountinfo())
    except OSError:
        return None
    return None if found is None else found.mount_id


def signal_pending(tid: int) -> bool:
    """True if thread ``tid`` has an unblocked signal waiting for it.

    pyfuse3 does not deliver FUSE interrupts, so a handler that waits (an
    exclusive open with --wait) polls this to answer EINTR when the caller
    is being signalled.
    """
    status = _read(f"/proc/{tid}/status")
    if not status:
        return True  # the caller is gone: stop waiting for it
    fields = {}
    for line in status.splitlines():
        key, _, value = line.partition(b":")
        if key in (b"SigPnd", b"ShdPnd", b"SigBlk"):
            fields[key] = int(value.strip(), 16)
    pending = fields.get(b"SigPnd", 0) | fields.get(b"ShdPnd", 0)
    return bool(pending & ~fields.get(b"SigBlk", 0))
