"""Real mounts for tests: a foreground fencefs daemon per test.

Readiness is polled against a deadline (failing fast if the daemon died);
teardown always unmounts (fusermount3 -u -z), then terminates, then kills.
A test fails if the daemon logged a traceback or an error. Where FUSE is not
available the mount tests skip, except under CI (CI set), where a skip is a
failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Every daemon a test starts asserts that its check-and-install sections reach
# no checkpoint (G3, fencefs/engine/atomic.py).
os.environ["FENCEFS_CHECK_ATOMIC"] = "1"


def fuse_unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3)"
    return None


def require_fuse() -> None:
    reason = fuse_unavailable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"mount tests must run in CI, but {reason}")
    pytest.skip(reason)


def mounted(mountpoint: str) -> bool:
    """Whether a fencefs mount is on top at ``mountpoint`` (an absolute path)."""
    from fencefs import wire

    found = wire.mount_at(mountpoint)
    return found is not None and found.fstype == wire.FSTYPE


class Mount:
    """A fencefs daemon serving ``backing`` on ``mnt``."""

    def __init__(self, base: Path, *extra: str) -> None:
        self.backing = base / "backing"
        self.mnt = base / "mnt"
        self.backing.mkdir(exist_ok=True)
        self.mnt.mkdir(exist_ok=True)
        self.logfile = base / "daemon.log"
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def path(self, name: str) -> str:
        return str(self.mnt / name)

    def seed(self, name: str, text: str) -> str:
        """Write ``name`` through the mount (a blind commit); its path."""
        path = self.path(name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self) -> None:
        command = [sys.executable, "-m", "fencefs.cli", "mount", "--foreground",
                   "--log-file", str(self.logfile), *self.extra,
                   str(self.backing), str(self.mnt)]
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not mounted(str(self.mnt)):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"fencefs daemon died at start: {err}\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError("fencefs did not mount within 20 s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the daemon (a crash) and clear the dead mount."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def remount(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.logfile.read_text()
        except FileNotFoundError:
            return ""

    def journal(self) -> list[dict[str, object]]:
        from fencefs.store.journal import read_journal

        return read_journal(str(self.backing / ".fencefs" / "journal.jsonl"))

    def rejected(self) -> list[str]:
        return sorted(os.listdir(self.backing / ".fencefs" / "rejected"))


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    require_fuse()
    m = Mount(tmp_path)
    m.start()
    try:
        yield m
    finally:
        m.stop()
    log = m.log()
    assert "Traceback" not in log and " ERROR " not in log, f"daemon logged errors:\n{log}"


@pytest.fixture
def make_mount(tmp_path: Path) -> Iterator[object]:
    """Factory for mounts with extra options."""
    require_fuse()
    made: list[Mount] = []

    def factory(*extra: str, name: str = "m") -> Mount:
        base = tmp_path / name
        base.mkdir(exist_ok=True)
        m = Mount(base, *extra)
        m.start()
        made.append(m)
        return m

    yield factory
    for m in made:
        m.stop()
    for m in made:
        log = m.log()
        assert "Traceback" not in log and " ERROR " not in log, f"daemon logged errors:\n{log}"


def open_barrier(procs: list[subprocess.Popen[str]]) -> None:
    """Release processes that each wait for a line on stdin, all at once."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def run_py(code: str, *args: str, env: dict[str, str] | None = None,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet in a fresh process (a real, separate writer)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env)
