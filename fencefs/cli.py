"""The fencefs command: mount, unmount, status, reclaim, log."""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import logging
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from fencefs import cli_history, snapcli, wire
from fencefs.mounting import (
    UsageError,
    apply_options,
    check_fuse,
    duration,
    mounted_at,
    validate_mount,
)
from fencefs.text import shown

# -- mount -------------------------------------------------------------------

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def shared_globs(args: argparse.Namespace) -> list[str]:
    """The mount's shared-policy globs: the default set unless turned off,
    then every --shared-glob."""
    from fencefs.core.policy import DEFAULT_SHARED_GLOBS

    defaults = [] if args.no_default_shared_globs else list(DEFAULT_SHARED_GLOBS)
    return defaults + list(args.shared_glob)


def etcd_settings(args: argparse.Namespace) -> Any:
    """The --etcd options, checked (bad input: UsageError); None without --etcd."""
    if args.etcd is None:
        for name in ("cluster", "host_id", "etcd_cacert", "etcd_cert", "etcd_key",
                     "etcd_user", "etcd_password_file", "etcd_start_timeout"):
            if getattr(args, name) is not None:
                raise UsageError(f"--{name.replace('_', '-')} needs --etcd")
        return None
    from fencefs.etcd.client import parse_urls
    from fencefs.etcd.engine import EtcdSettings
    from fencefs.etcd.keys import check_cluster_name, check_host_id

    try:
        urls = parse_urls(args.etcd)
        cluster = check_cluster_name(args.cluster if args.cluster is not None else "fencefs")
        host = check_host_id(args.host_id if args.host_id is not None else
                             f"{socket.gethostname()}:{os.path.realpath(args.mountpoint)}")
    except ValueError as e:
        raise UsageError(f"--etcd: {e}") from None
    for name in ("etcd_cacert", "etcd_cert", "etcd_key", "etcd_password_file"):
        path = getattr(args, name)
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"--{name.replace('_', '-')}: no such file: {path}")
    if (args.etcd_cert is None) != (args.etcd_key is None):
        raise UsageError("--etcd-cert and --etcd-key go together")
    user = password = None
    if args.etcd_password_file is not None and args.etcd_user is None:
        raise UsageError("--etcd-password-file needs --etcd-user")
    if args.etcd_user is not None:
        user = args.etcd_user
        if not user or ":" in user:
            raise UsageError("--etcd-user takes a user name only: the password comes from "
                             "--etcd-password-file FILE or $FENCEFS_ETCD_PASSWORD, never "
                             "from the command line")
        password = os.environ.get("FENCEFS_ETCD_PASSWORD")
        if args.etcd_password_file is not None:
            try:
                with open(args.etcd_password_file) as f:
                    password = f.readline().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                raise UsageError(f"--etcd-password-file: cannot read "
                                 f"{args.etcd_password_file}: {e}") from None
        if not password:
            raise UsageError(f"--etcd-user {user}: no password (--etcd-password-file FILE "
                             f"or $FENCEFS_ETCD_PASSWORD)")
    patience = 30.0 if args.etcd_start_timeout is None else args.etcd_start_timeout
    if not patience >= 0:
        raise UsageError(f"--etcd-start-timeout: not a number of seconds: {patience}")
    return EtcdSettings(urls, cluster, host, args.etcd_cacert, args.etcd_cert, args.etcd_key,
                        user, password, start_timeout=patience)


def check_etcd_mount(settings: Any, backing: str) -> None:
    """Before anything is written: etcd answers and the backing is this cluster's."""
    if not os.path.isdir(backing):
        return  # validate_mount says what is wrong with it
    import trio

    from fencefs.etcd.engine import check_mount

    reason = trio.run(check_mount, settings, os.path.realpath(backing), False)
    if reason is not None:
        raise UsageError(reason)


def cmd_mount(args: argparse.Namespace) -> int:
    """Mount; any failure is one line on stderr and, where the log can be
    written, the same line in the daemon's log."""
    try:
        return _mount(args)
    except UsageError as e:
        if not e.logged:
            logfile = args.log_file or (None if args.foreground else os.path.join(
                os.path.realpath(args.backing), ".fencefs", "daemon.log"))
            if logfile:
                _log_failure(logfile, str(e))
                e.logged = True
        if args.ready_fd is not None:  # a daemon started by a background mount: tell it
            try:                       # (after the log has the line)
                os.write(args.ready_fd, b"error " + str(e).encode(errors="replace") + b"\n")
            except OSError:
                pass
        raise


def _log_failure(logfile: str, message: str) -> None:
    """One ERROR line in ``logfile``, formatted as the daemon logs, if its
    directory exists (a failed mount creates nothing)."""
    if not os.path.isdir(os.path.dirname(logfile) or "."):
        return
    record = logging.makeLogRecord({"name": "fencefs", "levelno": logging.ERROR,
                                    "levelname": "ERROR", "msg": message})
    try:
        with open(logfile, "a") as f:
            f.write(logging.Formatter(LOG_FORMAT).format(record) + "\n")
    except OSError:
        pass


def _mount(args: argparse.Namespace) -> int:
    kernel = apply_options(args)
    for pattern in args.shared_glob:
        if not pattern.strip("/"):
            raise UsageError(f"--shared-glob: not a pattern: {pattern!r}")
    missing = cli_history.check_metrics_available(args)
    if missing:
        raise UsageError(missing)
    etcd = etcd_settings(args)
    if etcd is not None:
        check_etcd_mount(etcd, args.backing)
    backing, mountpoint = validate_mount(args.backing, args.mountpoint)
    check_fuse(args.allow_other)
    if args.foreground:
        from fencefs.daemon import MountFailed, serve

        setup_logging(args.debug, args.log_file)
        try:
            return serve(backing, mountpoint, allow_other=args.allow_other, debug=args.debug,
                         durable=args.durability == "full", scope=args.identity,
                         ready_fd=args.ready_fd, max_observations=args.max_observations,
                         warm_files=args.warm_files,
                         upkeep_interval=args.upkeep_interval, policy=args.policy,
                         lease_ttl=args.lease_ttl, wait=args.wait,
                         sweep_after=args.sweep_after, shared_globs=shared_globs(args),
                         kernel_options=kernel,
                         retention=cli_history.retention_of(args), metrics=args.metrics,
                         etcd=etcd)
        except MountFailed as e:
            raise UsageError(str(e)) from None
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
    if etcd is not None:
        command += ["--etcd", ",".join(etcd.urls), "--cluster", etcd.cluster,
                    "--host-id", etcd.host, "--etcd-start-timeout", str(etcd.start_timeout)]
        for name in ("etcd_cacert", "etcd_cert", "etcd_key", "etcd_user",
                     "etcd_password_file"):   # (a password in the environment is inherited)
            if getattr(args, name) is not None:
                value = getattr(args, name)
                command += [f"--{name.replace('_', '-')}",
                            value if name == "etcd_user" else os.path.abspath(value)]
    if args.debug:
        command.append("--debug")
    if args.allow_other:
        command.append("--allow-other")
    if kernel:
        command += ["-o", ",".join(kernel)]
    command += ["--", backing, mountpoint]
    try:
        with open(logfile, "ab") as log:  # whatever escapes the logging lands there too
            child = subprocess.Popen(command, pass_fds=(write_fd,), start_new_session=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=log)
    except OSError as e:
        os.close(read_fd)
        raise UsageError(f"cannot start the fencefs daemon ({e.filename or sys.executable}): "
                         f"{e.strerror}") from None
    finally:
        os.close(write_fd)
    answer = _wait_ready(read_fd, child, 30)
    if answer != b"ready":
        if child.poll() is None:
            child.terminate()
        if answer.startswith(b"error "):
            failure = UsageError(answer[6:].decode(errors="replace"))
            failure.logged = True  # the daemon wrote it to its log
            raise failure
        raise UsageError(f"the fencefs daemon did not start; see {logfile}")
    print(f"fencefs: {backing} mounted on {mountpoint} (daemon pid {child.pid})")
    return 0


def _wait_ready(read_fd: int, child: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The daemon's first line on the readiness pipe: ``ready`` or ``error
    LINE``; empty if it died or timed out without one."""
    deadline = time.monotonic() + timeout
    got = b""
    try:
        while time.monotonic() < deadline and not got.endswith(b"\n"):
            r, _, _ = select.select([read_fd], [], [], 0.2)
            if r:
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    break
                got += chunk
            elif child.poll() is not None:
                break
    finally:
        os.close(read_fd)
    return got.split(b"\n", 1)[0] if got.endswith(b"\n") else b""


def setup_logging(debug: bool, logfile: str | None = None) -> None:
    handler: logging.Handler
    if logfile:
        try:
            handler = logging.FileHandler(logfile)
        except OSError as e:
            raise UsageError(f"cannot write the log file {logfile}: {e.strerror}") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        logging.getLogger("pyfuse3").setLevel(logging.WARNING)


# -- unmount -----------------------------------------------------------------


def cmd_unmount(args: argparse.Namespace) -> int:
    mountpoint = os.path.realpath(args.mountpoint)
    found = mounted_at(mountpoint)
    if found is None or found[0] != "fuse.fencefs":
        raise UsageError(f"{args.mountpoint} is not a fencefs mount")
    backing = found[1]
    pid = _daemon_pid(backing, mountpoint)
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


def _daemon_pid(backing: str, mountpoint: str) -> int | None:
    from fencefs.daemon import pid_file

    for path in (pid_file(backing, mountpoint), pid_file(backing)):  # --etcd: per mount
        try:
            with open(path) as f:
                return int(f.readline())
        except (OSError, ValueError):
            continue
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- reclaim, status, log ----------------------------------------------------


def cmd_reclaim(args: argparse.Namespace) -> int:
    if args.expired or args.agent:
        if args.expired and args.agent:
            raise UsageError("reclaim takes --expired or --agent, not both")
        if len(args.files) != 1:
            raise UsageError("reclaim --expired/--agent takes one mount point")
        mountpoint = args.files[0]
        before = {r.file: r.epoch for r in _status_rows(mountpoint)}
        name, value = ((wire.RECLAIM_EXPIRED, b"1") if args.expired
                       else (wire.RECLAIM_AGENT, args.agent.encode()))
        try:
            os.setxattr(mountpoint, name, value)
        except OSError as e:
            raise UsageError(f"{mountpoint}: {e.strerror}") from None
        after = {r.file: r.epoch for r in _status_rows(mountpoint)}
        for file in set(before) - set(after):  # --etcd: a dead host's claims are gone now
            try:
                after[file] = int(os.getxattr(os.path.join(mountpoint, file), wire.EPOCH))
            except (OSError, ValueError):
                continue
        done = sorted((f, e) for f, e in after.items() if f in before and e != before[f])
        for file, new_epoch in done:
            print(f"{shown(file)}: reclaimed, epoch {new_epoch}")
        if not done:
            print("nothing to reclaim")
        return 0
    failed = 0
    for path in args.files:
        try:
            os.setxattr(path, wire.RECLAIM, b"1")
            epoch = os.getxattr(path, wire.EPOCH).decode()
            print(f"{shown(path)}: reclaimed, epoch {epoch}")
        except OSError as e:
            hint = " (not on a fencefs mount?)" if e.errno in (errno.ENOTSUP, errno.EINVAL) else ""
            print(f"fencefs: {shown(path)}: {e.strerror}{hint}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _claims_of(path: str) -> wire.StatusEntry:
    """A file's claim state as a status entry, from its own attributes."""
    now = time.time()
    try:
        claims = wire.parse_claims(os.getxattr(path, wire.CLAIMS))
        return wire.StatusEntry(
            file=path, version=int(os.getxattr(path, wire.VERSION)),
            epoch=int(os.getxattr(path, wire.EPOCH)),
            policy=os.getxattr(path, wire.POLICY).decode("utf-8", "replace"),
            claims=tuple(wire.StatusClaim(
                identity=c.identity, pid=c.pid, kind=c.kind, version=c.version,
                epoch=c.epoch, lease_left=None if c.lease is None else round(c.lease - now, 3))
                for c in claims))
    except ValueError as e:
        raise UsageError(f"{path}: {e}") from None


def _status_rows(mountpoint: str) -> list[wire.StatusEntry]:
    try:
        raw = os.getxattr(mountpoint, wire.STATUS)
    except OSError as e:
        raise UsageError(f"{mountpoint}: not a fencefs mount ({e.strerror})") from None
    try:
        return wire.parse_status(raw)
    except ValueError as e:
        raise UsageError(f"{mountpoint}: {e}") from None


def _hosts_of(mountpoint: str) -> list[wire.HostEntry]:
    """The hosts of an --etcd mount's cluster; [] on one host."""
    try:
        return wire.parse_hosts(os.getxattr(mountpoint, wire.HOSTS))
    except (OSError, ValueError):
        return []


def cmd_status(args: argparse.Namespace) -> int:
    rows: list[wire.StatusEntry] = []
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
        print(json.dumps([row.as_json() for row in rows], indent=2))
        return 0
    hosts = _hosts_of(args.mountpoint)  # --etcd: every host's claims, with their host
    print(f"{'FILE':32} {'VER':>5} {'EPOCH':>5} {'POLICY':10} {'IDENTITY':20} {'PID':>7} "
          f"{'KIND':5} {'RESTS ON':10} LEASE LEFT" + (" HOST" if hosts else ""))
    for row in rows:
        head = (f"{shown(row.file)[-32:]:32} {row.version:>5} {row.epoch:>5} "
                f"{shown(row.policy):10}")
        if not row.claims:
            print(f"{head} -")
        for claim in row.claims:
            left = claim.lease_left
            lease = "-" if left is None else (f"{left:.1f}s" if left > 0 else "expired")
            if claim.epoch != row.epoch:
                lease = "revoked"
            elif claim.alive is False:
                lease = "host dead"
            rests = f"v{claim.version}/e{claim.epoch}"
            where = f" {shown(claim.host)}" if claim.host is not None else ""
            print(f"{head} {shown(claim.identity)[-20:]:20} {claim.pid:>7} "
                  f"{claim.kind:5} {rests:10} {lease:10}{where}".rstrip())
            head = " " * 55
    if hosts:
        print("hosts: " + ", ".join(
            f"{shown(h.host)} ({'alive' if h.alive else 'dead: lease expired'}"
            f"{', this mount' if h.me else ''})" for h in hosts))
    if not args.files:
        snapcli.print_summary(args.mountpoint)  # the mount's snapshots, one line
    kept = cli_history.kept_line(args.mountpoint)
    if kept:
        print(kept)
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    journal = os.path.join(args.mountpoint, ".fencefs", "journal.jsonl")
    try:
        from fencefs.etcd.journals import journals, merged
        from fencefs.store.journal import read_journal

        meta = os.path.dirname(journal)  # --etcd: every host's journal, merged by revision
        entries = merged(meta) if journals(meta) else read_journal(journal)
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
        detail = " ".join(f"{shown(k)}={shown(v)}" for k, v in entry.items()
                          if k not in ("ts", "event", "file", "identity", "pid"))
        print(f"{when:23} {shown(entry.get('event', '?')):10} "
              f"{shown(entry.get('file', '?'))[-28:]:28} "
              f"{shown(entry.get('identity', '-'))[-20:]:20} "
              f"{shown(entry.get('pid', '-')):>7} {detail}")
    return 0


# -- parser ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fencefs", description="A FUSE filesystem that fences writes to shared files.",
        epilog="fencefs BACKING MOUNTPOINT -o OPTIONS is fencefs mount (the form "
               "mount -t fuse.fencefs and /etc/fstab use).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    m = sub.add_parser("mount", help="mount BACKING on MOUNTPOINT")
    m.add_argument("backing")
    m.add_argument("mountpoint")
    m.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="mount options as in /etc/fstab: durability=none, policy=exclusive, "
                        "allow_other, shared_glob=*.db, ... (docs/guide.md)")
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
    m.add_argument("--lease-ttl", type=duration, default=60.0,
                   help="lease of a write claim, renewed by each write and fsync "
                        "(default 60s; accepts 500ms, 30s, 5m)")
    m.add_argument("--wait", type=duration, default=0.0,
                   help="exclusive policy: how long an open waits for the holder "
                        "before EBUSY (default 0: at once)")
    m.add_argument("--sweep-after", type=duration, default=None,
                   help="reclaim write claims idle (no write/fsync/renew) this long")
    m.add_argument("--shared-glob", action="append", default=[], metavar="PATTERN",
                   help="files matching PATTERN (a name like '*.db', or a path from the "
                        "mount root if it has a '/') get the shared policy unless they "
                        "have their own; repeatable; adds to the default set")
    m.add_argument("--no-default-shared-globs", action="store_true",
                   help="do not apply the default shared set (SQLite's *.db, *.sqlite, "
                        "*.sqlite3 and their -wal, -shm, -journal files)")
    m.add_argument("--etcd", metavar="URLS",
                   help="coordinate across hosts through etcd: comma-separated client URLs "
                        "(docs/multihost.md)")
    m.add_argument("--cluster", metavar="NAME",
                   help="with --etcd: the key prefix of this namespace (default fencefs)")
    m.add_argument("--host-id", metavar="ID",
                   help="with --etcd: this host's name in claims, journals and status "
                        "(default HOSTNAME:MOUNTPOINT)")
    m.add_argument("--etcd-cacert", metavar="FILE", help="with --etcd: CA bundle (https)")
    m.add_argument("--etcd-cert", metavar="FILE", help="with --etcd: client certificate")
    m.add_argument("--etcd-key", metavar="FILE", help="with --etcd: client key")
    m.add_argument("--etcd-user", metavar="USER",
                   help="with --etcd: etcd authentication as USER; the password from "
                        "--etcd-password-file or $FENCEFS_ETCD_PASSWORD")
    m.add_argument("--etcd-password-file", metavar="FILE",
                   help="with --etcd-user: a file whose first line is the password")
    m.add_argument("--etcd-start-timeout", metavar="SECONDS", type=float,
                   help="with --etcd: how long the daemon retries an unreachable etcd "
                        "while it starts (default 30)")
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

    lg = sub.add_parser("log", help="print the journal (with --etcd: every host's, merged "
                                    "by etcd revision)")
    lg.add_argument("mountpoint")
    lg.add_argument("file", nargs="?")
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(func=cmd_log)

    snapcli.add_parser(sub)  # fencefs snapshot create|list|show|delete (snapcli.py)
    cli_history.add_parsers(sub)  # history, restore, gc, stats
    return parser


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other fencefs error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"fencefs: {message} (see {self.prog} --help)\n")


COMMANDS = ("mount", "unmount", "status", "reclaim", "log", "snapshot", "history", "restore",
            "gc", "stats")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        # The mount.fuse3 helper's form: fencefs BACKING MOUNTPOINT -o OPTIONS
        argv.insert(0, "mount")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, cli_history.HistoryUsageError) as e:
        print(f"fencefs: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
