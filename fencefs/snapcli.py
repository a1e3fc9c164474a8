"""``fencefs snapshot create|list|show|delete``: snapshots from the shell.

Thin over the mount's attributes (``fencefs.wire``): ``create`` and
``delete`` set ``user.fencefs.snapshot-create``/``-delete`` on the mount's
root; ``list`` reads ``user.fencefs.snapshots``; ``show`` reads the
snapshot's manifest (``.fencefs/snapshot-meta/NAME.json``, read-only through
the mount). The view itself is ``MOUNTPOINT/.fencefs/snapshots/NAME/``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from typing import Any

from fencefs import client, wire
from fencefs.history import STATS


def add_parser(sub: Any) -> None:
    sp = sub.add_parser("snapshot", help="consistent cuts of the tree (create, list, show, delete)")
    ops = sp.add_subparsers(dest="snapshot_op", required=True, metavar="OP")
    c = ops.add_parser("create", help="cut every file (or those under --path) at one instant")
    c.add_argument("mountpoint")
    c.add_argument("name")
    c.add_argument("--path", default="", help="only the files under DIR (relative to the mount)")
    ls = ops.add_parser("list", help="every snapshot")
    ls.add_argument("mountpoint")
    ls.add_argument("--json", action="store_true")
    sh = ops.add_parser("show", help="a snapshot's files and their versions at the cut")
    sh.add_argument("mountpoint")
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true")
    r = ops.add_parser("restore", help="commit the snapshot's files back, all or none "
                                        "(a transaction resting on what it reads now)")
    r.add_argument("mountpoint")
    r.add_argument("name")
    r.add_argument("--path", default="", help="only the files under DIR")
    d = ops.add_parser("delete", help="delete a snapshot (the files are untouched)")
    d.add_argument("mountpoint")
    d.add_argument("name")
    sp.set_defaults(func=cmd_snapshot)


def print_summary(mountpoint: str) -> None:
    """``fencefs status``'s lines about snapshots (nothing on an older
    daemon): a summary with the bound they count against, then one line per
    snapshot, oldest first (the first to go when the bound is reached)."""
    try:
        snaps = sorted(_list(mountpoint), key=lambda s: float(s.get("created", 0)))
    except (OSError, ValueError):
        return
    if not snaps:
        return  # nothing to say: status stays as it was
    names = ", ".join(str(s.get("name")) for s in snaps[:10])
    more = f" and {len(snaps) - 10} more" if len(snaps) > 10 else ""
    files = sum(int(s.get("files", 0)) for s in snaps)
    bound = ""
    try:
        keep = json.loads(os.getxattr(mountpoint, STATS)).get("retention", {})
        if "keep_snapshots" in keep:
            age = float(keep.get("keep_snapshots_for") or 0)
            bound = (f"; at most {keep['keep_snapshots']}"
                     + (f", for {age / 86400:g}d" if age else "") + ", oldest dropped first")
    except (OSError, ValueError, AttributeError):
        pass
    print(f"snapshots: {len(snaps)} ({names}{more}; {files} files linked{bound})")
    for s in snaps:
        made = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(s.get("created", 0))))
        print(f"  snapshot {str(s.get('name')):24} {made}Z {int(s.get('files', 0)):>8} files "
              f"{int(s.get('bytes', 0)):>12} bytes at the cut"
              + (f"  under {s['under']}" if s.get("under") else ""))


def _fail(message: str) -> int:
    print(f"fencefs: {message}", file=sys.stderr)
    return 1


def _list(mountpoint: str) -> list[dict[str, Any]]:
    raw = json.loads(os.getxattr(mountpoint, wire.SNAPSHOTS))
    return [d for d in raw if isinstance(d, dict)]


def _restore(mnt: str, name: str, under: str) -> int:
    """A multi-file commit of the snapshot's files (those under ``under``):
    each rests on the version this command reads now, so a commit landing
    meanwhile makes it fail with a conflict, and nothing is restored."""
    if "/" in name or name.startswith(".") or ".." in under.split("/"):
        return _fail(f"bad snapshot name or path {name!r} {under!r}")
    view = os.path.join(mnt, wire.SNAPSHOT_VIEW, name)
    base = os.path.join(view, under) if under else view
    if not os.path.isdir(base):
        return _fail(f"{mnt}: no snapshot {name!r}" + (f" with {under!r}" if under else ""))
    tx = client.transaction(mnt)
    count = 0
    for dirpath, _dirs, names in os.walk(base):
        for n in names:
            src = os.path.join(dirpath, n)
            if not os.path.isfile(src) or os.path.islink(src):
                continue
            rel = os.path.relpath(src, view)
            with open(src, "rb") as f:
                data = f.read()
            if tx.read(rel, default=b"") != data:
                tx.write(rel, data)
                count += 1
    try:
        tx.commit()
    except client.FenceError as e:
        return _fail(f"restore {name}: {e.reason}: {', '.join(e.moved) or e.path} moved; "
                     f"nothing restored")
    print(f"{name}: {count} files restored")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    mnt = args.mountpoint
    op = args.snapshot_op
    try:
        if op == "create":
            path = args.path.strip("/")
            os.setxattr(mnt, wire.SNAPSHOT_CREATE, wire.format_snapshot(args.name, path))
            info = next((s for s in _list(mnt) if s.get("name") == args.name), {})
            print(f"{args.name}: {info.get('files', '?')} files"
                  f"{' under ' + path if path else ''}, cut in "
                  f"{float(info.get('seconds', 0)) * 1000:.1f} ms; "
                  f"read them under {os.path.join(mnt, wire.SNAPSHOT_VIEW, args.name)}/")
        elif op == "restore":
            return _restore(mnt, args.name, args.path.strip("/"))
        elif op == "delete":
            os.setxattr(mnt, wire.SNAPSHOT_DELETE, args.name.encode())
            print(f"{args.name}: deleted")
        elif op == "list":
            snaps = _list(mnt)
            if args.json:
                print(json.dumps(snaps))
            for s in snaps if not args.json else []:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(s["created"])))
                print(f"{s['name']}\t{when}\t{s['files']} files\t{s['bytes']} bytes\t"
                      f"{s['under'] or '/'}")
            if not snaps and not args.json:
                print("no snapshots")
        else:
            meta = os.path.join(mnt, ".fencefs", "snapshot-meta", args.name + ".json")
            if "/" in args.name or args.name.startswith("."):
                return _fail(f"bad snapshot name {args.name!r}")
            with open(meta) as f:
                manifest = json.load(f)
            if args.json:
                print(json.dumps(manifest))
                return 0
            print(f"{manifest['name']}: {manifest['files']} files, {manifest['bytes']} bytes, "
                  f"under {manifest['under'] or '/'}")
            for path, (version, epoch) in sorted(manifest.get("versions", {}).items()):
                print(f"  {path}\tversion {version}\tepoch {epoch}")
    except FileNotFoundError:
        return _fail(f"{mnt}: no snapshot {args.name!r}" if op in ("show", "delete")
                     else f"{mnt}: not found")
    except OSError as e:
        why = {errno.EEXIST: "it exists",
               errno.EINVAL: "bad name or path (one name, no '/' or '..'; "
                             "--path a directory inside the mount, not .fencefs/)",
               errno.ENOTSUP: "not a fencefs mount",
               errno.ENODATA: "not a fencefs mount (or an older daemon)",
               errno.ENOTDIR: "--path is not a directory"}
        return _fail(f"snapshot {op} {getattr(args, 'name', '')}: "
                     f"{why.get(e.errno or 0, e.strerror)}")
    return 0
