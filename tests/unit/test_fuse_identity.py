"""Who is calling (fencefs.fuse.identity), from /proc text given here:
status, environ, stat (with hostile command names) and fdinfo."""

from __future__ import annotations

import os
import signal

import pytest

from fencefs.fuse import identity
from fencefs.fuse.identity import Caller, IdentityResolver


@pytest.fixture
def proc(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """A made-up /proc: path -> content (missing: unreadable, as for a gone process)."""
    files: dict[str, bytes] = {}
    monkeypatch.setattr(identity, "_read", files.get)
    return files


def stat_line(pid: int, comm: bytes, *, flags: int = 0, exit_code: int = 0,
              session: int = 50, start: int = 777, env_start: int = 0x7ffc0000) -> bytes:
    """A /proc/PID/stat line: field N is fields[N - 1]."""
    fields = [b"0"] * 52
    fields[0], fields[1], fields[2] = str(pid).encode(), b"(" + comm + b")", b"S"
    fields[5] = str(session).encode()  # field 6
    fields[8] = str(flags).encode()  # field 9
    fields[21] = str(start).encode()  # field 22
    fields[49] = str(env_start).encode()  # field 50
    fields[51] = str(exit_code).encode()  # field 52
    return b" ".join(fields) + b"\n"


STATUS = b"Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4200\nNgid:\t0\n" \
         b"Pid:\t4213\nPPid:\t1\n"


def test_thread_group_from_status(proc: dict[str, bytes]) -> None:
    proc["/proc/4213/status"] = STATUS
    assert identity.tgid_of(4213) == 4200
    assert identity.tgid_of(999) == 999  # unreadable: the id itself


def test_agent_from_environ(proc: dict[str, bytes]) -> None:
    proc["/proc/1/environ"] = b"PATH=/bin\0FENCEFS_AGENT=planner-7\0HOME=/\0"
    proc["/proc/2/environ"] = b"PATH=/bin\0NOT_FENCEFS_AGENT=x\0"
    proc["/proc/3/environ"] = b"FENCEFS_AGENT=\0"
    proc["/proc/4/environ"] = b"FENCEFS_AGENT=" + b"A" * 1000 + b"\0"
    proc["/proc/5/environ"] = b"FENCEFS_AGENT=\xff\xfeok\n\0"
    proc["/proc/6/environ"] = b"FENCEFS_AGENT=first\0FENCEFS_AGENT=second\0"
    assert identity.agent_of(1) == "agent:planner-7"
    assert identity.agent_of(2) is None
    assert identity.agent_of(3) is None  # empty: no agent
    assert identity.agent_of(4) == "agent:" + "A" * 256  # cut at 256 bytes
    assert identity.agent_of(5) == "agent:\\xff\\xfeok\n"
    assert identity.agent_of(6) == "agent:first"
    assert identity.agent_of(7) is None


@pytest.mark.parametrize("comm", [b"python3", b"a b c", b"x) 1 2 (y", b")", b"(((", b"\n"])
def test_stat_fields_survive_any_command_name(proc: dict[str, bytes], comm: bytes) -> None:
    proc["/proc/9/stat"] = stat_line(9, comm, session=61, start=1234, env_start=5678)
    assert identity.incarnation_of(9) == (1234, 5678)
    assert identity.session_of(9) == 61
    assert identity.dying_by_signal(9) is None  # not exiting


def test_incarnation_of_a_short_or_missing_stat(proc: dict[str, bytes]) -> None:
    proc["/proc/9/stat"] = b"9 (x) S 1 2 3\n"
    assert identity.incarnation_of(9) is None
    assert identity.incarnation_of(10) is None
    assert identity.session_of(10) is None


@pytest.mark.parametrize(("flags", "exit_code", "dying"), [
    (identity.PF_EXITING, signal.SIGKILL, signal.SIGKILL),
    (identity.PF_EXITING | 0x100, signal.SIGSEGV | 0x80, signal.SIGSEGV),  # core dumped
    (identity.PF_EXITING, 3 << 8, None),  # exit(3)
    (identity.PF_EXITING, 0, None),
    (0, signal.SIGKILL, None),  # not exiting (yet)
])
def test_dying_by_signal(proc: dict[str, bytes], flags: int, exit_code: int,
                         dying: int | None) -> None:
    proc["/proc/9/stat"] = stat_line(9, b"w) (", flags=flags, exit_code=exit_code)
    assert identity.dying_by_signal(9) == dying


def test_dying_of_a_gone_or_old_kernel_process(proc: dict[str, bytes]) -> None:
    assert identity.dying_by_signal(9) is None
    proc["/proc/9/stat"] = b"9 (x) S 1 2 3 4 5 6 7\n"  # no field 52
    assert identity.dying_by_signal(9) is None


def fdinfo(mnt_id: int, ino: int, flags: int) -> bytes:
    return (f"pos:\t0\nflags:\t0{flags:o}\nmnt_id:\t{mnt_id}\nino:\t{ino}\n").encode()


def test_holds_for_writing_counts_write_descriptors_on_this_inode(
        proc: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    base = "/proc/9/fdinfo"
    infos = {
        "0": fdinfo(33, 5, os.O_RDONLY),  # read-only
        "3": fdinfo(33, 5, os.O_WRONLY | os.O_APPEND),
        "4": fdinfo(33, 5, os.O_RDWR | 0o2000000),  # O_CLOEXEC
        "5": fdinfo(33, 55, os.O_RDWR),  # another inode (55 contains 5)
        "6": fdinfo(333, 5, os.O_RDWR),  # another mount (333 contains 33)
        "7": fdinfo(3, 5, os.O_RDWR),
    }
    for fd, info in infos.items():
        proc[f"{base}/{fd}"] = info
    listing = {base: sorted(infos) + ["8"]}  # 8: closed between listdir and read

    def listdir(path: str) -> list[str]:
        try:
            return listing[path]
        except KeyError:
            raise FileNotFoundError(path) from None

    monkeypatch.setattr(identity.os, "listdir", listdir)
    assert identity.holds_for_writing(9, 33, 5) == 2
    assert identity.holds_for_writing(9, 33, 55) == 1
    assert identity.holds_for_writing(9, 34, 5) == 0
    assert identity.holds_for_writing(10, 33, 5) == 0  # gone


@pytest.mark.parametrize(("status", "pending"), [
    (b"SigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\n",
     False),
    (b"SigPnd:\t0000000000000000\nShdPnd:\t0000000000000200\nSigBlk:\t0000000000000000\n",
     True),  # SIGUSR1 (10) for the whole process
    (b"SigPnd:\t0000000000000200\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\n",
     True),
    (b"SigPnd:\t0000000000000200\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000200\n",
     False),  # blocked
])
def test_signal_pending(proc: dict[str, bytes], status: bytes, pending: bool) -> None:
    proc["/proc/9/status"] = b"Name:\tx\n" + status
    assert identity.signal_pending(9) is pending


def test_a_gone_caller_stops_a_wait(proc: dict[str, bytes]) -> None:
    assert identity.signal_pending(9) is True


def test_resolver_scopes_and_its_cache(proc: dict[str, bytes]) -> None:
    proc["/proc/4213/status"] = STATUS
    proc["/proc/4213/environ"] = b"FENCEFS_AGENT=a1\0"
    proc["/proc/4213/stat"] = stat_line(4213, b"py", session=61)
    assert IdentityResolver("agent").resolve(4213) == Caller("agent:a1", 4200)
    assert IdentityResolver("process").resolve(4213) == Caller("pid:4200", 4200)
    assert IdentityResolver("thread").resolve(4213) == Caller("thread:4213", 4200)
    assert IdentityResolver("session").resolve(4213) == Caller("session:61", 4200)
    assert IdentityResolver("agent").resolve(0) == Caller("pid:0", 0)
    with pytest.raises(ValueError):
        IdentityResolver("host")
    r = IdentityResolver("agent")
    assert r.resolve(4213) == Caller("agent:a1", 4200)
    proc["/proc/4213/environ"] = b"FENCEFS_AGENT=a2\0"
    assert r.resolve(4213) == Caller("agent:a1", 4200)  # the same incarnation: cached
    proc["/proc/4213/stat"] = stat_line(4213, b"py", env_start=0x7ffd0000)  # an execve
    assert r.resolve(4213) == Caller("agent:a2", 4200)
    del proc["/proc/4213/environ"]
    proc["/proc/4213/stat"] = stat_line(4213, b"py", start=999)  # a new thread, same id
    assert r.resolve(4213) == Caller("pid:4200", 4200)
