#!/usr/bin/env python3
"""Power cuts without kernel modules: record, replay, cut, mount, check.

    scripts/power-cut [--workdir DIR] [--rounds N] [--keep] [--verbose]
                      [--reuse] [--drop-syncs GLOB]

1. Mounts a fresh backing directory with the daemon running under
   ``strace -f -y`` from its first system call, and runs a sequence of
   commits through the mount, one step at a time (rewrites closed and
   fsynced, appends, a rename over a file, a truncate by path, a reclaim,
   an unlink, a rename onto a free name, a shared-policy file, a
   transaction, a file in a new directory). Before each step it looks up a
   marker name, so that the step's requests can be found in the trace;
   after each step it records every file's (version, epoch, content).
2. Replays the daemon's writes, truncates, copies, attribute changes,
   creates, renames, links, unlinks and syncs into a model of the backing
   directory, in the order they completed.
3. Cuts the replay before every call that changes something (a power
   loss can land there), and builds the states a disk can hold then:
   what every completed fsync covered is kept; every file's data, every
   file's attributes and every directory's entries changed since (each a
   unit, changed in order) may be lost or kept. For each cut: everything
   lost, everything kept, and each unit alone lost or alone kept.
4. Writes each distinct state into a scratch directory (fingerprints
   translated: a state attribute matches its content when it was written
   for exactly that content) and does what fencefs does at mount
   (``FenceOperations(...).recover()``, then each file's state as a lookup
   loads it), and checks:

   - every file holds a committed version with its own version and epoch
     (no foreign write detected: the content is the one its state
     attribute names, and (version, epoch, content) is a state the run saw
     for that path);
   - every commit acknowledged before the cut is there: its reply to
     /dev/fuse came before the cut, so the path is at that state or a later
     one (a rename or unlink is acknowledged by the next durable step);
   - every acknowledged step is in the recovered journal (G5);
   - a transaction is all or nothing;
   - the recovered journal passes scripts/check-trace.

Prints what it checked; exits 1 naming the first state that fails, 0 when
all pass, 2 when it cannot run (no strace, no FUSE).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

MARK = ".power-cut-step-"
SYSCALLS = ("open,openat,openat2,creat,close,read,write,pwrite64,writev,ftruncate,truncate,"
            "copy_file_range,fsync,fdatasync,syncfs,sync,rename,renameat,renameat2,link,"
            "linkat,unlink,unlinkat,mkdir,mkdirat,rmdir,setxattr,fsetxattr,lsetxattr,"
            "removexattr,fremovexattr,lremovexattr")
STATE = "user.fencefs.state"
# FUSE opcodes whose reply acknowledges a durable step.
FLUSH, FSYNC, SETXATTR, SETATTR, RENAME, UNLINK = 25, 20, 21, 4, 12, 10


class Failure(Exception):
    pass


# -- 1. the run ---------------------------------------------------------------------


@dataclass
class Step:
    n: int
    what: str
    ack: tuple[int, ...]  # opcodes whose reply makes it durable; () for a namespace change
    paths: list[str]  # the paths it changes
    txn: bool = False
    shared: bool = False
    start: int = 0  # trace positions, filled from the markers
    done: int = 0
    acked_at: int | None = None


Snapshot = dict[str, tuple[int, int, str] | None]  # path -> (version, epoch, sha256) or gone


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def look(mnt: Path, paths: list[str]) -> Snapshot:
    out: Snapshot = {}
    for p in paths:
        full = mnt / p
        try:
            v = int(os.getxattr(full, "user.fencefs.version"))
            e = int(os.getxattr(full, "user.fencefs.epoch"))
            out[p] = (v, e, sha(full.read_bytes()))
        except FileNotFoundError:
            out[p] = None
    return out


def workload(mnt: Path, rounds: int) -> list[tuple[Step, Callable[[], None]]]:
    """The steps, each a function run between two markers."""
    steps: list[tuple[Step, Callable[[], None]]] = []

    def add(what: str, ack: tuple[int, ...], paths: list[str], fn: Callable[[], None],
            **kw: Any) -> None:
        steps.append((Step(len(steps), what, ack, paths, **kw), fn))

    def write(name: str, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
              sync: bool = False) -> Callable[[], None]:
        def fn() -> None:
            fd = os.open(mnt / name, flags, 0o644)
            try:
                os.write(fd, data)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        return fn

    def reclaim(name: str) -> Callable[[], None]:
        return lambda: os.setxattr(mnt / name, "user.fencefs.reclaim", b"1")

    def txn(files: dict[str, bytes]) -> Callable[[], None]:
        def fn() -> None:
            from fencefs import client

            with client.transaction(mnt) as tx:
                for name, data in files.items():
                    tx.write(name, data)
        return fn

    append = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    add("create plan.md", (FLUSH,), ["plan.md"], write("plan.md", b"plan v1\n"))
    for r in range(rounds):
        add("rewrite plan.md, close", (FLUSH,), ["plan.md"],
            write("plan.md", f"plan r{r} closed\n".encode()))
        add("rewrite plan.md, fsync", (FSYNC,), ["plan.md"],
            write("plan.md", f"plan r{r} fsynced\n".encode(), sync=True))
        add("append to log.txt", (FLUSH,), [f"log{r}.txt"],
            write(f"log{r}.txt", f"line r{r}\n".encode(), append))
        add("append again", (FLUSH,), [f"log{r}.txt"],
            write(f"log{r}.txt", f"more r{r}\n".encode(), append))
        add("write plan.tmp", (FLUSH,), ["plan.tmp"],
            write("plan.tmp", f"plan r{r} by rename\n".encode()))
        add("rename plan.tmp over plan.md", (), ["plan.md", "plan.tmp"],
            lambda: os.rename(mnt / "plan.tmp", mnt / "plan.md"))
        add("truncate plan.md by path", (SETATTR,), ["plan.md"],
            lambda: os.truncate(mnt / "plan.md", 4))
        add("reclaim plan.md", (SETXATTR,), ["plan.md"], reclaim("plan.md"))
        add("rewrite plan.md after the reclaim", (FLUSH,), ["plan.md"],
            write("plan.md", f"plan r{r} after reclaim\n".encode()))
        add("unlink log", (), [f"log{r}.txt"], lambda r=r: os.unlink(mnt / f"log{r}.txt"))
        add("write notes.txt", (FLUSH,), [f"notes{r}.txt"],
            write(f"notes{r}.txt", f"notes r{r}\n".encode()))
        add("rename notes onto a free name", (), [f"notes{r}.txt", f"moved{r}.txt"],
            lambda r=r: os.rename(mnt / f"notes{r}.txt", mnt / f"moved{r}.txt"))
        add("shared file: write and fsync", (FSYNC,), ["state.db"],
            write("state.db", f"page r{r}".encode(), os.O_RDWR | os.O_CREAT, sync=True),
            shared=True)
        add("transaction: plan.md and a.md", (SETXATTR,), ["plan.md", "a.md"],
            txn({"plan.md": f"plan r{r} by txn\n".encode(),
                 "a.md": f"a r{r} by txn\n".encode()}), txn=True)
        add("file in a new directory", (FLUSH,), [f"sub{r}/x.md"],
            lambda r=r: (os.makedirs(mnt / f"sub{r}", exist_ok=True),
                         write(f"sub{r}/x.md", f"x r{r}\n".encode())())[-1])
    return steps


def run(work: Path, rounds: int, verbose: bool) -> tuple[list[Step], list[Snapshot], Path, Path]:
    from fencefs import wire

    backing, mnt = work / "backing", work / "mnt"
    backing.mkdir()
    mnt.mkdir()
    trace = work / "trace"
    log = work / "daemon.log"
    daemon = subprocess.Popen(
        ["strace", "-f", "-y", "-xx", "-s", "1048576", "-o", str(trace), "-e",
         f"trace={SYSCALLS}", sys.executable, "-m", "fencefs.cli", "mount", "--foreground",
         "--log-file", str(log), "--upkeep-interval", "3600", str(backing), str(mnt)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        cwd=str(REPO))
    try:
        deadline = time.monotonic() + 60
        while (found := wire.mount_at(str(mnt))) is None or found.fstype != wire.FSTYPE:
            if daemon.poll() is not None:
                raise Failure(f"the daemon died at start: {daemon.stderr.read().decode()}"
                              if daemon.stderr else "the daemon died at start")
            if time.monotonic() > deadline:
                raise Failure("no mount within 60 s")
            time.sleep(0.05)
        steps = workload(mnt, rounds)
        every = sorted({p for s, _ in steps for p in s.paths})
        snapshots = [look(mnt, every)]  # before any step: nothing
        for step, fn in steps:
            os.path.exists(mnt / f"{MARK}{step.n}")
            fn()
            os.path.exists(mnt / f"{MARK}{step.n}-done")
            snapshots.append(look(mnt, every))
            if verbose:
                print(f"  step {step.n}: {step.what}")
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        if daemon.stderr:
            daemon.stderr.close()
    return [s for s, _ in steps], snapshots, trace, backing


# -- 2. the trace ---------------------------------------------------------------------


@dataclass
class Call:
    name: str
    args: list[str]
    ret: str
    entry: int  # line positions: where the call started and where it ended
    exit: int


_HEX = re.compile(r"\\x([0-9a-f]{2})")


def unhex(s: str) -> bytes:
    return bytes(int(h, 16) for h in _HEX.findall(s)) if s else b""


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"(?:\.\.\.)?')


def split_args(s: str) -> list[str]:
    """Top-level arguments (quoted strings kept whole)."""
    strings: list[str] = []

    def hide(m: re.Match[str]) -> str:
        strings.append(m.group(0))
        return f"\0{len(strings) - 1}\0"

    short = _QUOTED.sub(hide, s)
    out, depth, cur = [], 0, []
    for c in short:
        if c in "([{<":
            depth += 1
        elif c in ")]}>":
            depth -= 1
        elif c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(c)
    if cur:
        out.append("".join(cur).strip())
    return [re.sub(r"\0(\d+)\0", lambda m: strings[int(m.group(1))], a) for a in out]


def parse(text: str) -> list[Call]:
    calls: list[Call] = []
    pending: dict[str, tuple[str, str, int]] = {}
    line_re = re.compile(r"^(\d+)\s+(.*)$")
    for pos, line in enumerate(text.splitlines()):
        m = line_re.match(line)
        if not m:
            continue
        pid, rest = m.groups()
        if rest.endswith("<unfinished ...>"):
            c = re.match(r"(\w+)\((.*?) ?<unfinished \.\.\.>$", rest)
            if c:
                pending[pid] = (c.group(1), c.group(2), pos)
            continue
        r = re.match(r"<\.\.\. (\w+) resumed>(.*)\) += (.*)$", rest)
        if r:
            name, head, entry = pending.pop(pid, (r.group(1), "", pos))
            calls.append(Call(name, split_args(head + r.group(2)), r.group(3), entry, pos))
            continue
        c = re.match(r"(\w+)\((.*)\) += (.*)$", rest)
        if c:
            calls.append(Call(c.group(1), split_args(c.group(2)), c.group(3), pos, pos))
    return calls


def fd_of(arg: str) -> tuple[int | None, str | None]:
    """(fd, path) of an argument: ``5</path>``, ``AT_FDCWD``."""
    m = re.match(r"^(-?\d+)(?:<(.*)>)?$", arg)
    if not m:
        return None, None
    return int(m.group(1)), unhex(m.group(2)).decode("utf-8", "surrogateescape") \
        if m.group(2) else None


def string(arg: str) -> bytes:
    if arg.endswith("..."):
        raise Failure("strace cut a string short: raise -s")
    return unhex(arg[1:-1]) if arg.startswith('"') else b""


# -- 3. the model --------------------------------------------------------------------


@dataclass
class Node:
    kind: str  # "f" or "d"
    data: bytearray = field(default_factory=bytearray)
    xattrs: dict[str, bytes] = field(default_factory=dict)
    entries: dict[str, int] = field(default_factory=dict)
    gen: int = 0  # data changes applied
    state_gen: int | None = None  # the gen its state attribute was written for


World = dict[int, Node]
Apply = Callable[[World], None]


Unit = tuple[str, int]  # ("d", ino) data, ("x", ino) attributes, ("n", dir) entries


@dataclass
class Op:
    seq: int  # where it completed
    units: tuple[Unit, ...]  # a rename: both directories (it is atomic: in both or neither)
    apply: Apply


@dataclass
class Sync:
    entry: int
    exit: int
    units: list[tuple[str, int]] | None  # None: every unit (syncfs)


class Replay:
    """The daemon's calls applied to a model of the backing directory."""

    def __init__(self, backing: str, drop: str | None = None) -> None:
        self.root = os.path.realpath(backing)
        self.drop = drop  # a glob: fsyncs of the paths it matches are left out
        self.state_ino: dict[int, int] = {}  # the inode number its first state names
        self.world: World = {0: Node("d")}
        self.kinds: dict[int, str] = {0: "d"}
        self.next_ino = 1
        self.fds: dict[int, tuple[int, bool, int]] = {}  # fd -> (ino, append, position)
        self.ops: list[Op] = []
        self.syncs: list[Sync] = []

    # resolution in the volatile world
    def rel(self, path: str | None) -> str | None:
        if path is None or path.endswith(" (deleted)"):
            return None
        if path == self.root:
            return ""
        if path.startswith(self.root + "/"):
            return path[len(self.root) + 1:]
        return None

    def lookup(self, rel: str) -> int | None:
        ino = 0
        for name in [n for n in rel.split("/") if n]:
            node = self.world.get(ino)
            if node is None or node.kind != "d" or name not in node.entries:
                return None
            ino = node.entries[name]
        return ino

    def parent(self, rel: str) -> tuple[int | None, str]:
        head, _, name = rel.rpartition("/")
        return self.lookup(head), name

    def at(self, dirarg: str, namearg: str) -> str | None:
        """The backing-relative path of an ``*at`` call's (dirfd, name)."""
        name = string(namearg).decode("utf-8", "surrogateescape")
        if name.startswith("/"):
            return self.rel(os.path.normpath(name))
        fd, path = fd_of(dirarg)
        if dirarg == "AT_FDCWD":
            path = os.getcwd()
        base = self.rel(path)
        if base is None:
            return None
        return f"{base}/{name}" if base else name

    def file_ino(self, arg: str) -> int | None:
        fd, path = fd_of(arg)
        rel = self.rel(path)
        if rel is not None:
            return self.lookup(rel)
        if fd is not None and fd in self.fds and path is not None \
                and path.startswith(self.root + "/"):
            return self.fds[fd][0]  # unlinked meanwhile
        return None

    # recording
    def op(self, seq: int, unit: Unit | tuple[Unit, ...], apply: Apply) -> None:
        units = unit if isinstance(unit[0], tuple) else (unit,)
        self.ops.append(Op(seq, units, apply))  # type: ignore[arg-type]
        apply(self.world)

    def new_node(self, kind: str) -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.kinds[ino] = kind
        self.world[ino] = Node(kind)
        return ino

    def link(self, seq: int, rel: str, ino: int) -> None:
        d, name = self.parent(rel)
        if d is None:
            return

        def apply(w: World, d: int = d, name: str = name, ino: int = ino) -> None:
            w.setdefault(d, Node("d")).entries[name] = ino
        self.op(seq, ("n", d), apply)

    def unlink(self, seq: int, rel: str) -> int | None:
        d, name = self.parent(rel)
        if d is None or name not in self.world[d].entries:
            return None
        ino = self.world[d].entries[name]

        def apply(w: World, d: int = d, name: str = name) -> None:
            w.setdefault(d, Node("d")).entries.pop(name, None)
        self.op(seq, ("n", d), apply)
        return ino

    def rename(self, seq: int, src: str, dst: str) -> None:
        (sd, sname), (dd, dname) = self.parent(src), self.parent(dst)
        if sd is None or dd is None or sname not in self.world[sd].entries:
            return
        ino = self.world[sd].entries[sname]

        def apply(w: World) -> None:
            w.setdefault(sd, Node("d")).entries.pop(sname, None)
            w.setdefault(dd, Node("d")).entries[dname] = ino
        self.op(seq, (("n", sd), ("n", dd)), apply)

    def data(self, seq: int, ino: int, change: Callable[[Node], None]) -> None:
        def apply(w: World) -> None:
            node = w.setdefault(ino, Node(self.kinds[ino]))
            change(node)
            node.gen += 1
        self.op(seq, ("d", ino), apply)

    def write_at(self, seq: int, ino: int, offset: int, buf: bytes) -> None:
        def change(node: Node) -> None:
            end = offset + len(buf)
            if len(node.data) < offset:
                node.data.extend(b"\0" * (offset - len(node.data)))
            node.data[offset:end] = buf
        self.data(seq, ino, change)

    def truncate(self, seq: int, ino: int, size: int) -> None:
        def change(node: Node) -> None:
            if size < len(node.data):
                del node.data[size:]
            else:
                node.data.extend(b"\0" * (size - len(node.data)))
        self.data(seq, ino, change)

    def xattr(self, seq: int, ino: int, name: str, value: bytes | None) -> None:
        gen = self.world[ino].gen  # the content it was written for
        if name == STATE and value is not None:
            # A state names its inode: one that names another inode than the
            # first state written on this one never matches (as on the disk).
            try:
                named = int(json.loads(value)["ino"])
            except (ValueError, KeyError, TypeError):
                named = -1
            if self.state_ino.setdefault(ino, named) != named:
                gen = -1

        def apply(w: World) -> None:
            node = w.setdefault(ino, Node(self.kinds[ino]))
            if value is None:
                node.xattrs.pop(name, None)
            else:
                node.xattrs[name] = value
                if name == STATE:
                    node.state_gen = gen
        self.op(seq, ("x", ino), apply)

    def feed(self, c: Call) -> None:
        ok = not c.ret.startswith("-1") and not c.ret.startswith("?")
        a, seq = c.args, c.exit
        n = c.name
        if n == "close" and a:
            fd, _ = fd_of(a[0])
            self.fds.pop(fd, None)  # type: ignore[arg-type]
        if not ok:
            return
        if n in ("open", "openat", "openat2", "creat"):
            self.opened(c)
        elif n in ("write", "pwrite64"):
            ino = self.file_ino(a[0])
            fd, _ = fd_of(a[0])
            if ino is None or self.kinds.get(ino) != "f":
                return
            buf = string(a[1])[:int(c.ret.split()[0])]
            if n == "pwrite64":
                offset = int(a[3])
            else:
                known = self.fds.get(fd) if fd is not None else None
                append = known[1] if known else True
                offset = len(self.world[ino].data) if append else (known[2] if known else 0)
                if known:
                    self.fds[fd] = (known[0], known[1], offset + len(buf))  # type: ignore[index]
            self.write_at(seq, ino, offset, buf)
        elif n == "ftruncate" or n == "truncate":
            ino = self.file_ino(a[0]) if n == "ftruncate" else self.path_ino(a[0])
            if ino is not None:
                self.truncate(seq, ino, int(a[1]))
        elif n == "copy_file_range":
            src, dst = self.file_ino(a[0]), self.file_ino(a[2])
            count = int(c.ret.split()[0])
            if src is None or dst is None or count <= 0:
                return
            off_in = int(a[1].strip("[]").split()[0])
            off_out = int(a[3].strip("[]").split()[0])
            chunk = bytes(self.world[src].data[off_in:off_in + count])
            self.write_at(seq, dst, off_out, chunk)
        elif n in ("fsetxattr", "setxattr", "lsetxattr", "fremovexattr", "removexattr",
                   "lremovexattr"):
            ino = self.file_ino(a[0]) if n.startswith("f") else self.path_ino(a[0])
            if ino is None:
                return
            name = string(a[1]).decode()
            value = string(a[2])[:int(a[3])] if "set" in n else None
            self.xattr(seq, ino, name, value)
        elif n in ("rename", "renameat", "renameat2"):
            if n == "rename":
                src, dst = self.path_rel(a[0]), self.path_rel(a[1])
            else:
                src, dst = self.at(a[0], a[1]), self.at(a[2], a[3])
            if src is None or dst is None:
                return
            self.rename(seq, src, dst)
        elif n in ("link", "linkat"):
            src = self.path_rel(a[0]) if n == "link" else self.at(a[0], a[1])
            dst = self.path_rel(a[1]) if n == "link" else self.at(a[2], a[3])
            ino = self.lookup(src) if src is not None else None
            if ino is not None and dst is not None:
                self.link(seq, dst, ino)
        elif n in ("unlink", "unlinkat", "rmdir"):
            rel = self.path_rel(a[0]) if n != "unlinkat" else self.at(a[0], a[1])
            if rel is not None:
                self.unlink(seq, rel)
        elif n in ("mkdir", "mkdirat"):
            rel = self.path_rel(a[0]) if n == "mkdir" else self.at(a[0], a[1])
            if rel is not None:
                self.link(seq, rel, self.new_node("d"))
        elif n in ("fsync", "fdatasync"):
            ino = self.file_ino(a[0])
            if ino is None or (self.drop and fnmatch.fnmatch(
                    self.rel(fd_of(a[0])[1]) or "", self.drop)):
                return
            kind = self.kinds[ino]
            units = [("n", ino)] if kind == "d" else [("d", ino)]
            if kind == "f" and n == "fsync":
                units.append(("x", ino))
            self.syncs.append(Sync(c.entry, c.exit, units))
        elif n in ("syncfs", "sync"):
            self.syncs.append(Sync(c.entry, c.exit, None))

    def path_rel(self, arg: str) -> str | None:
        return self.rel(os.path.normpath(string(arg).decode("utf-8", "surrogateescape")))

    def path_ino(self, arg: str) -> int | None:
        raw = string(arg).decode("utf-8", "surrogateescape")
        m = re.match(r"^/proc/self/fd/(\d+)$", raw)
        if m and int(m.group(1)) in self.fds:
            return self.fds[int(m.group(1))][0]
        rel = self.path_rel(arg)
        return self.lookup(rel) if rel is not None else None

    def opened(self, c: Call) -> None:
        fd, path = fd_of(c.ret.split(" ")[0] if "<" not in c.ret else c.ret)
        rel = self.rel(path)
        if fd is None:
            return
        if rel is None:
            self.fds.pop(fd, None)
            return
        flags = next((x for x in c.args if "O_" in x), "")
        ino = self.lookup(rel)
        if ino is None:
            if "O_CREAT" not in flags:
                return
            ino = self.new_node("f")
            self.link(c.exit, rel, ino)
        writable = "O_WRONLY" in flags or "O_RDWR" in flags
        if writable and "O_TRUNC" in flags and self.world[ino].data:
            self.truncate(c.exit, ino, 0)
        self.fds[fd] = (ino, "O_APPEND" in flags, 0)


# -- 4. cuts -------------------------------------------------------------------------


def crash_world(ops: list[Op], keep: dict[Unit, int], upto: int) -> World:
    """The ops before ``upto``: each unit's first ``keep[unit]`` of them (an
    op of two units, a rename, when either keeps it)."""
    world: World = {0: Node("d")}
    counts: dict[Unit, int] = {}
    for op in ops:
        if op.seq >= upto:
            break
        applied = False
        for unit in op.units:
            i = counts.get(unit, 0)
            counts[unit] = i + 1
            applied = applied or i < keep.get(unit, 1 << 60)
        if applied:
            op.apply(world)
    return world


def cut_variants(ops: list[Op], syncs: list[Sync], upto: int) -> list[dict[Unit, int]]:
    """Per unit, how many of its changes a power cut at ``upto`` keeps:
    those a completed sync covered, and then none or all of the others."""
    seqs: dict[Unit, list[int]] = {}
    for op in ops:
        if op.seq >= upto:
            break
        for unit in op.units:
            seqs.setdefault(unit, []).append(op.seq)
    done = [s for s in syncs if s.exit < upto]
    everything = max((s.entry for s in done if s.units is None), default=-1)
    last: dict[Unit, int] = {}
    for s in done:
        for unit in s.units or ():
            last[unit] = max(last.get(unit, -1), s.entry)
    covered, total = {}, {}
    for unit, at in seqs.items():
        edge = max(last.get(unit, -1), everything)
        covered[unit] = sum(1 for x in at if x < edge)
        total[unit] = len(at)
    loose = [u for u in total if covered[u] < total[u]]
    lost = {u: covered[u] for u in loose}
    kept = {u: total[u] for u in loose}
    variants = [lost, kept]
    for u in loose:
        variants.append({**lost, u: total[u]})
        variants.append({**kept, u: covered[u]})
    return variants


def digest(world: World) -> str:
    h = hashlib.sha256()

    def walk(ino: int, prefix: str) -> None:
        node = world.get(ino)
        if node is None:
            return
        for name in sorted(node.entries):
            child = node.entries[name]
            c = world.get(child)
            h.update(f"{prefix}{name}:{child}:".encode())
            if c is None:
                continue
            if c.kind == "d":
                walk(child, f"{prefix}{name}/")
            else:
                h.update(bytes(c.data))
                h.update(repr(sorted(c.xattrs.items())).encode())
                h.update(repr((c.gen, c.state_gen)).encode())
    walk(0, "")
    return h.hexdigest()


def materialize(world: World, dest: Path) -> None:
    made: dict[int, str] = {}
    dest.mkdir()

    def walk(ino: int, path: Path) -> None:
        for name, child in sorted(world[ino].entries.items()):
            node = world.get(child)
            if node is None:
                continue
            target = path / name
            if node.kind == "d":
                target.mkdir()
                walk(child, target)
            elif child in made:
                os.link(made[child], target)
            else:
                target.write_bytes(bytes(node.data))
                st = os.stat(target)
                for key, value in node.xattrs.items():
                    if key == STATE:
                        value = translate(value, st, node.state_gen == node.gen)
                    os.setxattr(target, key, value)
                made[child] = str(target)
    walk(0, dest)


def translate(raw: bytes, st: os.stat_result, matches: bool) -> bytes:
    """The state attribute, its fingerprint made this copy's own when it was
    written for exactly this content (and made not to match otherwise)."""
    try:
        state = json.loads(raw)
    except ValueError:
        return raw
    state["ino"] = st.st_ino
    state["mtime"] = st.st_mtime_ns if matches else st.st_mtime_ns - 1
    return json.dumps(state, separators=(",", ":")).encode()


# -- 5. mount and check ----------------------------------------------------------------


Seen = dict[str, tuple[int, int, str] | None]
FOREIGN = "foreign:"  # a key of Seen: fencefs found this path's content foreign
JOURNALED = "journaled:"  # a key of Seen: the recovered journal records this


def mount_view(backing: Path, paths: list[str]) -> tuple[Seen, list[str]]:
    """What fencefs makes of a backing directory at mount: recovery, then
    each path's state as a lookup loads it. Returns the states and the
    problems it met (a foreign write, a failed recovery, a bad journal)."""
    from check_trace import check_journal

    from fencefs.fuse.operations import FenceOperations

    before = set(os.listdir("/proc/self/fd"))
    problems: list[str] = []
    seen: Seen = {}
    try:
        ops = FenceOperations(str(backing), durable=False)
        try:
            ops.recover()
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            problems.append(f"recovery failed: {e!r}")
            return seen, problems
        for p in paths:
            try:
                st = os.lstat(backing / p)
            except (FileNotFoundError, NotADirectoryError):
                seen[p] = None
                continue
            file = ops.files.file(p, st)
            seen[p] = (file.version, file.epoch, sha((backing / p).read_bytes()))
        ops.journal.close()
        journal = backing / ".fencefs" / "journal.jsonl"
        from fencefs.store.journal import read_journal

        for e in read_journal(str(journal)):
            for key in journaled(e):
                seen[key] = None
        bad = check_journal(str(journal))
        if bad is not None and bad.rule == "VersionMonotonic" and "skips" in bad.what:
            # Not acknowledged (the acknowledged ones are checked by
            # ``unjournaled``): a commit reached the disk, its journal line
            # (fsynced after the rename, with the directory) did not.
            KNOWN["a commit not yet acknowledged reached the disk without its journal line "
                  "(fsynced after the rename): the recovered journal skips its version"] += 1
        elif bad is not None:
            problems.append(f"check-trace: line {bad.line}: {bad.rule}: {bad.what}")
    finally:
        for fd in set(os.listdir("/proc/self/fd")) - before:
            try:
                os.close(int(fd))
            except OSError:
                pass
    return seen, problems


def journaled(e: dict[str, Any]) -> list[str]:
    """What a journal record says happened, as keys of Seen."""
    kind, file = e.get("event"), str(e.get("file"))
    if kind == "foreign":
        return [FOREIGN + file]
    if kind == "commit":
        keys = [f"{JOURNALED}v:{file}:{e.get('new_version')}"]
        if e.get("op") == "unlink":
            keys.append(f"{JOURNALED}gone:{file}")
        if e.get("op") == "rename":
            keys.append(f"{JOURNALED}gone:{e.get('source')}")
        return keys
    if kind == "txn-intent":
        return [f"{JOURNALED}v:{m.get('file')}:{m.get('version')}"
                for m in e.get("members", []) if not m.get("delete")]
    if kind == "reclaim":
        return [f"{JOURNALED}e:{file}:{e.get('new_epoch')}"]
    if kind == "rename":
        return [f"{JOURNALED}gone:{e.get('source')}", f"{JOURNALED}moved:{file}"]
    return []


def unjournaled(seen: Seen, steps: list[Step], snaps: list[Snapshot], upto: int) -> list[str]:
    """The acknowledged steps whose changes the recovered journal lacks (G5)."""
    problems = []
    for s in steps:
        if s.acked_at is None or s.acked_at >= upto:
            continue
        before, after = snaps[s.n], snaps[s.n + 1]
        for p in s.paths:
            old, new = before[p], after[p]
            if old == new:
                continue
            if new is None:
                wanted = [f"gone:{p}"]
            elif old is None or new[0] != old[0]:
                wanted = [f"v:{p}:{new[0]}", f"moved:{p}"]
            else:
                wanted = [f"e:{p}:{new[1]}"]
            if not any(JOURNALED + w in seen for w in wanted):
                problems.append(f"step {s.n} ({s.what}), acknowledged before the cut: the "
                                f"journal does not record it ({' or '.join(wanted)})")
    return problems


def judge(seen: Seen, steps: list[Step], snaps: list[Snapshot], upto: int) -> list[str]:
    """Is what fencefs serves after a cut at ``upto`` allowed?"""
    started = [s.n for s in steps if s.start < upto]
    last = started[-1] if started else -1
    acked = [s.n for s in steps if s.acked_at is not None and s.acked_at < upto]
    floor = acked[-1] + 1 if acked else 0  # snapshots index: after step n is n + 1
    allowed = range(floor, last + 2)
    problems = []

    def in_place_in_flight(p: str) -> bool:  # in-place writes are not atomic, by design
        return any(steps[i - 1].shared and p in steps[i - 1].paths for i in allowed if i > 0)

    problems += unjournaled(seen, steps, snaps, upto)
    for p, got in seen.items():
        if p.startswith(JOURNALED):
            continue
        if p.startswith(FOREIGN):
            if not in_place_in_flight(p[len(FOREIGN):]):
                problems.append(f"{p[len(FOREIGN):]}: its content is not the one its state "
                                "attribute names (fencefs adopted it as a foreign write)")
            continue
        choices = {snaps[i][p] for i in allowed}
        if got in choices:
            continue
        if in_place_in_flight(p):
            continue
        if got is not None and moved_back(p, got, steps, snaps, allowed):
            KNOWN["a rename over a file that the cut undid: the moved file, under its old "
                  "name, carries the version and epoch it was to get at the new name"] += 1
            continue
        problems.append(f"{p} is {got}, but after the last acknowledged step "
                        f"({acked[-1] if acked else '-'}) it may only be one of "
                        f"{sorted(map(str, choices))}")
    for s in steps:  # all or nothing
        if s.txn and s.n <= last:
            before, after = snaps[s.n], snaps[s.n + 1]
            sides = {("old" if seen.get(p) == before[p] else "new" if seen.get(p) == after[p]
                      else "?")
                     for p in s.paths if before[p] != after[p]}
            if "old" in sides and "new" in sides:
                problems.append(f"transaction of step {s.n} half installed: "
                                f"{ {p: seen[p] for p in s.paths} }")
    return problems


KNOWN: Counter[str] = Counter()  # known gaps met (printed, not failed)


def moved_back(p: str, got: tuple[int, int, str], steps: list[Step], snaps: list[Snapshot],
               allowed: range) -> bool:
    """``p`` is the source of a rename over a file, still at its own path
    with its own content but with the state of the rename's target after
    the rename (a crash between the moved file's new state reaching the
    disk and the rename reaching it)."""
    for i in allowed:
        s = steps[i - 1] if i > 0 else None
        if s is None or s.txn or len(s.paths) != 2 or s.ack:
            continue
        target, source = s.paths
        before, after = snaps[i - 1], snaps[i]
        if source != p or after[source] is not None or before[source] is None:
            continue
        new = after[target]
        if new is not None and got == (new[0], new[1], before[source][2]):
            return True
    return False


def mark_steps(calls: list[Call], steps: list[Step]) -> None:
    marks: dict[str, int] = {}
    requests: list[tuple[int, int, int]] = []  # (position, opcode, unique)
    replies: dict[int, int] = {}
    for c in calls:
        if not c.args or fd_of(c.args[0])[1] != "/dev/fuse":
            continue
        if c.name == "read":
            raw = string(c.args[1])
            if len(raw) >= 16:
                requests.append((c.exit, int.from_bytes(raw[4:8], "little"),
                                 int.from_bytes(raw[8:16], "little")))
            i = raw.find(MARK.encode())
            if i >= 0:
                name = raw[i:].split(b"\0", 1)[0].decode()
                marks.setdefault(name, c.exit)
        elif c.name == "writev":
            m = re.search(r'"((?:\\x[0-9a-f]{2}){16})', c.args[1])
            if m:
                raw = unhex(m.group(1))
                replies.setdefault(int.from_bytes(raw[8:16], "little"), c.exit)
    for s in steps:
        try:
            s.start, s.done = marks[f"{MARK}{s.n}"], marks[f"{MARK}{s.n}-done"]
        except KeyError:
            raise Failure(f"step {s.n}'s markers are not in the trace") from None
        acks = [replies.get(u) for pos, op, u in requests
                if s.start < pos < s.done and op in s.ack]
        acks = [a for a in acks if a is not None]
        s.acked_at = min(acks) if acks else None
        if s.ack and s.acked_at is None:
            raise Failure(f"step {s.n} ({s.what}): no acknowledging reply in the trace")
    # A namespace change is acknowledged by the next durable step.
    for s in steps:
        if not s.ack:
            later = [t.acked_at for t in steps[s.n + 1:] if t.ack and t.acked_at is not None]
            s.acked_at = later[0] if later else None


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="power-cut", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, help="where to work (default: a temporary dir)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the step sequence")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--reuse", action="store_true",
                    help="check the run kept in --workdir again (no new run)")
    ap.add_argument("--drop-syncs", metavar="GLOB",
                    help="replay as if the fsyncs of these paths (relative to the backing "
                         "directory) never happened: shows the check failing")
    args = ap.parse_args(argv)
    if shutil.which("strace") is None or not os.path.exists("/dev/fuse"):
        print("power-cut: needs strace and /dev/fuse", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fencefs-power-cut-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return check(work, args.rounds, args.verbose, args.reuse, args.drop_syncs)
    except Failure as e:
        print(f"power-cut: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"power-cut: kept {work}")


def scratch_dir(work: Path) -> Path:
    """Where cut states are written: memory (tmpfs) if it keeps user
    attributes (no disk waits for the syncs of each recovery), else ``work``."""
    try:
        shm = Path(tempfile.mkdtemp(prefix="fencefs-power-cut-", dir="/dev/shm"))
    except OSError:
        shm = None
    if shm is not None:
        try:
            os.setxattr(shm, "user.fencefs.probe", b"1")
            return shm
        except OSError:
            shm.rmdir()
    (work / "cuts").mkdir()
    return work / "cuts"


def cut_all(ops: list[Op], syncs: list[Sync], cuts: list[int], steps: list[Step],
            snaps: list[Snapshot], paths: list[str], scratch: Path) -> tuple[bool, int, int]:
    """Every state of every cut, mounted and judged: (failed, checked, distinct)."""
    cache: dict[str, tuple[Seen, list[str]]] = {}
    checked = 0
    for upto in cuts:
        for keep in cut_variants(ops, syncs, upto):
            world = crash_world(ops, keep, upto)
            key = digest(world)
            if key not in cache:
                dest = scratch / f"s{len(cache)}"
                materialize(world, dest)
                cache[key] = mount_view(dest, paths)
                shutil.rmtree(dest)
            seen, problems = cache[key]
            problems = problems or judge(seen, steps, snaps, upto)
            checked += 1
            if problems:
                where = next((s for s in reversed(steps) if s.start < upto), None)
                print(f"power-cut: FAILED at a cut in step "
                      f"{where.n if where else '-'} ({where.what if where else 'mount'}):")
                for p in problems:
                    print(f"  {p}")
                print(f"  (units not synced at the cut: {sorted(keep)[:12]})")
                return True, checked, len(cache)
    return False, checked, len(cache)


def check(work: Path, rounds: int, verbose: bool, reuse: bool = False,
          drop: str | None = None) -> int:
    t0 = time.monotonic()
    saved = work / "run.json"
    if reuse:  # the trace of an earlier run kept with --keep (for debugging)
        got = json.loads(saved.read_text())
        steps = [Step(**{**s, "ack": tuple(s["ack"])}) for s in got["steps"]]
        snaps = [{p: tuple(v) if v else None for p, v in snap.items()} for snap in got["snaps"]]
        trace, backing = work / "trace", work / "backing"
        shutil.rmtree(work / "cuts", ignore_errors=True)
    else:
        steps, snaps, trace, backing = run(work, rounds, verbose)
        saved.write_text(json.dumps({"steps": [s.__dict__ for s in steps], "snaps": snaps}))
    calls = parse(trace.read_text())
    mark_steps(calls, steps)
    replay = Replay(str(backing), drop)
    for c in sorted(calls, key=lambda c: c.exit):
        replay.feed(c)
    ops, syncs = replay.ops, replay.syncs
    paths = sorted({p for s in steps for p in s.paths})
    first = steps[0].start
    cuts = sorted({op.seq for op in ops if op.seq > first} | {ops[-1].seq + 1})
    print(f"power-cut: {len(steps)} steps, {len(calls)} calls traced, {len(ops)} changes and "
          f"{len(syncs)} syncs replayed, {len(cuts)} cut points "
          f"({time.monotonic() - t0:.1f} s)")
    scratch = scratch_dir(work)
    try:
        failed, checked, states = cut_all(ops, syncs, cuts, steps, snaps, paths, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if failed:
        return 1
    for what, count in KNOWN.items():
        print(f"power-cut: known gap, met in {count} cut state(s): {what}")
    print(f"power-cut: {checked} cut states ({states} distinct) mounted and checked: every "
          f"file at a committed version with its own version and epoch, every acknowledged "
          f"commit there and journaled, transactions whole, journals pass check-trace "
          f"({time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
