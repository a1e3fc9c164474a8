"""What a mount needs, checked before it is tried, and its -o options.

Each check names what is missing in one line (a ``UsageError``): the backing
directory or the mount point (missing, not a directory, busy), user
extended attributes on the backing filesystem, pyfuse3 and libfuse3, the
device /dev/fuse, fusermount3 and /etc/fuse.conf for a mount by a user other
than root. ``apply_options`` folds ``-o`` options (as /etc/fstab and the
mount.fuse3 helper pass them) into the command's arguments.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import stat
from typing import Any

from fencefs import wire
from fencefs.metrics import parse_address
from fencefs.store.retention import parse_count, parse_duration, parse_size


class UsageError(Exception):
    """Bad input or a mount that failed: printed as one line, exit code 2.
    ``logged`` is set once the line is in the daemon's log."""

    logged = False


FUSE_DEVICE = "/dev/fuse"
FUSE_CONF = "/etc/fuse.conf"


def mounted_at(mountpoint: str) -> tuple[str, str] | None:
    """(fstype, source) of the mount at ``mountpoint``, if any."""
    found = wire.mount_at(os.path.realpath(mountpoint))
    return None if found is None else (found.fstype, found.source)


def _directory(path: str, what: str) -> None:
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise UsageError(f"{what} {path} does not exist") from None
        if e.errno == errno.ENOTCONN:
            raise UsageError(f"{what} {path} is busy: a FUSE mount whose daemon is gone is "
                             f"there; clear it with fusermount3 -u -z {path}") from None
        raise UsageError(f"{what} {path} is not usable: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {path} is not a directory")


def validate_mount(backing: str, mountpoint: str) -> tuple[str, str]:
    _directory(backing, "backing directory")
    _directory(mountpoint, "mount point")
    backing, mountpoint = os.path.realpath(backing), os.path.realpath(mountpoint)
    if os.path.ismount(mountpoint) or mounted_at(mountpoint) is not None:
        raise UsageError(f"mount point {mountpoint} is busy: something is mounted there")
    if mountpoint == backing or mountpoint.startswith(backing + "/") \
            or backing.startswith(mountpoint + "/"):
        raise UsageError("the mount point and the backing directory must not contain each other")
    from fencefs.store.backing import check_xattr_support

    meta = os.path.join(backing, ".fencefs")
    try:
        os.makedirs(meta, mode=0o700, exist_ok=True)
        check_xattr_support(meta)
    except OSError as e:
        raise UsageError(str(e) if "xattr" in str(e) else
                         f"backing directory {backing} is not usable: {e.strerror}") from None
    return backing, mountpoint


def check_fuse(allow_other: bool) -> None:
    """What a mount needs from the system, each missing piece named."""
    try:
        import pyfuse3  # noqa: F401
    except ImportError as e:
        raise UsageError(f"pyfuse3 cannot be loaded ({e}): install fuse3 and libfuse3 "
                         "(apt-get install fuse3 libfuse3-dev), then pip install pyfuse3") from None
    try:
        os.close(os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise UsageError(f"device {FUSE_DEVICE} does not exist: load the fuse module "
                             "(modprobe fuse), or give a container the device "
                             "(--device /dev/fuse)") from None
        try:
            st = os.stat(FUSE_DEVICE)
            how = f"mode {st.st_mode & 0o7777:04o}, owner uid {st.st_uid}"
        except OSError:
            how = "mode unknown"
        raise UsageError(f"device {FUSE_DEVICE} is not accessible to uid {os.getuid()}: "
                         f"{e.strerror} ({how}; user mounts need it readable and writable "
                         "by the user, usually mode 0666)") from None
    if os.geteuid() == 0:
        return  # root mounts directly; others go through the setuid fusermount3
    if shutil.which("fusermount3") is None:
        raise UsageError("fusermount3 is missing (not on PATH): a mount by a user other than "
                         "root needs it; install fuse3 (apt-get install fuse3)")
    if allow_other and not _user_allow_other():
        raise UsageError(f"--allow-other by a user other than root needs a line "
                         f"user_allow_other in {FUSE_CONF}")


def _user_allow_other() -> bool:
    try:
        with open(FUSE_CONF) as f:
            return any(line.strip() == "user_allow_other" for line in f)
    except OSError:
        return False


# -o options, as mount(8) and the mount.fuse3 helper pass them (docs/guide.md).
_VALUED: dict[str, Any] = {
    "durability": ("full", "none"), "identity": ("agent", "process", "thread", "session"),
    "policy": ("optimistic", "exclusive"), "lease_ttl": "duration", "wait": "duration",
    "sweep_after": "duration", "max_observations": "count", "shared_glob": "append",
    # What the mount keeps (fencefs/cli_history.py has the long options).
    "keep_versions": parse_count, "keep_for": parse_duration, "keep_rejected": parse_count,
    "keep_rejected_bytes": parse_size, "keep_rejected_for": parse_duration,
    "journal_max": parse_size, "metrics": parse_address,
    "keep_snapshots": parse_count, "keep_snapshots_for": parse_duration,
    "keep_staging_for": parse_duration,
}
_FLAGS = ("allow_other", "debug", "no_default_shared_globs")
# Passed on to the kernel's mount of the FUSE filesystem.
_KERNEL = ("ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec",
           "atime", "noatime", "sync", "async", "dirsync")
# mount(8)'s and systemd's own: they mean nothing to the filesystem.
_IGNORED = ("defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group",
            "nofail", "_netdev", "default_permissions", "relatime", "norelatime")


def apply_options(args: argparse.Namespace) -> list[str]:
    """Fold every ``-o`` option into ``args``; the options for the kernel."""
    kernel: list[str] = []
    for text in args.options:
        for item in filter(None, text.split(",")):
            key, eq, value = item.partition("=")
            name = key.replace("-", "_")
            if name in _IGNORED or name.startswith(("x_systemd", "comment")) \
                    or key.startswith("x-"):
                continue
            if name in _KERNEL and not eq:
                kernel.append(name)
            elif name in _FLAGS and not eq:
                setattr(args, name, True)
            elif name in _VALUED and eq:
                setattr(args, name, _option_value(name, value, _VALUED[name], args))
            elif name in _VALUED or name in _FLAGS or name in _KERNEL:
                raise UsageError(f"mount option {key} " + ("takes a value" if not eq
                                                            else "takes no value"))
            else:
                raise UsageError(f"unknown mount option {item!r} (docs/guide.md lists them)")
    return kernel


def _option_value(name: str, value: str, kind: Any, args: argparse.Namespace) -> Any:
    if callable(kind):
        try:
            return kind(value)
        except ValueError as e:
            raise UsageError(f"mount option {name}: {e}") from None
    if isinstance(kind, tuple):
        if value not in kind:
            raise UsageError(f"mount option {name} must be one of {', '.join(kind)}")
        return value
    if kind == "append":
        return [*getattr(args, name), value]
    if kind == "count":
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"mount option {name}: not a number: {value!r}") from None
    try:
        return duration(value)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"mount option {name}: {e}") from None


def duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            number, scale = text[: -len(unit)], units[unit]
            break
    else:
        number, scale = text, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    return value
