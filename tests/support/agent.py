"""The test agent: one long-lived process driven over JSON lines.

An agent is a real, separate process, one identity for its whole life (its
pid, or FENCEFS_AGENT when set). The test writes one command per line on its
stdin, a JSON list ``[op, arg, ...]``; the agent answers one JSON line,
``{"ok": value}`` or ``{"err": "EAGAIN", "stage": "open"}`` (the errno's name
and the system call that failed). A command that has something to say before
it is done (a long write that has started, an open about to block) first
writes ``{"event": name}`` lines. EOF on stdin ends the agent.

The commands are plain system calls on descriptors (open, read, write,
pread, pwrite, fsync, ftruncate, dup, close, lock, mmap), on paths (stat,
xattrs, rename, truncate, unlink, ...), whole-file helpers (readfile,
writefile, hold/put/drop) and a few named routines that must run without a
round trip per step (a read-increment-write counter, a large write that is
killed half-way, a loop of appends, ...). ``exit`` ends the process at once
without closing anything (``os._exit``).

This file is run by its source (``python -c SOURCE ROOT``), so that it runs
for any user under any interpreter, and imports nothing but the standard
library (and fencefs, from ROOT, for the ``client_*`` routines). Start it
through :class:`Agent` (or :func:`run_agent` for a batch of commands).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

if "__file__" in globals():  # imported by a test (in the agent, run from its source)
    SOURCE = Path(__file__).read_text()
    ROOT = str(Path(__file__).resolve().parent.parent.parent)


# -- the agent side (runs in the child) -----------------------------------------


class Failed(Exception):
    def __init__(self, stage: str, error: OSError) -> None:
        self.stage, self.error = stage, error


def step(stage: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except OSError as e:
        raise Failed(stage, e) from None


def _plain(obj: object) -> object:
    return obj.decode("utf-8", "replace") if isinstance(obj, bytes) else repr(obj)


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, default=_plain) + "\n")
    sys.stdout.flush()


def event(name: str, **extra: object) -> None:
    emit({"event": name, **extra})


ALIASES = {
    "trunc": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "rdwr_trunc": os.O_RDWR | os.O_TRUNC,
    "inplace": os.O_WRONLY,
    "append": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
}


def flags_of(spec: str | int) -> int:
    """``"O_RDWR|O_CREAT"`` (or ``"RDWR|CREAT"``, an alias above, an int)."""
    if isinstance(spec, int):
        return spec
    if spec in ALIASES:
        return ALIASES[spec]
    value = 0
    for name in spec.split("|"):
        name = name.strip()
        value |= getattr(os, name if name.startswith("O_") else "O_" + name)
    return value


def text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


class State:
    def __init__(self) -> None:
        self.held: dict[str, int] = {}
        self.maps: dict[int, Any] = {}
        self.objects: dict[str, Any] = {}


STATE = State()


def op_open(path: str, flags: str | int = "O_RDONLY", mode: int = 0o644) -> int:
    return int(step("open", os.open, os.fsencode(path), flags_of(flags), mode))


def op_read(fd: int, n: int | None = None) -> str:
    if n is not None:
        return text(step("read", os.read, fd, n))
    chunks = []
    while True:
        chunk = step("read", os.read, fd, 1 << 16)
        if not chunk:
            return text(b"".join(chunks))
        chunks.append(chunk)


def op_write(fd: int, data: str) -> int:
    return int(step("write", os.write, fd, data.encode()))


def op_write_all(fd: int, data: str) -> int:
    raw = data.encode()
    while raw:
        raw = raw[step("write", os.write, fd, raw):]
    return len(data)


def op_finish(fd: int, data: str | None = None) -> None:
    """Write ``data`` (if any) and close: a write error closes quietly."""
    if data is not None:
        try:
            op_write(fd, data)
        except Failed:
            try:
                os.close(fd)
            except OSError:
                pass
            raise
    step("close", os.close, fd)


def op_lock(fd: int, kind: str = "posix", wait: bool = True) -> None:
    import fcntl

    fn = {"posix": fcntl.lockf, "flock": fcntl.flock}[kind]
    step("lock", fn, fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)


def op_mmap(fd: int, size: int, shared: bool = True) -> int:
    import mmap

    flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
    m = step("mmap", mmap.mmap, fd, size, flags, mmap.PROT_READ | mmap.PROT_WRITE)
    STATE.maps[fd] = m
    return size


def op_mmap_write(fd: int, offset: int, data: str) -> None:
    raw = data.encode()
    STATE.maps[fd][offset:offset + len(raw)] = raw


def op_mmap_read(fd: int, offset: int, n: int) -> str:
    return text(bytes(STATE.maps[fd][offset:offset + n]))


def op_munmap(fd: int) -> None:
    STATE.maps.pop(fd).close()


def op_readfile(path: str) -> str:
    fd = op_open(path)
    try:
        return op_read(fd)
    finally:
        os.close(fd)


def op_writefile(path: str, data: str, flags: str | int = "trunc") -> int:
    fd = op_open(path, flags)
    try:
        op_write_all(fd, data)
    except Failed:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    step("close", os.close, fd)
    return len(data)


def op_hold(path: str, flags: str | int) -> int:
    fd = op_open(path, flags)
    STATE.held[path] = fd
    return fd


def op_put(path: str, data: str) -> int:
    return op_write(STATE.held[path], data)


def op_drop(path: str) -> None:
    step("close", os.close, STATE.held.pop(path))


def op_stat(path: str) -> dict[str, int]:
    st = step("stat", os.stat, path)
    return {"size": st.st_size, "uid": st.st_uid, "mode": st.st_mode & 0o7777,
            "ino": st.st_ino}


def op_lstat(path: str) -> list[int]:
    st = step("lstat", os.lstat, path)
    return [st.st_uid, st.st_gid, st.st_mode & 0o7777]


def op_mknod(path: str, kind: str) -> None:
    kinds = {"chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO}
    step("mknod", os.mknod, path, kinds[kind] | 0o644, os.makedev(1, 3))


def op_create(path: str, mode: int) -> None:
    step("close", os.close,
         step("open", os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))


def op_setxattr(path: str, name: str, value: str) -> None:
    step("setxattr", os.setxattr, path, name, value.encode())


def op_mkstemp(directory: str, prefix: str, data: str) -> str:
    import tempfile

    fd, tmp = step("mkstemp", tempfile.mkstemp, "", prefix, directory)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    return str(tmp)


def op_exit(code: int = 0) -> None:
    os._exit(code)


def op_open_interruptible(path: str, flags: str | int = "O_WRONLY") -> str:
    """Open ``path`` after an ``open`` event; SIGUSR1 interrupts the open."""
    import signal

    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted()

    signal.signal(signal.SIGUSR1, handler)
    event("open")
    try:
        fd = op_open(path, flags)
    except Interrupted:
        return "interrupted"
    STATE.held[path] = fd
    return "opened"


def op_hoard(path: str, n: int) -> list[object]:
    """Open ``path`` read-only ``n`` times and keep them: [opened, {errno: count}]."""
    failures: dict[str, int] = {}
    fds = STATE.objects.setdefault("hoard", [])
    opened = 0
    for _ in range(n):
        try:
            fds.append(os.open(path, os.O_RDONLY))
            opened += 1
        except OSError as e:
            name = errno.errorcode[e.errno]
            failures[name] = failures.get(name, 0) + 1
    return [opened, failures]


def op_counter(path: str, rounds: int) -> dict[str, int]:
    """Read-increment-rewrite ``rounds`` times, retrying a refused round."""
    import random
    import time

    retries = {"open": 0, "write": 0, "close": 0, "torn_read": 0}

    def attempt() -> bool:
        with open(path) as f:
            content = f.read()
        try:
            value = int(content)
        except ValueError:  # a plain directory can show the truncated file
            retries["torn_read"] += 1
            return False
        stage = "open"
        try:
            f = open(path, "w")
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise
            retries["open"] += 1
            return False
        stage = "write"
        try:
            f.write(str(value + 1))
            f.flush()
            stage = "close"
            f.close()
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise
            if not f.closed:
                try:
                    f.close()
                except OSError:
                    pass
            retries[stage] += 1
            return False
        return True

    done = failed = 0
    while done < rounds:
        if attempt():
            done, failed = done + 1, 0
        else:  # retry the whole round, after a short random backoff
            failed += 1
            time.sleep(random.uniform(0, 0.001 * min(2 ** failed, 16)))
    return retries


def op_big_write(path: str, how: str) -> None:
    """Rewrite ``path`` with 64 MiB (chunk i is letter A+i%26), announcing
    ``started`` after 4 MiB, still writing when a kill arrives. ``how``:
    ``segv`` dies of SIGSEGV, ``exit`` exits (status 3) without close,
    ``thread`` writes from a worker thread, anything else from this one."""
    import resource
    import signal
    import threading
    import time

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def work() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        for i in range(64):
            data = bytes([65 + i % 26]) * (1 << 20)
            while data:
                data = data[os.write(fd, data):]
            if i == 3:
                event("started")
                if how == "segv":
                    os.kill(os.getpid(), signal.SIGSEGV)
                if how == "exit":
                    os._exit(3)
            if i >= 3:
                time.sleep(0.02)
        os.close(fd)
        event("finished")

    if how == "thread":
        t = threading.Thread(target=work)
        t.start()
        t.join()
    else:
        work()


def op_append_lines(path: str, tag: str, count: int) -> int:
    """``count`` appends of one line each, one open-write-close per line."""
    for i in range(count):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{tag} {i:05d} {'x' * 40}\n".encode())
        os.close(fd)
    return count


def op_rewrite_in_place(path: str, rounds: int) -> int:
    """Through one read-write handle, every 50 ms: rewrite the whole file
    (a different length each time: BEGIN n size, body, END) and fsync it."""
    import time

    fd = os.open(path, os.O_RDWR)
    for n in range(rounds):
        body = (f"{n:06d}" * (500 + 37 * (n % 11))).encode()
        data = b"BEGIN %d %d\n" % (n, len(body)) + body + b"\nEND\n"
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
        time.sleep(0.05)
    os.close(fd)
    return rounds


def op_read_whole_versions(path: str, stop: str) -> int:
    """Open, read, close ``path`` until ``stop`` exists; each read must be one
    whole version written by rewrite_in_place. The number of versions seen."""
    seen = set()
    while not os.path.exists(stop):
        with open(path, "rb") as f:
            data = f.read()
        head, _, rest = data.partition(b"\n")
        _, n, size = head.split()
        body, tail = rest[:int(size)], rest[int(size):]
        if tail != b"\nEND\n" or body != b"%06d" % int(n) * (len(body) // 6) \
                or len(body) != 6 * (500 + 37 * (int(n) % 11)):
            raise AssertionError(f"TORN {int(n)} {len(data)}")
        seen.add(int(n))
    return len(seen)


def op_sqlite_open(path: str) -> None:
    import sqlite3

    con = sqlite3.connect(path, timeout=60, isolation_level=None)
    con.execute("pragma busy_timeout = 60000")
    STATE.objects["sqlite"] = con


def op_sqlite_insert(who: str, rows: int) -> int:
    con = STATE.objects.pop("sqlite")
    for i in range(rows):
        con.execute("insert into t (who, i) values (?, ?)", (who, i))
    con.close()
    return rows


def op_sqlite_stale_connection(path: str) -> str:
    """Two connections; the second inserts after the first did, on the
    snapshot it read before: what SQLite reports."""
    import sqlite3

    a = sqlite3.connect(path, isolation_level=None)
    a.execute("create table t (x)")
    b = sqlite3.connect(path, isolation_level=None)
    b.execute("select count(*) from t").fetchall()
    a.execute("insert into t values (1)")
    try:
        b.execute("insert into t values (2)")
        return "inserted"
    except sqlite3.Error as e:
        return f"{type(e).__name__} {e}"


def op_json_append(path: str, key: str, item: str) -> None:
    with open(path) as f:
        doc = json.load(f)
    doc[key].append(item)
    with open(path, "w") as f:
        json.dump(doc, f)


def op_python_file_idioms(target: str) -> None:
    """tempfile + os.replace (while open, and after), shutil copies and moves."""
    import shutil
    import tempfile

    d = os.path.dirname(target)
    with tempfile.NamedTemporaryFile("w", dir=d, delete=False, suffix=".tmp") as f:
        f.write("new\n")
        f.flush()
        os.fsync(f.fileno())
        os.replace(f.name, target)
    fd, tmp = tempfile.mkstemp(dir=d)
    with os.fdopen(fd, "w") as f:
        f.write("newer\n")
    os.replace(tmp, target)
    shutil.copyfile(target, os.path.join(d, "copy.md"))
    shutil.copy2(target, os.path.join(d, "copy2.md"))
    shutil.move(os.path.join(d, "copy.md"), os.path.join(d, "moved.md"))
    shutil.move(os.path.join(d, "moved.md"), os.path.join(d, "archive"))
    shutil.copytree(os.path.join(d, "archive"), os.path.join(d, "archive2"))
    shutil.rmtree(os.path.join(d, "archive2"))


def op_client(fn: str, *args: Any) -> Any:
    """Call ``fencefs.client.<fn>(*args)``."""
    sys.path.insert(0, sys.argv[1])
    from fencefs import client

    return getattr(client, fn)(*args)


def op_client_count(path: str, n: int) -> int:
    """``n`` increments of an integer file with fencefs.client.update."""
    sys.path.insert(0, sys.argv[1])
    from fencefs import client

    for _ in range(n):
        client.update(path, lambda b: str(int(b) + 1).encode(), retries=1000, backoff=0.001)
    return n


def _ops() -> dict[str, Any]:
    import time

    def fd_call(stage: str, fn: Any) -> Any:
        return lambda *args: step(stage, fn, *args)

    return {
        # descriptors
        "open": op_open,
        "read": op_read,
        "pread": lambda fd, n, off: text(step("pread", os.pread, fd, n, off)),
        "write": op_write,
        "write_all": op_write_all,
        "pwrite": lambda fd, data, off: step("pwrite", os.pwrite, fd, data.encode(), off),
        "fsync": fd_call("fsync", os.fsync),
        "fdatasync": fd_call("fdatasync", os.fdatasync),
        "ftruncate": fd_call("ftruncate", os.ftruncate),
        "dup": fd_call("dup", os.dup),
        "close": fd_call("close", os.close),
        "finish": op_finish,
        "lock": op_lock,
        "mmap": op_mmap,
        "mmap_write": op_mmap_write,
        "mmap_read": op_mmap_read,
        "munmap": op_munmap,
        # whole files, by path
        "readfile": op_readfile,
        "writefile": op_writefile,
        "hold": op_hold,
        "put": op_put,
        "drop": op_drop,
        "mkstemp": op_mkstemp,
        # paths
        "stat": op_stat,
        "lstat": op_lstat,
        "mknod": op_mknod,
        "create": op_create,
        "umask": lambda mask: oct(os.umask(mask)),
        "exists": os.path.exists,
        "getxattr": lambda p, name: text(step("getxattr", os.getxattr, p, name)),
        "getxattr_len": lambda p, name: len(step("getxattr", os.getxattr, p, name)),
        "setxattr": op_setxattr,
        "removexattr": fd_call("removexattr", os.removexattr),
        "listxattr": lambda p: sorted(step("listxattr", os.listxattr, p)),
        "listdir": lambda p: sorted(step("listdir", os.listdir, p)),
        "chmod": lambda p, mode: step("chmod", os.chmod, p, mode),
        "chown": lambda p, uid, gid=-1: step("chown", os.chown, p, uid, gid),
        "mkdir": fd_call("mkdir", os.mkdir),
        "unlink": fd_call("unlink", os.unlink),
        "rename": fd_call("rename", os.rename),
        "replace": fd_call("replace", os.replace),
        "truncate": fd_call("truncate", os.truncate),
        "symlink": fd_call("symlink", os.symlink),
        # the process
        "pid": os.getpid,
        "sleep": time.sleep,
        "exit": op_exit,
        "open_interruptible": op_open_interruptible,
        # routines
        "hoard": op_hoard,
        "counter": op_counter,
        "big_write": op_big_write,
        "append_lines": op_append_lines,
        "rewrite_in_place": op_rewrite_in_place,
        "read_whole_versions": op_read_whole_versions,
        "sqlite_open": op_sqlite_open,
        "sqlite_insert": op_sqlite_insert,
        "sqlite_stale_connection": op_sqlite_stale_connection,
        "json_append": op_json_append,
        "python_file_idioms": op_python_file_idioms,
        "client": op_client,
        "client_count": op_client_count,
    }


def main() -> None:
    ops = _ops()
    for line in sys.stdin:
        if not line.strip():
            continue
        op, *args = json.loads(line)
        try:
            answer: dict[str, object] = {"ok": ops[op](*args)}
        except Failed as f:
            answer = {"err": errno.errorcode[f.error.errno], "stage": f.stage}
        emit(answer)


# -- the test side ------------------------------------------------------------------


def agent_env(name: str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (the test's environment), FENCEFS_AGENT set to ``name`` or unset."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k != "FENCEFS_AGENT"}
    if name is not None:
        env["FENCEFS_AGENT"] = name
    return env


class AgentDied(AssertionError):
    pass


class Agent:
    """A test agent process. ``name`` sets FENCEFS_AGENT (None: unset);
    ``prefix`` runs it under another command (setpriv ...) with ``python``."""

    def __init__(self, name: str | None = None, *, env: dict[str, str] | None = None,
                 prefix: Sequence[str] = (), python: str = sys.executable,
                 cwd: str | None = None) -> None:
        self.proc = subprocess.Popen([*prefix, python, "-c", SOURCE, ROOT],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=agent_env(name, env), cwd=cwd)
        self.pid = self.proc.pid
        self.identity = f"agent:{name}" if name else f"pid:{self.pid}"

    def send(self, op: str, *args: object) -> None:
        """Send a command without waiting for its answer (see :meth:`answer`)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([op, *args]) + "\n")
        self.proc.stdin.flush()

    def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AgentDied(f"agent {self.identity} died (status {self.proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def answer(self) -> dict[str, Any]:
        """The answer to the command sent last (events before it are skipped)."""
        while True:
            answer = self.line()
            if "event" not in answer:
                return answer

    def wait_event(self, name: str) -> None:
        got = self.line()
        assert got == {"event": name}, f"agent {self.identity}: {got}, not event {name}"

    def do(self, op: str, *args: object) -> dict[str, Any]:
        self.send(op, *args)
        return self.answer()

    def ok(self, op: str, *args: object) -> Any:
        answer = self.do(op, *args)
        assert "ok" in answer, f"{op}{args} by {self.identity}: {answer}"
        return answer["ok"]

    def fails(self, op: str, *args: object) -> tuple[str, str]:
        answer = self.do(op, *args)
        assert "err" in answer, f"{op}{args} by {self.identity} should fail: {answer}"
        return answer["err"], answer["stage"]

    def outcome(self, op: str, *args: object) -> str:
        """``"ok"`` or the errno's name."""
        answer = self.do(op, *args)
        return "ok" if "ok" in answer else str(answer["err"])

    def close(self, timeout: float = 30) -> int:
        """EOF on stdin (the agent exits, its descriptors close); its status."""
        if self.proc.returncode is None:
            self.proc.communicate(timeout=timeout)
        return self.proc.returncode

    def wait(self, timeout: float = 30) -> int:
        """Wait for the agent to end (it exited or was killed); its status."""
        self.proc.communicate(timeout=timeout)
        return self.proc.returncode

    def kill(self, sig: int = 9) -> int:
        self.proc.send_signal(sig)
        self.proc.communicate(timeout=30)
        return self.proc.returncode

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


def all_answer(agents: Iterable[Agent], op: str, *args: object) -> list[dict[str, Any]]:
    """Send one command to every agent at once (a barrier), then their answers."""
    agents = list(agents)
    for a in agents:
        a.send(op, *args)
    return [a.answer() for a in agents]


def run_agent(commands: Iterable[Sequence[object]], name: str | None = None,
              **kwargs: Any) -> list[dict[str, Any]]:
    """Run a fresh agent over a batch of commands; its answers, one per command."""
    with Agent(name, **kwargs) as agent:
        answers = [agent.do(*command) for command in commands]  # type: ignore[arg-type]
        assert agent.close() == 0
    return answers


if __name__ == "__main__":
    main()
