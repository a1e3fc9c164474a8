"""Run commands in a private mount namespace with a chosen /dev/fuse.

The host's /dev/fuse, /etc/fuse.conf and /usr/local/sbin are what they are
(here /dev/fuse is root's alone); a test of user mounts, of a missing device
or of ``mount -t fuse.fencefs`` needs them otherwise, without touching the
host. ``in_namespace`` runs this file under ``unshare --mount`` as root: it
puts a device node of the asked mode over /dev/fuse (or a /dev without one),
a fuse.conf over /etc/fuse.conf, a directory over /usr/local/sbin (where
mount(8) looks for the ``fencefs`` helper), runs the steps (as another user
where asked) and prints their results as JSON. On its way out it stops every
fencefs daemon serving a backing directory under ``base`` and lazily
unmounts what is left, so that nothing outlives the namespace.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from typing import Any

NOBODY = 65534  # the user of user mounts: exists everywhere, needs no useradd


def need_namespaces() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (to make a mount namespace)"
    for tool in ("unshare", "setpriv", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def in_namespace(base: str, steps: list[dict[str, Any]], *, fuse_mode: int | None = None,
                 no_fuse: bool = False, fuse_conf: str | None = None,
                 sbin: str | None = None, timeout: float = 120) -> list[dict[str, Any]]:
    """Each step: {"argv": [...], "uid": int|None, "env": {...}|None}; each
    result: {"rc", "stdout", "stderr"}."""
    plan = {"base": base, "steps": steps, "fuse_mode": fuse_mode, "no_fuse": no_fuse,
            "fuse_conf": fuse_conf, "sbin": sbin}
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                          os.path.abspath(__file__), json.dumps(plan)],
                         capture_output=True, text=True, timeout=timeout, cwd="/")
    assert out.returncode == 0, f"namespace driver failed:\n{out.stderr}"
    results: list[dict[str, Any]] = json.loads(out.stdout)
    return results


# -- inside the namespace --------------------------------------------------------


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _setup(plan: dict[str, Any]) -> None:
    scratch = os.path.join(plan["base"], ".ns")
    os.makedirs(scratch, exist_ok=True)
    _sh("mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "tmpfs", scratch)
    if plan["no_fuse"]:
        dev = os.path.join(scratch, "dev")
        os.mkdir(dev, 0o755)
        for name, (major, minor) in {"null": (1, 3), "zero": (1, 5), "random": (1, 8),
                                     "urandom": (1, 9)}.items():
            os.mknod(os.path.join(dev, name), 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(os.path.join(dev, name), 0o666)
        _sh("mount", "--bind", dev, "/dev")
    elif plan["fuse_mode"] is not None:
        node = os.path.join(scratch, "fuse")
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(10, 229))
        os.chmod(node, plan["fuse_mode"])
        _sh("mount", "--bind", node, "/dev/fuse")
    if plan["fuse_conf"] is not None:
        conf = os.path.join(scratch, "fuse.conf")
        with open(conf, "w") as f:
            f.write(plan["fuse_conf"])
        os.chmod(conf, 0o644)
        _sh("mount", "--bind", conf, "/etc/fuse.conf")
    _reachable(os.path.realpath(sys.executable), scratch)
    if plan["sbin"] is not None:
        _sh("mount", "--bind", plan["sbin"], "/usr/local/sbin")


def _reachable(path: str, scratch: str) -> None:
    """Let every user reach ``path`` (this interpreter, which the steps and
    the daemons they start run): a private directory above it (/root, for
    an interpreter under ~/.pyenv) is covered by a world-searchable tmpfs
    that holds just the one entry on the way down."""
    parts = path.split("/")
    for i in range(2, len(parts)):
        above = "/".join(parts[:i])
        if os.stat(above).st_mode & stat.S_IXOTH:
            continue
        entry = parts[i]
        keep = os.path.join(scratch, "reach")
        os.mkdir(keep)
        _sh("mount", "--bind", os.path.join(above, entry), keep)
        _sh("mount", "-t", "tmpfs", "-o", "mode=0755,size=64k", "tmpfs", above)
        (os.mkdir if os.path.isdir(keep) else os.mknod)(os.path.join(above, entry))
        _sh("mount", "--bind", keep, os.path.join(above, entry))
        return


def _run(step: dict[str, Any]) -> dict[str, Any]:
    argv = list(step["argv"])
    if step.get("uid") is not None:
        uid = step["uid"]
        setpriv = shutil.which("setpriv") or "setpriv"  # before PATH is the step's
        argv = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    env = step.get("env") or {"PATH": "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/",
                              timeout=step.get("timeout", 60))
        return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
    except subprocess.TimeoutExpired:
        return {"rc": None, "stdout": "", "stderr": "timed out"}


def _clean(base: str) -> None:
    pids = []
    for pid_file in glob.glob(os.path.join(base, "**", ".fencefs", "daemon.pid"),
                              recursive=True):
        try:
            with open(pid_file) as f:
                pids.append(int(f.readline()))
        except (OSError, ValueError):
            pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    from fencefs import wire

    for mount in reversed(wire.read_mountinfo()):
        if mount.fstype == wire.FSTYPE:
            subprocess.run(["umount", "-l", mount.mountpoint], capture_output=True)


def _main(plan: dict[str, Any]) -> None:
    results = []
    try:
        _setup(plan)
        for step in plan["steps"]:
            results.append(_run(step))
    finally:
        _clean(plan["base"])
    print(json.dumps(results))


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
