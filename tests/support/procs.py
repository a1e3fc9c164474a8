"""Real, separate processes for tests."""

from __future__ import annotations

import os
import subprocess
import sys


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
