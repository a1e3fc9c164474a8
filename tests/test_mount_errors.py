"""Mount ergonomics (issue 17, item 4): every mount failure is one line
naming its cause, the same line is in the daemon's log, user mounts and
what --allow-other needs, and mounting by ``mount -t fuse.fencefs``.

The cases that need another /dev/fuse, /etc/fuse.conf or helper directory
than the host's run in a private mount namespace (tests/support/mountns.py); the
user of user mounts is ``nobody``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fencefs.cli import build_parser
from fencefs.mounting import UsageError, apply_options
from tests.support.mount import Mount, mounted, require_fuse
from tests.support.mountns import NOBODY, in_namespace, need_namespaces

PY = sys.executable


def cli(*args: str) -> list[str]:
    return [PY, "-m", "fencefs.cli", *args]


def fencefs(*args: str) -> dict[str, Any]:
    done = subprocess.run(cli(*args), capture_output=True, text=True, timeout=60)
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def one_line(result: dict[str, Any], *words: str) -> str:
    """The failure's one line (without the ``fencefs: `` prefix)."""
    assert result["rc"] not in (0, None), result
    assert "Traceback" not in result["stderr"], result["stderr"]
    lines = result["stderr"].splitlines()
    assert len(lines) == 1, result["stderr"]
    assert lines[0].startswith("fencefs: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0].removeprefix("fencefs: ")


def log_of(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory every user can reach, with a backing directory ``b`` and a
    mount point ``m`` owned by nobody (pytest's tmp_path is root's alone)."""
    require_fuse()
    reason = need_namespaces()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the mount error tests must run in CI, but this {reason}")
        pytest.skip(reason)
    path = Path(tempfile.mkdtemp(prefix="fencefs-mnt-", dir="/tmp"))
    path.chmod(0o755)
    for name in ("b", "m"):
        (path / name).mkdir()
        os.chown(path / name, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(*argv: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"argv": list(argv), "uid": NOBODY, "env": env}


def as_root(*argv: str) -> dict[str, Any]:
    return {"argv": list(argv), "uid": None}


# -- the -o options ------------------------------------------------------------


def parse_mount(*argv: str) -> tuple[argparse.Namespace, list[str]]:
    args = build_parser().parse_args(["mount", *argv])
    return args, apply_options(args)


def test_mount_options_map_to_the_command_line() -> None:
    args, kernel = parse_mount(
        "B", "M", "-o", "rw,nosuid,dev,noatime,durability=none,policy=exclusive,allow_other",
        "-o", "identity=session,lease_ttl=5s,wait=500ms,sweep-after=2m,max_observations=7,"
              "shared_glob=*.db,shared-glob=notes/*.md,no_default_shared_globs,debug,"
              "defaults,auto,noauto,user,users,nofail,_netdev,x-systemd.automount,"
              "x-systemd.mount-timeout=30,comment=fencefs,relatime")
    assert kernel == ["rw", "nosuid", "dev", "noatime"]
    assert (args.durability, args.policy, args.identity) == ("none", "exclusive", "session")
    assert (args.lease_ttl, args.wait, args.sweep_after) == (5.0, 0.5, 120.0)
    assert args.max_observations == 7 and args.shared_glob == ["*.db", "notes/*.md"]
    assert args.allow_other and args.debug and args.no_default_shared_globs
    args, kernel = parse_mount("B", "M")
    assert kernel == [] and not args.allow_other and args.durability == "full"


def test_retention_and_metrics_mount_options() -> None:
    """What the mount keeps, in -o form too (an fstab line has no --keep-...)."""
    args, kernel = parse_mount(
        "B", "M", "-o", "keep_versions=5,keep-for=2d,keep_rejected=10,"
                        "keep_rejected_bytes=1M,keep_rejected_for=12h,journal_max=64M,"
                        "metrics=127.0.0.1:9464")
    assert kernel == []
    assert (args.keep_versions, args.keep_for, args.keep_rejected) == (5, 2 * 86400.0, 10)
    assert (args.keep_rejected_bytes, args.keep_rejected_for) == (1 << 20, 12 * 3600.0)
    assert (args.journal_max, args.metrics) == (64 << 20, ("127.0.0.1", 9464))


@pytest.mark.parametrize(("option", "words"), [
    ("bogus", "unknown mount option 'bogus'"), ("durability=maybe", "one of full, none"),
    ("policy", "takes a value"), ("allow_other=1", "takes no value"),
    ("lease_ttl=soon", "not a duration"), ("max_observations=many", "not a number"),
    ("nosuid=1", "takes no value"), ("keep_versions=-1", "not a count"),
    ("keep_for=soon", "not a duration"), ("journal_max=lots", "not a size"),
    ("metrics=host:port", "not an address"),
])
def test_bad_mount_options_are_refused(option: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        parse_mount("B", "M", "-o", option)


def test_helper_form_with_a_bad_option_is_one_line_and_creates_nothing(
        tmp_path: Path) -> None:
    """``fencefs BACKING MOUNTPOINT -o ...`` is ``fencefs mount``: a bad
    option is refused before anything is touched."""
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    one_line(fencefs(str(tmp_path / "b"), str(tmp_path / "m"), "-o", "bogus"),
             "unknown mount option 'bogus'")
    assert list((tmp_path / "b").iterdir()) == []
    one_line(fencefs("mount"), "required", "mountpoint")  # argparse, in one line too


# -- failures before the daemon starts -------------------------------------------


def test_checked_failures_are_one_line_and_in_the_daemon_log(mount: Mount,
                                                             tmp_path: Path) -> None:
    backing, missing = tmp_path / "b", tmp_path / "missing"
    (backing / ".fencefs").mkdir(parents=True)  # as after an earlier mount
    log = backing / ".fencefs" / "daemon.log"
    other_log = tmp_path / "fg.log"
    cases = [
        ((str(backing), str(mount.mnt)), "busy"),
        ((str(backing), str(missing)), "does not exist"),
        ((str(backing), str(tmp_path / "file")), "not a directory"),
    ]
    (tmp_path / "file").write_text("x")
    for (b, m), word in cases:
        line = one_line(fencefs("mount", b, m), "mount point", word)
        assert line in log_of(log)  # background: the daemon's log
        line = one_line(fencefs("mount", "--foreground", "--log-file", str(other_log), b, m),
                        "mount point", word)
        assert line in log_of(other_log)
        one_line(fencefs("mount", "-f", b, m), "mount point", word)  # log to stderr: once
        one_line(fencefs(b, m, "-o", "durability=none"), "mount point", word)
    assert log_of(log).count(" ERROR fencefs: ") == 2 * len(cases)
    # A missing backing directory: one line, and nothing is created for a log.
    one_line(fencefs("mount", str(missing), str(tmp_path)), "backing directory",
             "does not exist")
    assert not missing.exists()


def test_a_second_daemon_on_one_backing_is_refused(mount: Mount, tmp_path: Path) -> None:
    """Two daemons on one backing directory would not fence each other."""
    other = tmp_path / "other-mnt"
    other.mkdir()
    log = mount.backing / ".fencefs" / "daemon.log"
    try:
        line = one_line(fencefs("mount", str(mount.backing), str(other)), "busy",
                        f"serves it on {mount.mnt}")
        assert line in log_of(log)
        line = one_line(fencefs("mount", "-f", str(mount.backing), str(other)), "busy")
        assert not mounted(str(other))
    finally:
        if mounted(str(other)):  # the check failed: stop the second daemon
            fencefs("unmount", str(other))
    with open(mount.path("still.txt"), "w") as f:  # the first daemon serves on
        f.write("yes")
    assert (mount.backing / "still.txt").read_text() == "yes"


# -- failures of the system: the device, fusermount3, fuse.conf, libfuse -----------


def test_fuse_device_not_accessible(base: Path) -> None:
    b, m = str(base / "b"), str(base / "m")
    fg_log = f"{b}/fg.log"
    results = in_namespace(str(base), [
        as_nobody(*cli("mount", b, m)),
        as_nobody(*cli("mount", "--foreground", b, m)),
        as_nobody(*cli("mount", "--foreground", "--log-file", fg_log, b, m)),
        as_nobody(*cli(b, m, "-o", "durability=none")),
    ], fuse_mode=0o600)
    lines = [one_line(r, "device /dev/fuse is not accessible to uid 65534",
                      "Permission denied") for r in results]
    assert len(set(lines)) == 1
    log = log_of(base / "b" / ".fencefs" / "daemon.log")
    assert log.count(lines[0]) == 2  # the two background mounts
    assert lines[0] in log_of(base / "b" / "fg.log")


def test_fuse_device_missing(base: Path) -> None:
    b, m = str(base / "b"), str(base / "m")
    results = in_namespace(str(base), [
        as_root(*cli("mount", b, m)), as_root(*cli("mount", "-f", b, m)),
    ], no_fuse=True)
    line = one_line(results[0], "device /dev/fuse does not exist", "modprobe fuse")
    assert one_line(results[1]) == line
    assert line in log_of(base / "b" / ".fencefs" / "daemon.log")


def test_fusermount3_missing_for_a_user_mount(base: Path) -> None:
    b, m = str(base / "b"), str(base / "m")
    no_path = {"PATH": "/nonexistent"}
    results = in_namespace(str(base), [
        as_nobody(*cli("mount", b, m), env=no_path),
        as_nobody(*cli("mount", "-f", b, m), env=no_path),
    ], fuse_mode=0o666)
    line = one_line(results[0], "fusermount3 is missing")
    assert one_line(results[1]) == line
    assert line in log_of(base / "b" / ".fencefs" / "daemon.log")


def test_what_libfuse_says_becomes_the_one_line(base: Path) -> None:
    """A cause only fusermount3 finds (a user mounting on a directory it
    cannot write): its words, caught from standard error, are the line."""
    b, m = str(base / "b"), str(base / "rootdir")
    os.mkdir(m, 0o755)
    results = in_namespace(str(base), [
        as_nobody(*cli("mount", b, m)), as_nobody(*cli("mount", "-f", b, m)),
    ], fuse_mode=0o666)
    line = one_line(results[0], f"could not mount on {m}", "fusermount3",
                    "no write access")
    assert one_line(results[1]) == line
    assert line in log_of(base / "b" / ".fencefs" / "daemon.log")


# -- user mounts ---------------------------------------------------------------------

PROBE = textwrap.dedent("""\
    import errno, json, os, sys
    from fencefs import wire
    out = {}
    for op in sys.argv[1:]:
        kind, _, arg = op.partition(":")
        try:
            if kind == "write":
                with open(arg, "w") as f:
                    f.write("hello")
                out[op] = os.getxattr(arg, "user.fencefs.version").decode()
            elif kind == "list":
                out[op] = sorted(os.listdir(arg))
            elif kind == "mount":
                found = wire.mount_at(arg)
                out[op] = None if found is None else [found.fstype, found.options,
                                                      found.super_options]
        except OSError as e:
            out[op] = errno.errorcode[e.errno]
    print(json.dumps(out))
""")


def probe(result: dict[str, Any]) -> dict[str, Any]:
    assert result["rc"] == 0, result
    answer: dict[str, Any] = json.loads(result["stdout"])
    return answer


def test_user_mount_and_allow_other(base: Path) -> None:
    b, m = str(base / "b"), str(base / "m")
    results = in_namespace(str(base), [
        as_nobody(*cli("mount", b, m)),
        as_nobody(PY, "-c", PROBE, f"write:{m}/notes.md", f"mount:{m}"),
        as_root(PY, "-c", PROBE, f"list:{m}"),
        as_nobody(*cli("unmount", m)),
        as_nobody(PY, "-c", PROBE, f"mount:{m}"),
        as_nobody(*cli("mount", "--allow-other", b, m)),
        as_nobody(*cli(b, m, "-o", "allow_other")),
    ], fuse_mode=0o666, fuse_conf="# mount_max = 1000\n")
    assert results[0]["rc"] == 0, results[0]
    seen = probe(results[1])
    assert seen[f"write:{m}/notes.md"] == "1"
    fstype, _, super_options = seen[f"mount:{m}"]
    assert fstype == "fuse.fencefs" and "user_id=65534" in super_options
    assert "allow_other" not in super_options
    # Without allow_other the mount is its user's alone: even root is refused.
    assert probe(results[2]) == {f"list:{m}": "EACCES"}
    assert results[3]["rc"] == 0, results[3]
    assert probe(results[4]) == {f"mount:{m}": None}
    for failed in results[5:]:
        one_line(failed, "--allow-other by a user other than root needs",
                 "user_allow_other in /etc/fuse.conf")
    assert (base / "b" / "notes.md").read_text() == "hello"
    assert (base / "b" / "notes.md").stat().st_uid == NOBODY

    # With user_allow_other in /etc/fuse.conf the user may let others in.
    results = in_namespace(str(base), [
        as_nobody(*cli(b, m, "-o", "allow_other")),
        as_root(PY, "-c", PROBE, f"list:{m}", f"mount:{m}"),
        as_nobody(*cli("unmount", m)),
    ], fuse_mode=0o666, fuse_conf="user_allow_other\n")
    assert results[0]["rc"] == 0, results[0]
    seen = probe(results[1])
    assert seen[f"list:{m}"] == [".fencefs", "notes.md"]
    assert "allow_other" in seen[f"mount:{m}"][2]
    assert results[2]["rc"] == 0, results[2]


# -- mount -t fuse.fencefs and umount ------------------------------------------------


def test_mount_t_fuse_fencefs_and_umount(base: Path) -> None:
    """mount(8) runs mount.fuse3, which runs ``fencefs BACKING MOUNTPOINT -o
    OPTIONS`` found on its fixed PATH; umount(8) unmounts, and the daemon
    exits."""
    sbin = base / "sbin"
    sbin.mkdir()
    helper = sbin / "fencefs"
    helper.write_text(f"#!/bin/sh\nexec {PY} -m fencefs.cli \"$@\"\n")
    helper.chmod(0o755)
    b, m = str(base / "b"), str(base / "m")
    check = textwrap.dedent("""\
        import json, os, sys, time
        from fencefs import wire
        b, m, phase = sys.argv[1:]
        found = wire.mount_at(m)
        out = {"mount": None if found is None else [found.fstype, found.source,
                                                    found.options]}
        if phase == "mounted":
            with open(os.path.join(m, "plan.md"), "w") as f:
                f.write("v1")
            open(os.path.join(m, "t.x"), "w").close()
            out["policy"] = [os.getxattr(os.path.join(m, n), "user.fencefs.policy").decode()
                             for n in ("plan.md", "t.x")]
            pid = int(open(os.path.join(b, ".fencefs", "daemon.pid")).readline())
            out["pid"] = pid
            out["cmdline"] = open(f"/proc/{pid}/cmdline").read().split("\\0")
            open(os.path.join(b, "pid"), "w").write(str(pid))
        else:
            pid = int(open(os.path.join(b, "pid")).read())
            deadline = time.monotonic() + 30
            def alive():
                try:
                    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
                except OSError:
                    return False
            while alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            out["alive"] = alive()
        print(json.dumps(out))
    """)
    options = ("durability=none,policy=exclusive,shared_glob=*.x,noatime,nosuid,nodev,"
               "nofail,_netdev,x-systemd.automount,x-systemd.mount-timeout=30")
    results = in_namespace(str(base), [
        as_root("mount", "-t", "fuse.fencefs", b, m, "-o", options),
        as_root(PY, "-c", check, b, m, "mounted"),
        as_root("umount", m),
        as_root(PY, "-c", check, b, m, "unmounted"),
    ], sbin=str(sbin))
    assert results[0]["rc"] == 0, results[0]
    seen = probe(results[1])
    fstype, source, options_seen = seen["mount"]
    assert (fstype, source) == ("fuse.fencefs", b)
    assert {"noatime", "nosuid", "nodev"} <= set(options_seen.split(","))
    assert seen["policy"] == ["exclusive", "shared"]
    cmdline = seen["cmdline"]
    assert cmdline[cmdline.index("--durability") + 1] == "none"
    assert results[2]["rc"] == 0, results[2]
    gone = probe(results[3])
    assert gone == {"mount": None, "alive": False}
    assert (base / "b" / "plan.md").read_text() == "v1"


def test_a_dead_mount_is_named_as_such(make_mount: Any, tmp_path: Path) -> None:
    """A mount point whose daemon was killed answers ENOTCONN: that is
    reported as busy, with the way to clear it, not as a missing directory."""
    dead = make_mount(name="dead")
    assert dead.proc is not None
    dead.proc.send_signal(signal.SIGKILL)
    dead.proc.wait()
    backing = tmp_path / "b2"
    backing.mkdir()
    for args in (("mount",), ("mount", "-f"), ()):
        one_line(fencefs(*args, str(backing), str(dead.mnt)), "mount point", "is busy",
                 "daemon is gone", "fusermount3 -u -z")
