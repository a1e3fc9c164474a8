"""Helpers of the compatibility suite: real programs run inside a mount.

A program that is missing skips its test on a workstation, and fails it
under CI (``CI`` set), where ``scripts/setup`` installs them all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if not missing:
        return
    reason = f"not installed: {', '.join(missing)} (bash scripts/setup installs them)"
    if os.environ.get("CI"):
        pytest.fail(f"the compatibility suite must run in CI, but {reason}")
    pytest.skip(reason)


def first_of(*programs: str) -> str:
    for p in programs:
        if shutil.which(p):
            return p
    need(programs[0])
    raise AssertionError("unreachable")


def sh(script: str, cwd: Path | str, *, env: dict[str, str] | None = None,
       timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a bash script; fail the test with its output if it fails."""
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd,
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, (
        f"exit {result.returncode}\n$ {script}\n--- stdout\n{result.stdout}"
        f"--- stderr\n{result.stderr}")
    return result


def tree(root: Path | str, *, dir_times: bool = True,
         tick: int = 1) -> dict[str, tuple[object, ...]]:
    """What copying tools promise to keep: per path, its type, mode, mtime
    (in units of ``tick`` nanoseconds) and content (or link target)."""
    found: dict[str, tuple[object, ...]] = {}
    root = str(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".fencefs")
        for name in sorted(dirnames) + sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[rel] = ("dir", oct(st.st_mode),
                              st.st_mtime_ns // tick if dir_times else None)
            else:
                with open(path, "rb") as f:
                    found[rel] = ("file", oct(st.st_mode), st.st_mtime_ns // tick, f.read())
    return found


def make_source_tree(root: Path) -> Path:
    """A small tree outside the mount: modes, old mtimes, a symlink, a subdir."""
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "README.md").write_text("# readme\n")
    (src / "sub" / "data.json").write_text('{"k": [1, 2, 3]}\n')
    (src / "run.sh").write_text("#!/bin/sh\necho run\n")
    (src / "big.bin").write_bytes(os.urandom(300_000))
    os.chmod(src / "run.sh", 0o755)
    os.chmod(src / "sub" / "data.json", 0o640)
    os.symlink("sub/data.json", src / "link.json")
    for i, path in enumerate(sorted(src.rglob("*"))):
        if not path.is_symlink():
            os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_123_456_789 + i))
    os.utime(src / "sub", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    os.utime(src, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    return src


def version(path: Path | str) -> int:
    return int(os.getxattr(path, "user.fencefs.version"))


def read(path: Path | str) -> str:
    with open(path) as f:
        return f.read()


def read_bytes(path: Path | str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
