"""The fencefs command: mount, unmount, status, reclaim, log."""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from fencefs import cli_history
from fencefs.text import shown as _shown

STATUS_XATTR = "user.fencefs.status"


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


# -- mount -------------------------------------------------------------------


def _mounted_at(mountpoint: str) -> tuple[str, str] | None:
    """(fstype, source) of the mount at ``mountpoint``, if any."""
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.readlines()
    except OSError:
        return None
    found = None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and _unescape(fields[4]) == target:
            rfields = right.split()
            found = (rfields[0], _unescape(rfields[1]) if len(rfields) > 1 else "")
    return found


def _unescape(text: str) -> str:
    return (text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def validate_mount(backing: str, mountpoint: str) -> tuple[str, str]:
    if not os.path.exists(backing):
        raise UsageError(f"backing directory {backing} does not exist")
    if not os.path.isdir(backing):
        raise UsageError(f"backing directory {backing} is not a directory")
    if not os.path.exists(mountpoint):
        raise UsageError(f"mount point {mountpoint} does not exist")
    if not os.path.isdir(mountpoint):
        raise UsageError(f"mount point {mountpoint} is not a directory")
    backing, mountpoint = os.path.realpath(backing), os.path.realpath(mountpoint)
    if os.path.ismount(mountpoint) or _mounted_at(mountpoint) is not None:
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


def shared_globs(args: argparse.Namespace) -> list[str]:
    """The mount's shared-policy globs: the default set unless turned off,
    then every --shared-glob."""
    from fencefs.core.policy import DEFAULT_SHARED_GLOBS

    defaults = [] if args.no_default_shared_globs else list(DEFAULT_SHARED_GLOBS)
    return defaults + list(args.shared_glob)


def cmd_mount(args: argparse.Namespace) -> int:
    for pattern in args.shared_glob:
        if not pattern.strip("/"):
            raise UsageError(f"--shared-glob: not a pattern: {pattern!r}")
    missing = cli_history.check_metrics_available(args)
    if missing:
        raise UsageError(missing)
    backing, mountpoint = validate_mount(args.backing, args.mountpoint)
    if args.foreground:
        from fencefs.daemon import serve, setup_logging

        setup_logging(args.debug, args.log_file)
        return serve(backing, mountpoint, allow_other=args.allow_other, debug=args.debug,
                     durable=args.durability == "full", scope=args.identity,
                     ready_fd=args.ready_fd, max_observations=args.max_observations,
                     warm_files=args.warm_files,
                     upkeep_interval=args.upkeep_interval, policy=args.policy,
                     lease_ttl=args.lease_ttl, wait=args.wait, sweep_after=args.sweep_after,
                     shared_globs=shared_globs(args),
                     retention=cli_history.retention_of(args), metrics=args.metrics)
    read_fd, write_fd = os.pipe()
    logfile = os.path.join(backing, ".fencefs", "daemon.log")
    command = [sys.executable, "-m", "fencefs.cli", "mount", "--foreground",
               "--ready-fd", str(write_fd), "--log-file", logfile,
               "--durability", args.durability, "--identity", args.identity,
               "--max-observations", str(args.max_observations),
               "--warm-files", str(args.warm_files),
               "--policy", args.policy, "--lease-ttl", str(args.lease_ttl),
               "--wait", str(args.wait), "--upkeep-interval", str(args.upkeep_interval)]
    if args.sweep_after is not None:
        command += ["--sweep-after", str(args.sweep_after)]
    for pattern in args.shared_glob:
        command += ["--shared-glob", pattern]
    if args.no_default_shared_globs:
        command.append("--no-default-shared-globs")
    command += cli_history.mount_argv(args)
    if args.debug:
        command.append("--debug")
    if args.allow_other:
        command.append("--allow-other")
    command += [backing, mountpoint]
    child = subprocess.Popen(command, pass_fds=(write_fd,), start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    os.close(write_fd)
    deadline = time.monotonic() + 30
    ready = False
    while time.monotonic() < deadline:
        r, _, _ = select.select([read_fd], [], [], 0.2)
        if r:
            ready = os.read(read_fd, 64).startswith(b"ready")
            break
        if child.poll() is not None:
            break
    os.close(read_fd)
    if not ready:
        if child.poll() is None:
            child.terminate()
        raise UsageError(f"the fencefs daemon did not start; see {logfile}")
    print(f"fencefs: {backing} mounted on {mountpoint} (daemon pid {child.pid})")
    return 0


# -- unmount -----------------------------------------------------------------


def cmd_unmount(args: argparse.Namespace) -> int:
    mountpoint = os.path.realpath(args.mountpoint)
    found = _mounted_at(mountpoint)
    if found is None or found[0] != "fuse.fencefs":
        raise UsageError(f"{args.mountpoint} is not a fencefs mount")
    backing = found[1]
    pid = _daemon_pid(backing)
    result = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(f"could not unmount {mountpoint}: {result.stderr.strip()}")
    if pid is not None:
        deadline = time.monotonic() + args.timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                raise UsageError(f"unmounted, but daemon {pid} did not exit in {args.timeout}s")
            time.sleep(0.05)
    return 0


def _daemon_pid(backing: str) -> int | None:
    try:
        with open(os.path.join(backing, ".fencefs", "daemon.pid")) as f:
            return int(f.readline())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- reclaim, status, log ----------------------------------------------------


def _duration(text: str) -> float:
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


def cmd_reclaim(args: argparse.Namespace) -> int:
    if args.expired or args.agent:
        if args.expired and args.agent:
            raise UsageError("reclaim takes --expired or --agent, not both")
        if len(args.files) != 1:
            raise UsageError("reclaim --expired/--agent takes one mount point")
        mountpoint = args.files[0]
        before = {r["file"]: r["epoch"] for r in _status_rows(mountpoint)}
        name, value = (("user.fencefs.reclaim-expired", b"1") if args.expired
                       else ("user.fencefs.reclaim-agent", args.agent.encode()))
        try:
            os.setxattr(mountpoint, name, value)
        except OSError as e:
            raise UsageError(f"{mountpoint}: {e.strerror}") from None
        after = _status_rows(mountpoint)
        done = [r for r in after if r["file"] in before and r["epoch"] != before[r["file"]]]
        for row in done:
            print(f"{_shown(row['file'])}: reclaimed, epoch {row['epoch']}")
        if not done:
            print("nothing to reclaim")
        return 0
    failed = 0
    for path in args.files:
        try:
            os.setxattr(path, "user.fencefs.reclaim", b"1")
            epoch = os.getxattr(path, "user.fencefs.epoch").decode()
            print(f"{_shown(path)}: reclaimed, epoch {epoch}")
        except OSError as e:
            hint = " (not on a fencefs mount?)" if e.errno in (errno.ENOTSUP, errno.EINVAL) else ""
            print(f"fencefs: {_shown(path)}: {e.strerror}{hint}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _claims_of(path: str) -> dict[str, object]:
    def get(name: str) -> str:
        return os.getxattr(path, f"user.fencefs.{name}").decode()

    claims: list[dict[str, Any]] = []
    now = time.time()
    for line in get("claims").splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        lease = fields.get("lease", "-")
        claims.append({
            "identity": fields.get("identity"), "pid": int(fields.get("pid", 0)),
            "kind": fields.get("kind"), "version": int(fields.get("version", 0)),
            "epoch": int(fields.get("epoch", 0)),
            "lease_left": None if lease == "-" else round(float(lease) - now, 3),
        })
    return {"file": path, "version": int(get("version")), "epoch": int(get("epoch")),
            "policy": get("policy"), "claims": claims}


def _status_rows(mountpoint: str) -> list[dict[str, Any]]:
    try:
        raw = os.getxattr(mountpoint, STATUS_XATTR)
    except OSError as e:
        raise UsageError(f"{mountpoint}: not a fencefs mount ({e.strerror})") from None
    rows: list[dict[str, Any]] = json.loads(raw)
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    if args.files:
        for path in args.files:
            full = path if os.path.isabs(path) else os.path.join(args.mountpoint, path)
            try:
                rows.append(_claims_of(full))
            except OSError as e:
                raise UsageError(f"{path}: {e.strerror}") from None
    else:
        rows = _status_rows(args.mountpoint)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'FILE':32} {'VER':>5} {'EPOCH':>5} {'POLICY':10} {'IDENTITY':20} {'PID':>7} "
          f"{'KIND':5} {'RESTS ON':10} LEASE LEFT")
    for row in rows:
        claims: list[dict[str, Any]] = list(row["claims"]) or [{}]
        for i, claim in enumerate(claims):
            head = (f"{_shown(row['file'])[-32:]:32} {row['version']:>5} {row['epoch']:>5} "
                    f"{_shown(row['policy']):10}" if i == 0 else " " * 55)
            if not claim:
                print(f"{head} -")
                continue
            left = claim.get("lease_left")
            lease = "-" if left is None else (f"{left:.1f}s" if left > 0 else "expired")
            if claim["epoch"] != row["epoch"]:
                lease = "revoked"
            rests = f"v{claim['version']}/e{claim['epoch']}"
            print(f"{head} {_shown(claim['identity'])[-20:]:20} {claim['pid']:>7} "
                  f"{claim['kind']:5} {rests:10} {lease}")
    kept = cli_history.kept_line(args.mountpoint)
    if kept:
        print(kept)
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    journal = os.path.join(args.mountpoint, ".fencefs", "journal.jsonl")
    try:
        from fencefs.store.journal import read_journal

        entries = read_journal(journal)
    except OSError as e:
        raise UsageError(f"cannot read {journal}: {e.strerror}") from None
    if args.file:
        wanted = os.path.relpath(os.path.realpath(args.file), os.path.realpath(args.mountpoint)) \
            if os.path.isabs(args.file) or os.path.exists(args.file) else args.file
        entries = [e for e in entries if e.get("file") == wanted]
    if args.json:
        for entry in entries:
            print(json.dumps(entry))
        return 0
    print(f"{'TIME':23} {'EVENT':10} {'FILE':28} {'WHO':20} {'PID':>7} DETAIL")
    for entry in entries:
        when = datetime.datetime.fromtimestamp(float(entry.get("ts", 0))).isoformat(
            sep=" ", timespec="milliseconds")
        detail = " ".join(f"{_shown(k)}={_shown(v)}" for k, v in entry.items()
                          if k not in ("ts", "event", "file", "identity", "pid"))
        print(f"{when:23} {_shown(entry.get('event', '?')):10} "
              f"{_shown(entry.get('file', '?'))[-28:]:28} "
              f"{_shown(entry.get('identity', '-'))[-20:]:20} "
              f"{_shown(entry.get('pid', '-')):>7} {detail}")
    return 0


# -- parser ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fencefs", description="A FUSE filesystem that fences writes to shared files.")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount BACKING on MOUNTPOINT")
    m.add_argument("backing")
    m.add_argument("mountpoint")
    m.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    m.add_argument("--debug", action="store_true", help="log every request")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users use the mount (file modes still apply)")
    m.add_argument("--durability", choices=("full", "none"), default="full",
                   help="full (default): a successful close/fsync is on disk; "
                        "none: no fsync, a crash may lose acknowledged commits")
    m.add_argument("--identity", choices=("agent", "process", "thread", "session"),
                   default="agent", help="what one claim-holding identity is (docs/guide.md)")
    m.add_argument("--policy", choices=("optimistic", "exclusive"), default="optimistic",
                   help="policy of files that have none set (default optimistic)")
    m.add_argument("--lease-ttl", type=_duration, default=60.0,
                   help="lease of a write claim, renewed by each write and fsync "
                        "(default 60s; accepts 500ms, 30s, 5m)")
    m.add_argument("--wait", type=_duration, default=0.0,
                   help="exclusive policy: how long an open waits for the holder "
                        "before EBUSY (default 0: at once)")
    m.add_argument("--sweep-after", type=_duration, default=None,
                   help="reclaim write claims idle (no write/fsync/renew) this long")
    m.add_argument("--shared-glob", action="append", default=[], metavar="PATTERN",
                   help="files matching PATTERN (a name like '*.db', or a path from the "
                        "mount root if it has a '/') get the shared policy unless they "
                        "have their own; repeatable; adds to the default set")
    m.add_argument("--no-default-shared-globs", action="store_true",
                   help="do not apply the default shared set (SQLite's *.db, *.sqlite, "
                        "*.sqlite3 and their -wal, -shm, -journal files)")
    m.add_argument("--max-observations", type=int, default=100_000,
                   help="cap on remembered read claims (default 100000; oldest dropped)")
    cli_history.add_mount_options(m)
    m.add_argument("--warm-files", type=int, default=8192, help=argparse.SUPPRESS)
    m.add_argument("--upkeep-interval", type=float, default=2.0, help=argparse.SUPPRESS)
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    m.add_argument("--log-file", help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("unmount", help="unmount and wait for the daemon to exit")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=30.0)
    u.set_defaults(func=cmd_unmount)

    s = sub.add_parser("status", help="files with outstanding claims")
    s.add_argument("mountpoint")
    s.add_argument("files", nargs="*")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    r = sub.add_parser("reclaim", help="revoke every claim on FILE (epoch + 1)",
                       usage="fencefs reclaim FILE... | --expired MOUNTPOINT | "
                             "--agent ID MOUNTPOINT")
    r.add_argument("files", nargs="+", metavar="FILE")
    r.add_argument("--expired", action="store_true",
                   help="reclaim every file whose write claim's lease has expired "
                        "(the argument is the mount point)")
    r.add_argument("--agent", metavar="ID",
                   help="reclaim every file on which identity ID holds a claim "
                        "(the argument is the mount point)")
    r.set_defaults(func=cmd_reclaim)

    lg = sub.add_parser("log", help="print the journal")
    lg.add_argument("mountpoint")
    lg.add_argument("file", nargs="?")
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(func=cmd_log)

    cli_history.add_parsers(sub)  # history, restore, gc, stats
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, cli_history.HistoryUsageError) as e:
        print(f"fencefs: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
