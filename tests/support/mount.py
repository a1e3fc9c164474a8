"""A real fencefs daemon per test: start, stop, kill, remount, journal.

Readiness is polled against a deadline (failing fast if the daemon died);
stop always unmounts (fusermount3 -u -z), then terminates, then kills.
Where FUSE is not available the mount tests skip, except under CI (CI set),
where a skip is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


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


def daemon_errors(log: str) -> bool:
    return "Traceback" in log or " ERROR " in log


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
        """The journal; with --etcd every host's, merged (fencefs/etcd/journals.py)."""
        from fencefs.etcd.journals import merged
        from fencefs.store.journal import read_journal

        if self.host_id() is not None:
            return merged(str(self.backing / ".fencefs"))
        return read_journal(str(self.backing / ".fencefs" / "journal.jsonl"))

    def journal_path(self) -> Path:
        """This daemon's journal (with --etcd: this host's own)."""
        host = self.host_id()
        if host is not None:
            from fencefs.etcd.journals import host_dir

            return Path(host_dir(str(self.backing / ".fencefs"), host)) / "journal.jsonl"
        return self.backing / ".fencefs" / "journal.jsonl"

    def host_id(self) -> str | None:
        args = list(self.extra)
        return args[args.index("--host-id") + 1] if "--host-id" in args else None

    def rejected(self) -> list[str]:
        return sorted(os.listdir(self.backing / ".fencefs" / "rejected"))

    def status(self) -> list[dict[str, Any]]:
        """Every file with claims (user.fencefs.status on the root)."""
        rows: list[dict[str, Any]] = json.loads(os.getxattr(self.mnt, "user.fencefs.status"))
        return rows

    def leases_left(self, name: str) -> list[float]:
        """Seconds left on the leases of the write claims on ``name``."""
        return [c["lease_left"] for row in self.status() if row["file"] == name
                for c in row["claims"] if c["kind"] == "write" and c["lease_left"] is not None]

    def wait_lease_expired(self, name: str, timeout: float = 30) -> None:
        """Wait until a write claim's lease on ``name`` has run out (evidence,
        from the daemon's own clock, not a sleep hoped to be long enough)."""
        deadline = time.monotonic() + timeout
        while not any(left <= 0 for left in self.leases_left(name)):
            assert time.monotonic() < deadline, f"no lease on {name} ran out"
            time.sleep(0.02)

    def wait_upkeep(self, timeout: float = 30) -> None:
        """Wait until the daemon's upkeep has run (at least once) from now: an
        unnamed reader (identity pid:N) that exits now has its read claim
        dropped by the next upkeep. (Named agents' claims are never dropped.)"""
        sentinel = self.path(".upkeep-sentinel")
        if not os.path.exists(sentinel):
            self.seed(".upkeep-sentinel", "s")
        env = {k: v for k, v in os.environ.items() if k != "FENCEFS_AGENT"}
        cat = subprocess.Popen(["cat", sentinel], env=env, stdout=subprocess.DEVNULL)
        assert cat.wait(timeout=30) == 0
        mine = f"identity=pid:{cat.pid} "
        deadline = time.monotonic() + timeout
        while mine in os.getxattr(sentinel, "user.fencefs.claims").decode():
            assert time.monotonic() < deadline, "the daemon's upkeep never ran"
            time.sleep(0.02)
