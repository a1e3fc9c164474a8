"""Running a mount: pyfuse3 on trio, signals, readiness, clean shutdown."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Sequence

import pyfuse3
import trio

from fencefs.etcd.client import EtcdError
from fencefs.etcd.engine import EtcdSettings, check_mount
from fencefs.fuse.identity import mount_id_of
from fencefs.fuse.operations import FenceOperations
from fencefs.metrics import Metrics
from fencefs.store.retention import Retention
from fencefs.wire import mount_at

log = logging.getLogger("fencefs")


class MountFailed(Exception):
    """The mount could not be made; the message is one line naming the cause."""


def mount_options(backing: str, *, allow_other: bool, debug: bool,
                  kernel_options: Sequence[str] = ()) -> set[str]:
    options = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    # libfuse splits options at commas and takes a backslash as an escape
    options.add("fsname=" + backing.replace("\\", "\\\\").replace(",", "\\,"))
    options.add("subtype=fencefs")
    if allow_other:
        options.add("allow_other")
    if debug:
        options.add("debug")
    options.update(kernel_options)  # ro, nosuid, noatime, ... from -o
    return options


def pid_file(backing: str, mountpoint: str | None = None) -> str:
    """The daemon's pid file; across hosts (several daemons share the
    backing's .fencefs/) one per mount point."""
    if mountpoint is None:
        return os.path.join(backing, ".fencefs", "daemon.pid")
    tag = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:12]
    return os.path.join(backing, ".fencefs", f"daemon-{tag}.pid")


def serve(
    backing: str,
    mountpoint: str,
    *,
    allow_other: bool = False,
    debug: bool = False,
    durable: bool = True,
    scope: str = "agent",
    ready_fd: int | None = None,
    max_observations: int = 100_000,
    warm_files: int = 8192,
    upkeep_interval: float = 2.0,
    policy: str = "optimistic",
    lease_ttl: float = 60.0,
    wait: float = 0.0,
    sweep_after: float | None = None,
    shared_globs: Sequence[str] = (),
    kernel_options: Sequence[str] = (),
    lock_backing: bool = True,
    retention: Retention | None = None,
    metrics: tuple[str, int] | None = None,
    etcd: EtcdSettings | None = None,
) -> int:
    """Mount, serve until unmounted or signalled, unmount. Returns exit code.
    Raises MountFailed if the mount cannot be made.

    ``lock_backing``: with the local coordination (the default) one daemon
    serves a backing directory, and a second is refused. A coordination that
    several hosts share (one backing directory on shared storage, one daemon
    per host) passes False."""
    logging.getLogger("pyfuse3").addFilter(_late_reply)
    _raise_fd_limit()
    # Nodes are made with exactly the mode the caller's kernel passed (its
    # umask already applied): the daemon's own umask must not mask it again.
    os.umask(0)
    lock = _lock_backing(backing) if lock_backing and etcd is None else None
    try:
        ops = FenceOperations(backing, durable=durable, scope=scope,
                              max_observations=max_observations, default_policy=policy,
                              lease_ttl=lease_ttl, wait=wait, sweep_after=sweep_after,
                              warm_files=warm_files, shared_globs=shared_globs,
                              retention=retention, etcd=etcd)
        recovered = ops.recover()
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise MountFailed(f"backing directory {backing} is not usable: "
                          f"{e.strerror}{where}") from None
    if etcd is not None:
        reason = trio.run(check_mount, etcd, ops.backing.root, True)
        if reason is not None:
            raise MountFailed(f"cannot mount across hosts: {reason}")
        # this host's drafts from its previous life, before any request
        try:
            mine = trio.run(ops.recover_across_hosts)
        except EtcdError as e:
            raise MountFailed(f"cannot mount across hosts: {e}") from None
        if mine:
            log.warning("put away %d draft(s) left by this host's earlier daemon", mine)
    # (the pid file's name looks at the mount point: before it is mounted)
    pidfile = pid_file(ops.backing.root, mountpoint if etcd is not None else None)
    if recovered:
        log.warning("put away %d draft(s) left by an earlier daemon", recovered)
    exporter = None
    if metrics is not None:  # before the mount: a port in use fails the start
        from fencefs.metrics import serve as serve_metrics

        try:
            exporter = serve_metrics(ops_metrics(ops), *metrics)
        except OSError as e:
            raise MountFailed(f"--metrics {metrics[0]}:{metrics[1]}: {e.strerror}") from None
        log.info("metrics on http://%s:%d/metrics", *exporter.server_address[:2])
    _init_fuse(ops, mountpoint, mount_options(ops.backing.root, allow_other=allow_other,
                                              debug=debug, kernel_options=kernel_options))
    ops.mount_id = mount_id_of(mountpoint)
    with open(os.open(pidfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "w") as f:
        f.write(f"{os.getpid()}\n{os.path.abspath(mountpoint)}\n")
    clean = False
    try:
        failed = trio.run(_main, ops, ready_fd, upkeep_interval)
        if failed is not None:   # (unmounted by the finally below)
            raise MountFailed(failed)
        clean = True
    except MountFailed:
        raise
    except BaseException as exc:  # noqa: BLE001 - report whatever stopped the loop
        if not _only_cancelled(exc):
            log.error("fencefs stopped on an error", exc_info=exc)
    finally:
        if exporter is not None:
            exporter.shutdown()
            exporter.server_close()
        pyfuse3.close(unmount=True)
        ops.history.flush_drops(force=True)  # retention drops not journaled yet
        ops.journal.close()
        try:
            os.unlink(pidfile)
        except OSError:
            pass
        if lock is not None:
            os.close(lock)
    return 0 if clean else 1


def ops_metrics(ops: FenceOperations) -> Metrics:
    found = getattr(ops, "metrics", None)
    return found if isinstance(found, Metrics) else Metrics()


def _lock_backing(backing: str, patience: float = 10.0) -> int:
    """One daemon per backing directory: two would be two coordinators, and
    neither would fence the other's writers (and each would put away the
    other's drafts as orphans). The lock is held until the daemon exits. A
    daemon whose mount is gone but which is still exiting (after a plain
    umount) is waited for, up to ``patience`` seconds."""
    path = os.path.join(backing, ".fencefs", "daemon.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise MountFailed(f"backing directory {backing} is not usable: {e.strerror} "
                          f"({path})") from None
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        try:
            with open(pid_file(backing)) as f:
                pid, where = (f.read().splitlines() + ["?", "?"])[:2]
        except OSError:
            pid, where = "?", "?"
        if time.monotonic() > deadline or mount_at(where) is not None:
            os.close(fd)
            raise MountFailed(f"backing directory {backing} is busy: fencefs daemon {pid} "
                              f"serves it on {where}")
        time.sleep(0.05)


def _init_fuse(ops: FenceOperations, mountpoint: str, options: set[str]) -> None:
    """pyfuse3.init, with what libfuse (or the fusermount3 it runs) prints on
    standard error caught: on failure it becomes the one line of MountFailed
    (libfuse's own words name the cause), on success a log warning."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as said:
        os.dup2(said.fileno(), 2)
        try:
            pyfuse3.init(ops, mountpoint, options)
            failure: BaseException | None = None
        except RuntimeError as e:
            failure = e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        said.seek(0)
        words = [line.strip() for line in said.read().decode(errors="replace").splitlines()
                 if line.strip()]
    if failure is None:
        for line in words:
            log.warning("libfuse: %s", line)
        return
    cause = "; ".join(words) if words else str(failure)
    raise MountFailed(f"could not mount on {mountpoint}: {cause}")


def _raise_fd_limit() -> None:
    """Every open handle holds a descriptor in the daemon: take all the
    descriptors the hard limit allows (soft limits are often 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("could not raise the descriptor limit to %d: %s", hard, e)


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return isinstance(exc, (KeyboardInterrupt, trio.Cancelled))


async def _main(ops: FenceOperations, ready_fd: int | None, upkeep_interval: float
                ) -> str | None:
    """Serve until unmounted; the reason, if the daemon could not start serving."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_fuse, nursery.cancel_scope)
        nursery.start_soon(ops.maintain, upkeep_interval)
        nursery.start_soon(_watch_signals, nursery.cancel_scope)
        if ops.etcd is not None:
            try:   # (its lease: retried within --etcd-start-timeout)
                await nursery.start(ops.etcd.run)
            except EtcdError as e:
                nursery.cancel_scope.cancel()
                return f"cannot serve across hosts: {e}"
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        log.info("fencefs ready")
    return None


async def _serve_fuse(scope: trio.CancelScope) -> None:
    await pyfuse3.main()  # returns once the kernel unmounted us
    scope.cancel()


async def _watch_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            scope.cancel()
            return


def _late_reply(record: logging.LogRecord) -> bool:
    """pyfuse3 logs an error when the kernel refuses a reply with ENOENT: the
    kernel had stopped waiting for it (the caller was interrupted, or the
    mount is going away). Nothing of ours failed, so it is a warning."""
    if record.levelno >= logging.ERROR and "fuse_reply_* failed with" in record.getMessage() \
            and os.strerror(errno.ENOENT) in record.getMessage():
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True
