"""The wire protocol (fencefs.wire): round trips, mountinfo from fixture text,
and a real mount at a path the kernel has to escape in mountinfo."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fencefs import wire
from fencefs.wire import ClaimInfo, StatusClaim, StatusEntry
from tests.conftest import Mount, require_fuse, run_py


def test_wire_is_standard_library_only() -> None:
    """The client imports it: nothing of the daemon's layers, trio or pyfuse3."""
    code = ("import sys; before = set(sys.modules); import fencefs.wire\n"
            "new = [m for m in set(sys.modules) - before if m.startswith(('fencefs.', 'trio',"
            " 'pyfuse3', 'xattr'))]\n"
            "print(','.join(sorted(new)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "fencefs.wire", f"fencefs.wire pulled in: {out}"


ODD_IDENTITIES = [
    "agent:planner", "pid:4242", "agent:a b", "agent:tab\there", "agent:new\nline",
    "agent:50%", "agent:%41", "agent:ü ber", "agent:sep\u2028arator", "agent:=eq=",
    "agent:back\\slash", "agent:\x1b[31mred",
]


def test_claim_lines_round_trip() -> None:
    claims = [ClaimInfo(identity=ident, kind=kind, version=i, epoch=i % 3, pid=1000 + i,
                        lease=None if kind == "read" else 1764668000.25 + i)
              for i, ident in enumerate(ODD_IDENTITIES) for kind in ("read", "write")]
    raw = wire.format_claims(claims)
    lines = raw.decode().split("\n")
    assert lines[-1] == "" and len(lines) == len(claims) + 1  # one line per claim, always
    assert all(line.count(" ") == 5 for line in lines[:-1])  # six fields, split on spaces
    assert wire.parse_claims(raw) == tuple(claims)
    assert wire.parse_claims(raw.decode()) == tuple(claims)
    assert wire.parse_claims(b"") == ()


def test_claim_line_format_is_stable() -> None:
    line = wire.format_claim(ClaimInfo("agent:a b", "write", 3, 1, 42, 1764668000.25))
    assert line == ("identity=agent:a%20b kind=write version=3 epoch=1 pid=42 "
                    "lease=1764668000.250")
    # A newer daemon may add fields: they are ignored.
    assert wire.parse_claims(line + " colour=blue\n")[0].identity == "agent:a b"


@pytest.mark.parametrize("bad", [b"garbage", b"identity=x kind=read version=one epoch=0",
                                 b"identity=x kind=read epoch=0 pid=1 lease=-",
                                 b"identity=x kind=write version=1 epoch=0 pid=1 lease=soon"])
def test_claim_parser_refuses_what_is_not_a_claim_line(bad: bytes) -> None:
    with pytest.raises(ValueError, match="not a claim line"):
        wire.parse_claims(bad)


def test_status_json_round_trip() -> None:
    entries = [
        StatusEntry(file="dir/plan.md", version=4, epoch=1, policy="exclusive", claims=(
            StatusClaim("agent:a b", 17, "write", 4, 1, 12.5),
            StatusClaim("pid:9", 18, "read", 3, 0, None))),
        StatusEntry(file="new\nline ü.md", version=0, epoch=0, policy="optimistic",
                    claims=(StatusClaim("agent:\u2028", 1, "read", 0, 0, None),)),
    ]
    raw = wire.format_status(entries)
    assert wire.parse_status(raw) == entries
    assert wire.parse_status(raw.decode()) == entries
    assert wire.parse_status(b"[]") == []


@pytest.mark.parametrize("bad", [b"", b"{}", b"[1]", b'[{"file": "x"}]', b"not json"])
def test_status_parser_refuses_garbage(bad: bytes) -> None:
    with pytest.raises(ValueError, match="not a fencefs status value"):
        wire.parse_status(bad)


MOUNTINFO = (
    b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    b"36 22 0:31 / /tmp/a\\040b\\011c\\134d\\012e rw,nosuid,nodev,relatime shared:7 "
    b"master:3 - fuse.fencefs /srv/back\\040ing rw,user_id=0,group_id=0\n"
    b"37 22 0:32 /sub\\134dir /mnt/\xff\\134\\134 ro - tmpfs no\\040source rw,size=10k\n"
    b"38 22 0:33 / /tmp/a\\040b\\011c\\134d\\012e rw - fuse.fencefs other rw\n"
    b"garbage line\n"
    b"\n"
)


def test_mountinfo_parsing_undoes_every_escape() -> None:
    mounts = wire.parse_mountinfo(MOUNTINFO)
    assert [m.mount_id for m in mounts] == [22, 36, 37, 38]  # the garbage line is skipped
    root, fence, tmp, top = mounts
    assert (root.mountpoint, root.fstype, root.source, root.device) == ("/", "ext4",
                                                                          "/dev/sda1", "8:1")
    assert fence.mountpoint == "/tmp/a b\tc\\d\ne"
    assert (fence.parent_id, fence.device, fence.fstype) == (22, "0:31", "fuse.fencefs")
    assert fence.source == "/srv/back ing"
    assert fence.super_options == "rw,user_id=0,group_id=0"
    assert tmp.root == "/sub\\dir" and tmp.source == "no source"
    assert tmp.mountpoint == os.fsdecode(b"/mnt/\xff\\\\")  # not UTF-8: as realpath gives it
    # The mount on top at a path is the last one listed there.
    assert wire.mount_at("/tmp/a b\tc\\d\ne", mounts) == top
    assert wire.mount_at("/tmp/a\\040b\\011c\\134d\\012e", mounts) is None
    assert wire.mount_at("/nowhere", mounts) is None
    assert wire.unescape_mountinfo(b"\\040\\011\\012\\134\\1x") == " \t\n\\\\1x"


def test_mountinfo_of_this_process_has_the_root() -> None:
    mounts = wire.read_mountinfo()
    assert wire.mount_at("/", mounts) is not None


# -- a mount at a path that mountinfo must escape -----------------------------


def xattr(path: str, name: str) -> str:
    return os.getxattr(path, wire.PREFIX + name).decode()


def test_dup_close_does_not_commit_at_an_escaped_mount_point(tmp_path: Path) -> None:
    """With a space, a tab and a backslash in the mount point, the daemon
    still finds its own mount id, so a dup's close leaves the commit to the
    opener's last close (without the mount id every close commits)."""
    require_fuse()
    base = tmp_path / "odd dir\twith\\backslash"
    base.mkdir()
    m = Mount(base)
    try:
        m.start()  # inside the try: a start that times out still stops the daemon
        path = m.seed("plan.md", "v1\n")
        assert xattr(path, "version") == "1"
        assert wire.mount_at(str(m.mnt)) is not None
        from fencefs.client import is_fencefs

        assert is_fencefs(path)
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"v2\n")
        os.close(os.dup(fd))  # a dup's close: the opener still holds fd
        assert xattr(path, "version") == "1"
        assert run_py("import sys; print(open(sys.argv[1]).read(), end='')",
                      path).stdout == "v1\n"
        os.write(fd, b"more\n")
        os.close(fd)  # the last close commits
        assert xattr(path, "version") == "2"
        with open(path) as f:
            assert f.read() == "v2\nmore\n"
        # The CLI finds the mount at that path too.
        out = subprocess.run([sys.executable, "-m", "fencefs.cli", "status", str(m.mnt),
                              "plan.md", "--json"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        # fencefs unmount finds the daemon through the mount's source (the
        # backing path, escaped for libfuse's option parser and for mountinfo).
        found = wire.mount_at(str(m.mnt))
        assert found is not None and found.source == str(m.backing)
        out = subprocess.run([sys.executable, "-m", "fencefs.cli", "unmount", str(m.mnt)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert m.proc is not None and m.proc.wait(timeout=30) == 0
    finally:
        m.stop()
    log = m.log()
    assert "Traceback" not in log and " ERROR " not in log, log
    with pytest.raises(OSError) as e:
        os.getxattr(str(m.mnt), wire.STATUS)
    assert e.value.errno in (errno.ENODATA, errno.ENOTSUP)  # unmounted: a plain directory
