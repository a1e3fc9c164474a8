"""The fencefs command: bad input gets one clear line and changes nothing."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mount import Mount, mounted, require_fuse


def fencefs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fencefs.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fencefs: ")
    for word in words:
        assert word in lines[0], lines[0]


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_mount_bad_input(tmp_path: Path) -> None:
    backing, mnt = tmp_path / "b", tmp_path / "m"
    backing.mkdir()
    one_line_error(fencefs("mount", str(backing), str(tmp_path / "nope")),
                   "mount point", "does not exist")
    one_line_error(fencefs("mount", str(tmp_path / "missing"), str(backing)),
                   "backing directory", "does not exist")
    (tmp_path / "file").write_text("x")
    one_line_error(fencefs("mount", str(backing), str(tmp_path / "file")), "not a directory")
    mnt.mkdir()
    one_line_error(fencefs("mount", str(backing), str(backing / ".." / "b")), "contain")
    one_line_error(fencefs("mount", "--shared-glob", "/", str(backing), str(mnt)),
                   "--shared-glob", "not a pattern")
    assert not any(p.name != ".fencefs" for p in backing.iterdir())


def test_mount_point_busy(mount: Mount, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    one_line_error(fencefs("mount", str(other), str(mount.mnt)), "busy")


def test_backing_without_user_xattrs(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a ramfs")
    backing, mnt = tmp_path / "ram", tmp_path / "m"
    backing.mkdir()
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "ramfs", "none", str(backing)], capture_output=True)
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount ramfs: {result.stderr!r}")
        pytest.skip("cannot mount ramfs here")
    try:
        one_line_error(fencefs("mount", str(backing), str(mnt)), "xattr")
        assert not mounted(str(mnt))
    finally:
        subprocess.run(["umount", str(backing)], check=True)


def test_background_mount_and_unmount_waits_for_daemon(tmp_path: Path) -> None:
    require_fuse()
    backing, mnt = tmp_path / "b", tmp_path / "m"
    backing.mkdir()
    mnt.mkdir()
    result = fencefs("mount", str(backing), str(mnt))
    assert result.returncode == 0, result.stderr
    try:
        assert mounted(str(mnt))
        pid = int((backing / ".fencefs" / "daemon.pid").read_text().split()[0])
        with open(mnt / "a.txt", "w") as f:
            f.write("x")
        result = fencefs("unmount", str(mnt))
        assert result.returncode == 0, result.stderr
        assert not mounted(str(mnt))
        assert not running(pid)
        assert (backing / "a.txt").read_text() == "x"
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    one_line_error(fencefs("unmount", str(mnt)), "not a fencefs mount")


def test_reclaim_status_and_log(mount: Mount) -> None:
    path = mount.seed("plan.md", "x")
    fd = os.open(path, os.O_RDWR)
    os.write(fd, b"zombie")
    try:
        result = fencefs("reclaim", path)
        assert result.returncode == 0 and "epoch 1" in result.stdout
        status = fencefs("status", str(mount.mnt), "--json")
        rows = json.loads(status.stdout)
        row = next(r for r in rows if r["file"] == "plan.md")
        assert (row["version"], row["epoch"]) == (1, 1)
        assert any(c["kind"] == "write" and c["epoch"] == 0 for c in row["claims"])
        table = fencefs("status", str(mount.mnt))
        assert "plan.md" in table.stdout and "write v1/e0" in table.stdout
        assert "revoked" in table.stdout
    finally:
        with pytest.raises(OSError) as closed:
            os.close(fd)
        assert closed.value.errno == errno.ESTALE  # the reclaim fenced its claim
    log = fencefs("log", str(mount.mnt))
    assert log.returncode == 0
    lines = log.stdout.splitlines()
    assert lines[0].split()[:3] == ["TIME", "EVENT", "FILE"]
    events = [line.split()[2] for line in lines[1:]]
    assert events == ["commit", "reclaim", "fenced"]
    only = fencefs("log", str(mount.mnt), "plan.md", "--json")
    assert [json.loads(x)["event"] for x in only.stdout.splitlines()] == events


def test_reclaim_on_plain_file_fails_clearly(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    result = fencefs("reclaim", str(plain))
    assert result.returncode == 1 and "plain.txt" in result.stderr


def test_setfattr_bad_values_change_nothing(mount: Mount) -> None:
    path = mount.seed("plan.md", "x")
    before = {n: os.getxattr(path, f"user.fencefs.{n}") for n in ("version", "epoch", "policy")}
    for name, value in [("reclaim", b"2"), ("reclaim", b"yes"), ("reclaim", b"\xff\x00"),
                        ("reclaim", b""), ("policy", b"chaos"), ("policy", b"\xff"),
                        ("version", b"99"), ("epoch", b"0"), ("nonsense", b"1")]:
        with pytest.raises(OSError) as info:
            os.setxattr(path, f"user.fencefs.{name}", value)
        assert info.value.errno in (errno.EINVAL, errno.ENOTSUP), (name, value)
        result = subprocess.run(["setfattr", "-n", f"user.fencefs.{name}", "-v", "garbage",
                                 path], capture_output=True, text=True)
        assert result.returncode != 0
    after = {n: os.getxattr(path, f"user.fencefs.{n}") for n in ("version", "epoch", "policy")}
    assert before == after
    for name in ("nonsense", "reclaim", "state"):
        with pytest.raises(OSError) as info:
            os.getxattr(path, f"user.fencefs.{name}")
        assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.removexattr(path, "user.fencefs.version")
    assert info.value.errno == errno.EINVAL
    # Nothing journaled either (a journal line is written before the reply).
    assert [e["event"] for e in mount.journal()] == ["commit"]


def test_daemonized_mount_passes_the_shared_globs(tmp_path: Path) -> None:
    require_fuse()
    backing, mnt = tmp_path / "b", tmp_path / "m"
    backing.mkdir()
    mnt.mkdir()
    result = fencefs("mount", "--no-default-shared-globs", "--shared-glob", "*.x",
                     str(backing), str(mnt))
    assert result.returncode == 0, result.stderr
    try:
        for name in ("a.x", "a.db"):
            (mnt / name).write_text("")
        assert os.getxattr(mnt / "a.x", "user.fencefs.policy") == b"shared"
        assert os.getxattr(mnt / "a.db", "user.fencefs.policy") == b"optimistic"
    finally:
        assert fencefs("unmount", str(mnt)).returncode == 0
