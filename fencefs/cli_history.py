"""The command line of history, restore, retention and metrics.

``fencefs history``, ``restore``, ``gc`` and ``stats``, and the mount
options that bound what a mount keeps (``--keep-versions`` ...) and serve
its metrics (``--metrics``). ``fencefs.cli`` adds them to its parser.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import os
import sys
from typing import Any

from fencefs.client import FenceConflict, Fenced
from fencefs.client_history import NoSuchVersion, NotOnMount, gc, history, restore, stats
from fencefs.metrics import parse_address, quantile
from fencefs.store.retention import Retention, parse_count, parse_duration, parse_size
from fencefs.text import shown as _shown

EXIT_CONFLICT = 75  # EX_TEMPFAIL: a commit landed in between; run again


class HistoryUsageError(Exception):
    """Bad input: one line, exit code 2 (as cli.UsageError)."""


def _arg(parse: Any) -> Any:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__.replace("parse_", "")
    return convert


def _address(text: str) -> tuple[str, int]:
    return parse_address(text)


# -- mount options ---------------------------------------------------------------


def add_mount_options(m: argparse.ArgumentParser) -> None:
    d = Retention()
    g = m.add_argument_group("what the mount keeps (docs/guide.md, History and retention)")
    g.add_argument("--keep-versions", type=_arg(parse_count), default=d.keep_versions,
                   metavar="N", help="retained versions per file (default 20; 0: no history)")
    g.add_argument("--keep-for", type=_arg(parse_duration), default=d.keep_for,
                   metavar="AGE", help="drop retained versions older than AGE "
                                       "(default 7d; 0: no age bound)")
    g.add_argument("--keep-rejected", type=_arg(parse_count), default=d.keep_rejected,
                   metavar="N", help="rejected writes kept, in all (default 2000)")
    g.add_argument("--keep-rejected-bytes", type=_arg(parse_size),
                   default=d.keep_rejected_bytes, metavar="SIZE",
                   help="bytes of rejected writes kept (default 512M)")
    g.add_argument("--keep-rejected-for", type=_arg(parse_duration),
                   default=d.keep_rejected_for, metavar="AGE",
                   help="drop rejected writes older than AGE (default 7d; 0: no age bound)")
    g.add_argument("--keep-snapshots", type=_arg(parse_count), default=d.keep_snapshots,
                   metavar="N", help="snapshots kept; the oldest is dropped first (default 50)")
    g.add_argument("--keep-snapshots-for", type=_arg(parse_duration),
                   default=d.keep_snapshots_for, metavar="AGE",
                   help="drop snapshots older than AGE (default 0: no age bound)")
    g.add_argument("--keep-staging-for", type=_arg(parse_duration),
                   default=d.keep_staging_for, metavar="AGE",
                   help="put away a staging directory (.fencefs/txn/NAME) whose owner has "
                        "been gone this long (default 10m)")
    g.add_argument("--journal-max", type=_arg(parse_size), default=d.journal_max,
                   metavar="SIZE", help="all journal segments together (default 256M)")
    g.add_argument("--metrics", type=_arg(_address), default=None, metavar="ADDR:PORT",
                   help="serve metrics in Prometheus's text format (host defaults to "
                        "127.0.0.1; needs fencefs[metrics])")


def retention_of(args: argparse.Namespace) -> Retention:
    return Retention(keep_versions=args.keep_versions, keep_for=args.keep_for,
                     keep_rejected=args.keep_rejected,
                     keep_rejected_bytes=args.keep_rejected_bytes,
                     keep_rejected_for=args.keep_rejected_for, journal_max=args.journal_max,
                     keep_snapshots=args.keep_snapshots,
                     keep_snapshots_for=args.keep_snapshots_for,
                     keep_staging_for=args.keep_staging_for)


def mount_argv(args: argparse.Namespace) -> list[str]:
    """The options above, for the daemon started in the background."""
    argv = ["--keep-versions", str(args.keep_versions), "--keep-for", repr(args.keep_for),
            "--keep-rejected", str(args.keep_rejected),
            "--keep-rejected-bytes", str(args.keep_rejected_bytes),
            "--keep-rejected-for", repr(args.keep_rejected_for),
            "--journal-max", str(args.journal_max),
            "--keep-snapshots", str(args.keep_snapshots),
            "--keep-snapshots-for", repr(args.keep_snapshots_for),
            "--keep-staging-for", repr(args.keep_staging_for)]
    if args.metrics is not None:
        host, port = args.metrics
        argv += ["--metrics", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    return argv


def check_metrics_available(args: argparse.Namespace) -> str | None:
    """An error line if --metrics was asked for without prometheus_client."""
    if args.metrics is None:
        return None
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return ("--metrics needs the prometheus_client package: "
                "pip install 'fencefs[metrics]'")
    return None


# -- commands --------------------------------------------------------------------------


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def _size(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if abs(n) < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


def cmd_history(args: argparse.Namespace) -> int:
    try:
        h = history(args.file)
    except NotOnMount as e:
        raise HistoryUsageError(str(e)) from None
    except OSError as e:
        raise HistoryUsageError(f"{args.file}: {e.strerror}") from None
    rows: list[dict[str, Any]] = []
    for v in h.versions:
        try:
            digest = v.sha256()
        except OSError:
            digest = None
        rows.append({"version": v.version, "epoch": v.epoch, "size": v.size,
                     "committed": v.committed, "kept": v.kept, "identity": v.identity,
                     "pid": v.pid, "sha256": digest})
    if args.json:
        print(json.dumps({"file": h.path, "version": h.version, "epoch": h.epoch,
                          "exists": h.exists, "versions": rows}, indent=2))
        return 0
    state = (f"version {h.version}, epoch {h.epoch}" if h.exists
             else f"deleted (last version {h.version})" if h.version is not None
             else "not found")
    print(f"{_shown(h.path)}: {state}; {len(rows)} retained version(s)")
    if not rows:
        return 0
    print(f"{'VERSION':>7} {'EPOCH':>5} {'COMMITTED':19} {'REPLACED':19} {'WHO':20} "
          f"{'PID':>7} {'SIZE':>8} SHA256")
    for r in rows:
        print(f"{r['version']:>7} {r['epoch']:>5} {_when(r['committed']):19} "
              f"{_when(r['kept']):19} {_shown(r['identity'] or '?')[-20:]:20} "
              f"{r['pid'] if r['pid'] is not None else '?':>7} {_size(r['size']):>8} "
              f"{(r['sha256'] or '?')[:12]}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    try:
        new = restore(args.file, args.version, retry=args.retry)
    except NoSuchVersion as e:
        raise HistoryUsageError(f"{_shown(args.file)}: no retained version {args.version} "
                                f"(retained: {', '.join(map(str, e.kept[-10:])) or 'none'}); "
                                "nothing changed") from None
    except IsADirectoryError:
        raise HistoryUsageError(f"{_shown(args.file)}: a directory has no versions; "
                                "restore one file at a time") from None
    except NotOnMount as e:
        raise HistoryUsageError(str(e)) from None
    except FenceConflict as e:
        print(f"fencefs: conflict: {_shown(args.file)} moved to version "
              f"{e.current_version} after this command read version {e.rested_version}; "
              "nothing changed. Look again, then run again (or use --retry).",
              file=sys.stderr)
        return EXIT_CONFLICT
    except Fenced as e:
        print(f"fencefs: fenced: {_shown(args.file)} was reclaimed (epoch "
              f"{e.current_epoch}) after this command read it; nothing changed.",
              file=sys.stderr)
        return 1
    except OSError as e:
        hint = " (not a fencefs mount with history?)" if e.errno in (
            errno.ENOTSUP, errno.EINVAL) else ""
        raise HistoryUsageError(f"{_shown(args.file)}: {e.strerror}{hint}") from None
    print(f"{_shown(args.file)}: version {args.version} restored as version {new}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    try:
        result = gc(args.mountpoint, dry_run=args.dry_run)
    except OSError as e:
        raise HistoryUsageError(f"{args.mountpoint}: not a fencefs mount with retention "
                                f"({e.strerror})") from None
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for row in result.get("dropped", []):
        print(f"{row['kind']:9} {verb} {row['dropped']} ({_size(row['bytes'])}"
              f"{', ' + str(row['files']) + ' file(s)' if row.get('files') else ''})")
    return 0


def _label(row: dict[str, Any]) -> str:
    labels = row.get("labels") or {}
    inner = ",".join(f"{k}={_shown(v)}" for k, v in sorted(labels.items()))
    return f"{row['name']}{{{inner}}}" if inner else row["name"]


def cmd_stats(args: argparse.Namespace) -> int:
    try:
        snap = stats(args.mountpoint)
    except OSError as e:
        raise HistoryUsageError(f"{args.mountpoint}: not a fencefs mount with metrics "
                                f"({e.strerror})") from None
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    print(f"up {snap.get('uptime', 0):.0f}s")
    for row in snap.get("counters", []):
        print(f"{_label(row):48} {row['value']:>12g}")
    for row in snap.get("gauges", []):
        value = row["value"]
        shown = _size(value) if row["name"].endswith("bytes") else f"{value:g}"
        print(f"{_label(row):48} {shown:>12}")
    for row in snap.get("histograms", []):
        n = row["count"]
        mean = row["sum"] / n if n else 0.0
        p50, p99 = quantile(row["buckets"], 0.5), quantile(row["buckets"], 0.99)
        print(f"{_label(row):48} {n:>12} mean {mean * 1000:.2f}ms"
              f" p50<={(p50 or 0) * 1000:g}ms p99<={(p99 or 0) * 1000:g}ms")
    return 0


def add_parsers(sub: Any) -> None:
    h = sub.add_parser("history", help="the retained versions of FILE (also a deleted one)")
    h.add_argument("file", metavar="MOUNTPOINT/FILE")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_history)

    r = sub.add_parser("restore", help="make version N of FILE its next version "
                                       "(a fenced commit)")
    r.add_argument("file", metavar="MOUNTPOINT/FILE")
    r.add_argument("--version", "-n", type=_arg(parse_count), required=True, metavar="N")
    r.add_argument("--retry", action="store_true",
                   help="on a conflict, read again and try again")
    r.set_defaults(func=cmd_restore)

    g = sub.add_parser("gc", help="apply the retention bounds now")
    g.add_argument("mountpoint")
    g.add_argument("--dry-run", action="store_true", help="only say what would go")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_gc)

    s = sub.add_parser("stats", help="counters, gauges and latencies of a mount")
    s.add_argument("mountpoint")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)


def kept_line(mountpoint: str) -> str | None:
    """One line on the disk use of .fencefs/, for ``fencefs status``."""
    try:
        snap = stats(mountpoint)
    except (OSError, ValueError):
        return None
    g = {row["name"]: row["value"] for row in snap.get("gauges", []) if not row["labels"]}
    if "journal_bytes" not in g:
        return None
    return (f"kept in {os.path.join(mountpoint, '.fencefs')}: "
            f"{g.get('versions_retained', 0):g} versions ({_size(g.get('versions_bytes', 0))}), "
            f"{g.get('rejected_writes', 0):g} rejected writes "
            f"({_size(g.get('rejected_bytes', 0))}), journal {_size(g['journal_bytes'])}")
