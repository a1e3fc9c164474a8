"""Real, separate processes for tests."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time


def open_barrier(procs: list[subprocess.Popen[str]]) -> None:
    """Release processes that each wait for a line on stdin, all at once."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def run_py(code: str, *args: str, env: dict[str, str] | None = None,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a Python one-liner in a fresh process (a real, separate writer)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


# System call numbers, as /proc/PID/syscall shows them.
SYSCALLS = {
    "x86_64": {"openat": 257, "read": 0, "write": 1, "close": 3, "fsync": 74},
    "aarch64": {"openat": 56, "read": 63, "write": 64, "close": 57, "fsync": 82},
}


def in_syscall(pid: int, name: str) -> bool:
    """Whether process ``pid`` (its main thread) is blocked in system call ``name``."""
    number = SYSCALLS[platform.machine()][name]
    try:
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read().split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return bool(fields) and fields[0] == str(number)


def tracers(pid: int) -> list[int]:
    """The TracerPid of every thread of process ``pid``."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("TracerPid:"):
                        found.append(int(line.split()[1]))
        except FileNotFoundError:
            pass  # a thread that just ended
    return found


def wait_traced(pid: int, tracer: int, timeout: float = 20) -> None:
    """Wait until ``tracer`` (strace -f -p) is attached to every thread of ``pid``."""
    deadline = time.monotonic() + timeout
    while not (found := tracers(pid)) or any(t != tracer for t in found):
        assert time.monotonic() < deadline, f"{tracer} never traced all of {pid}: {found}"
        time.sleep(0.01)


def wait_in_syscall(pid: int, name: str, timeout: float = 20) -> None:
    """Wait until process ``pid`` is blocked in system call ``name`` (evidence
    that it waits there, where a sleep would only hope so)."""
    deadline = time.monotonic() + timeout
    while not in_syscall(pid, name):
        assert time.monotonic() < deadline, f"process {pid} never blocked in {name}"
        time.sleep(0.01)
