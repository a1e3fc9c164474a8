"""Model-based tests: random sequences of actions, every result checked
against tests/model.py (written from the TLA+ actions, not from the code).

The actions: write handles (O_TRUNC rewrites, O_RDWR updates, appends) with
their writes, reads through the handle (a writer reads its own draft),
fsyncs and closes; reads by path (observation claims); path commits (rename
of a temporary file over the file, truncate by path, unlink) and re-creation;
reclaims; foreign writes into the backing file; the exclusive policy (EBUSY);
kills of a writer (G7); restarts of the daemon.

Machines:
- ``TestCoreMachine``: the pure core (fencefs.core.Coordinator), with lease
  expiry and the sweep on an explicit clock; many examples.
- ``TestMountMachine``: a real mount, ``--identity thread --durability
  none``: one test process holds many identities (one thread each).
- ``TestAgentMountMachine``: a real mount, ``--durability full`` (the
  default), identities are agents (FENCEFS_AGENT), each a real process
  (tests/support/agent.py) that can be SIGKILLed; restarts are daemon kills.

FENCEFS_MODEL_EXAMPLES / FENCEFS_AGENT_MODEL_EXAMPLES / FENCEFS_CORE_EXAMPLES
set the example counts (defaults sized to CI, more under the slow profile).
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from fencefs.core import Coordinator, FenceError, Persisted
from tests.model import EXCLUSIVE, MODES, OPTIMISTIC, Model
from tests.support.agent import Agent
from tests.support.explore import examples
from tests.support.mount import Mount, require_fuse
from tests.support.trace import check_trace

# FENCEFS_MODEL_NO_SHRINK=1: report the first failure as found (mutant runs).
PHASES = tuple(p for p in Phase if p is not Phase.shrink or
               not os.environ.get("FENCEFS_MODEL_NO_SHRINK"))
FILES = ("a.md", "b.json")
IDENTS = ("ann", "bob", "cid")
data_st = st.text(alphabet="abcdxyz", min_size=1, max_size=8).map(str.encode)
mode_st = st.sampled_from(MODES)
FLAGS = {"rewrite": os.O_RDWR | os.O_TRUNC, "update": os.O_RDWR,
         "append": os.O_WRONLY | os.O_APPEND}


def only_restart_losses(model: Model) -> None:
    """NoLostUpdate, but for the known gaps: observations die with the daemon
    (specs/gaps/Observation_CrashForgetsObservations), and an O_RDWR handle
    is judged against the version it opened, not against an older read
    (specs/gaps/Observation_UpdateFromOldRead, kept deliberately)."""
    assert all(why in ("restart", "update") for *_, why in model.lost), model.lost


# -- the pure core ------------------------------------------------------------------


class CoreMachine(RuleBasedStateMachine):
    """The model against fencefs.core.Coordinator, with explicit time."""

    handles = Bundle("handles")
    TTL = 60.0

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.now = 1000.0
        self.core = Coordinator(lease_ttl=self.TTL)
        self.claims: dict[int, Any] = {}
        self.next_hid = 0
        for name in FILES:
            self.core.adopt(name, Persisted(0, 0))
            self.model.create(name)

    @staticmethod
    def _errno(call: Callable[[], Any]) -> int | None:
        try:
            call()
        except FenceError as e:
            return e.errno
        return None

    @rule(target=handles, ident=st.sampled_from(IDENTS), name=st.sampled_from(FILES),
          mode=mode_st)
    def open_write(self, ident: str, name: str, mode: str) -> int:
        hid = self.next_hid
        self.next_hid += 1
        expected = self.model.OpenWrite(hid, ident, name, mode)
        got: dict[str, Any] = {}

        def do() -> None:
            got["claim"] = self.core.open_write(
                name, ident, 1, rewrite=mode == "rewrite", append=mode == "append",
                now=self.now, persist_epoch=lambda e: None)

        assert self._errno(do) == expected, (ident, name, mode, expected)
        if expected is None:
            self.claims[hid] = got["claim"]
            return hid
        return -1

    @rule(hid=handles, data=data_st)
    def write(self, hid: int, data: bytes) -> None:
        if hid not in self.claims:
            return
        dead = self.model.handles[hid].error is not None
        expected = self.model.Renew(hid, data)
        if dead:
            return  # the engine answers a dead handle; the core is not asked
        claim = self.claims[hid]
        assert self._errno(lambda: self.core.check(claim)) == expected
        if expected is None:
            self.core.renew(claim, self.now)

    @rule(hid=handles)
    def read_handle(self, hid: int) -> None:
        if hid not in self.claims:
            return
        h = self.model.handles[hid]
        if h.error is None and h.draft is None:  # what the engine's read records
            self.core.observe(h.file, h.ident, 1, h.version, h.epoch)
        self.model.ReadHandle(hid)

    @rule(hid=handles)
    def fsync(self, hid: int) -> None:
        if hid in self.claims:
            self._commit(hid, close=False)

    @rule(hid=consumes(handles))
    def close(self, hid: int) -> None:
        if hid in self.claims:
            self._commit(hid, close=True)

    def _commit(self, hid: int, *, close: bool) -> None:
        h = self.model.handles[hid]
        asks_core = h.error is None and h.dirty
        expected = self.model.Close(hid) if close else self.model.Commit(hid)
        claim = self.claims[hid]
        got = expected if not asks_core else \
            self._errno(lambda: self.core.commit(claim, lambda v, e: None))
        assert got == expected
        if asks_core and got is None:
            self.core.renew(claim, self.now)
        if close:
            self.core.release(self.claims.pop(hid))

    @rule(ident=st.sampled_from(IDENTS))
    def kill(self, ident: str) -> None:
        self.model.Kill(ident)
        for hid in [h for h, c in self.claims.items() if c.identity == ident]:
            self.core.release(self.claims.pop(hid))

    @rule(ident=st.sampled_from(IDENTS), name=st.sampled_from(FILES))
    def read(self, ident: str, name: str) -> None:
        self.model.Observe(ident, name)
        f = self.core.get(name)
        assert f is not None
        self.core.observe(name, ident, 1, f.version, f.epoch)

    @rule(ident=st.sampled_from(IDENTS), name=st.sampled_from(FILES),
          kind=st.sampled_from(("rename", "truncate")))
    def commit_path(self, ident: str, name: str, kind: str) -> None:
        expected = self.model.CommitPath(ident, name, kind, b"new")
        got = self._errno(lambda: self.core.commit_path(name, ident, 1, lambda v, e: None,
                                                        now=self.now))
        assert got == expected

    @rule(name=st.sampled_from(FILES))
    def reclaim(self, name: str) -> None:
        self.model.Reclaim(name)
        self.core.reclaim(name, lambda e: None)

    @rule(name=st.sampled_from(FILES))
    def foreign_write(self, name: str) -> None:
        self.model.AdoptForeign(name, b"foreign")
        self.core.adopt_foreign(name, lambda v, e: None)

    @rule(name=st.sampled_from(FILES), policy=st.sampled_from((OPTIMISTIC, EXCLUSIVE)))
    def set_policy(self, name: str, policy: str) -> None:
        self.model.SetPolicy(name, policy)
        self.core.set_policy(name, policy, lambda p: None)

    @rule(hid=handles)
    def expire(self, hid: int) -> None:
        """Time passes for this claim only: its lease runs out now."""
        if hid in self.claims:
            self.model.Expire(hid)
            self.claims[hid].lease_expiry = self.now

    @rule(name=st.sampled_from(FILES))
    def sweep(self, name: str) -> None:
        expected = self.model.Sweep(name)
        f = self.core.get(name)
        assert f is not None
        swept = bool(self.core.expired_holders(f, self.now))
        assert swept == expected
        if swept:
            self.core.reclaim(name, lambda e: None)

    @rule()
    def crash(self) -> None:
        self.model.Crash()
        self.claims.clear()
        persisted = {}
        for name in FILES:
            f = self.core.get(name)
            assert f is not None
            persisted[name] = Persisted(f.version, f.epoch, f.policy)
        self.core = Coordinator(lease_ttl=self.TTL)
        for name, p in persisted.items():
            self.core.adopt(name, p)

    @invariant()
    def state_matches(self) -> None:
        for name, f in self.model.files.items():
            state = self.core.get(name)
            assert state is not None
            assert (state.version, state.epoch) == (f.version, f.epoch)
        only_restart_losses(self.model)


CoreMachine.TestCase.settings = settings(
    max_examples=examples("FENCEFS_CORE_EXAMPLES", 300, 10000),
    stateful_step_count=40,
    deadline=None,
    phases=PHASES,
)
TestCoreMachine = CoreMachine.TestCase


# -- drivers: who makes the system calls --------------------------------------------


class Threads:
    """One thread per identity (the mount runs with --identity thread)."""

    can_kill = False

    def __init__(self) -> None:
        self.pools = {i: ThreadPoolExecutor(max_workers=1) for i in IDENTS}

    def call(self, ident: str, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the identity's thread: its value, or the errno (int)."""
        def run() -> Any:
            try:
                return ("ok", fn(*args))
            except OSError as e:
                return ("err", e.errno)
        kind, value = self.pools[ident].submit(run).result()
        return value if kind == "ok" else Errno(value)

    def open(self, ident: str, path: str, flags: int) -> Any:
        return self.call(ident, os.open, path, flags, 0o644)

    def write(self, ident: str, fd: int, data: bytes, append: bool) -> Any:
        if append:
            return self.call(ident, os.write, fd, data)
        return self.call(ident, os.pwrite, fd, data, 0)

    def pread(self, ident: str, fd: int) -> Any:
        return self.call(ident, os.pread, fd, 4096, 0)

    def fsync(self, ident: str, fd: int) -> Any:
        return self.call(ident, os.fsync, fd)

    def close(self, ident: str, fd: int) -> Any:
        return self.call(ident, os.close, fd)

    def readfile(self, ident: str, path: str) -> Any:
        return self.call(ident, lambda: Path(path).read_bytes())

    def writefile(self, ident: str, path: str, data: bytes) -> Any:
        return self.call(ident, lambda: Path(path).write_bytes(data))

    def path_op(self, ident: str, op: str, *args: Any) -> Any:
        fn = {"rename": os.rename, "truncate": os.truncate, "unlink": os.unlink}[op]
        return self.call(ident, fn, *args)

    def create(self, ident: str, path: str) -> Any:
        return self.call(ident, lambda: os.close(os.open(path, os.O_WRONLY | os.O_CREAT
                                                         | os.O_EXCL, 0o644)))

    def kill(self, ident: str) -> None:
        raise AssertionError("threads cannot be killed")

    def stop(self) -> None:
        for pool in self.pools.values():
            pool.shutdown()


class Errno(int):
    """A failed call's errno (so that it is not mistaken for a value)."""


class Agents:
    """One agent process per identity (FENCEFS_AGENT=name)."""

    can_kill = True

    def __init__(self) -> None:
        self.agents = {i: Agent(i) for i in IDENTS}

    def _do(self, ident: str, op: str, *args: Any) -> Any:
        answer = self.agents[ident].do(op, *args)
        if "err" in answer:
            return Errno(getattr(errno, answer["err"]))
        return answer["ok"]

    def open(self, ident: str, path: str, flags: int) -> Any:
        return self._do(ident, "open", path, flags)

    def write(self, ident: str, fd: int, data: bytes, append: bool) -> Any:
        if append:
            return self._do(ident, "write", fd, data.decode())
        return self._do(ident, "pwrite", fd, data.decode(), 0)

    def pread(self, ident: str, fd: int) -> Any:
        got = self._do(ident, "pread", fd, 4096, 0)
        return got if isinstance(got, Errno) else got.encode()

    def fsync(self, ident: str, fd: int) -> Any:
        return self._do(ident, "fsync", fd)

    def close(self, ident: str, fd: int) -> Any:
        return self._do(ident, "close", fd)

    def readfile(self, ident: str, path: str) -> Any:
        got = self._do(ident, "readfile", path)
        return got if isinstance(got, Errno) else got.encode()

    def writefile(self, ident: str, path: str, data: bytes) -> Any:
        return self._do(ident, "writefile", path, data.decode(), "trunc")

    def path_op(self, ident: str, op: str, *args: Any) -> Any:
        return self._do(ident, op, *args)

    def create(self, ident: str, path: str) -> Any:
        return self._do(ident, "create", path, 0o644)

    def kill(self, ident: str) -> None:
        """SIGKILL the agent (its open handles die with it), start the next
        process of the same agent."""
        assert self.agents[ident].kill() == -9
        self.agents[ident] = Agent(ident)

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.close()


def failed(value: Any) -> int | None:
    return int(value) if isinstance(value, Errno) else None


# -- the real mount -----------------------------------------------------------------


class MountMachine(RuleBasedStateMachine):
    handles = Bundle("handles")
    OPTIONS: tuple[str, ...] = ("--identity", "thread", "--durability", "none")
    DRIVER: Callable[[], Any] = Threads
    CRASH = False  # restart by SIGKILL of the daemon (else a clean remount)

    def __init__(self) -> None:
        super().__init__()
        require_fuse()
        self.tmp = tempfile.TemporaryDirectory()
        self.mount = Mount(Path(self.tmp.name), *self.OPTIONS)
        self.mount.start()
        self.model = Model()
        self.io = type(self).DRIVER()
        self.fds: dict[int, int] = {}
        self.next_hid = 0
        self.foreign_mtime = 1_000_000_000
        self.steps = 0  # since the last restart (restarts are slow: not too many)
        # Paths unlinked before a restart: the tombstone that keeps their
        # version and epoch is in memory only, so re-creating them after a
        # restart starts over (test_recreated_after_restart_keeps_version_and_epoch,
        # a known gap): the machines do not re-create them.
        self.forgotten: set[str] = set()

    def teardown(self) -> None:
        try:
            for hid, fd in list(self.fds.items()):
                self.io.close(self.model.handles[hid].ident, fd)
            self.io.stop()
        finally:
            self.mount.stop()
        log = self.mount.log()
        trace = check_trace(self.mount.journal_path())  # the journal follows the specs
        self.tmp.cleanup()
        assert trace.returncode == 0, trace.stdout + trace.stderr
        assert "Traceback" not in log, log

    def settle(self, name: str) -> None:
        """Releases reach the daemon after close() returns: wait until the
        write claims it shows on ``name`` are the model's (only they decide
        EBUSY on an exclusive file)."""
        def shown() -> list[str]:
            return sorted(c["identity"] for row in self.mount.status() if row["file"] == name
                          for c in row["claims"] if c["kind"] == "write"
                          and c["epoch"] == self.model.files[name].epoch)
        want = sorted(self.identity(h.ident) for h in self.model.handles.values()
                      if h.file == name and self.model.valid(h))
        deadline = time.monotonic() + 30
        while shown() != want:
            assert time.monotonic() < deadline, (name, shown(), want)
            time.sleep(0.005)

    def identity(self, ident: str) -> str:
        return f"agent:{ident}"

    def settle_all(self) -> None:
        for name, f in self.model.files.items():
            if f.policy == EXCLUSIVE:
                self.settle(name)

    @initialize()
    def create_files(self) -> None:
        for name in FILES:
            os.close(os.open(self.mount.path(name), os.O_WRONLY | os.O_CREAT, 0o644))
            self.model.create(name)

    @rule(target=handles, ident=st.sampled_from(IDENTS), name=st.sampled_from(FILES),
          mode=mode_st)
    def open_write(self, ident: str, name: str, mode: str) -> int:
        hid = self.next_hid
        self.next_hid += 1
        expected = self.model.OpenWrite(hid, ident, name, mode)
        got = self.io.open(ident, self.mount.path(name), FLAGS[mode])
        assert failed(got) == expected, (ident, name, mode, got, expected)
        if expected is not None:
            return -1
        self.fds[hid] = got
        return hid

    @rule(hid=handles, data=data_st)
    def write(self, hid: int, data: bytes) -> None:
        if hid not in self.fds:
            return
        h = self.model.handles[hid]
        expected = self.model.Renew(hid, data)
        got = self.io.write(h.ident, self.fds[hid], data, h.mode == "append")
        assert failed(got) == expected, ("write", h, got, expected)

    @rule(hid=handles)
    def read_handle(self, hid: int) -> None:
        """A writer reads its own draft (G4); a clean handle what it was served."""
        if hid not in self.fds or self.model.handles[hid].mode == "append":
            return
        h = self.model.handles[hid]
        expected = self.model.ReadHandle(hid)
        got = self.io.pread(h.ident, self.fds[hid])
        if isinstance(expected, int):
            assert failed(got) == expected, ("read", h, got, expected)
        else:
            assert got == expected, ("read", h, got, expected)

    @rule(hid=handles)
    def fsync(self, hid: int) -> None:
        if hid not in self.fds:
            return
        h = self.model.handles[hid]
        expected = self.model.Commit(hid)
        got = self.io.fsync(h.ident, self.fds[hid])
        assert failed(got) == expected, ("fsync", h, got, expected)

    @rule(hid=consumes(handles))
    def close(self, hid: int) -> None:
        if hid not in self.fds:
            return
        h = self.model.handles[hid]
        expected = self.model.Close(hid)
        got = self.io.close(h.ident, self.fds.pop(hid))
        assert failed(got) == expected, ("close", h, got, expected)
        self.settle_all()

    @rule(ident=st.sampled_from(IDENTS), name=st.sampled_from(FILES))
    def read(self, ident: str, name: str) -> None:
        expected = self.model.Observe(ident, name)
        got = self.io.readfile(ident, self.mount.path(name))
        if isinstance(expected, int):
            assert failed(got) == expected, (ident, name, got)
        else:
            assert got == expected, (ident, name, got, expected)

    @rule(ident=st.sampled_from(IDENTS), name=st.sampled_from(FILES), data=data_st)
    def rename_over(self, ident: str, name: str, data: bytes) -> None:
        """An atomic writer: a temporary file, renamed over the file."""
        if not self.model.files[name].exists:
            return
        tmp = self.mount.path(f".{name}.{ident}.tmp")
        assert failed(self.io.writefile(ident, tmp, data)) is None
        expected = self.model.CommitPath(ident, name, "rename", data)
        got = self.io.path_op(ident, "rename", tmp, self.mount.path(name))
        assert failed(got) == expected, ("rename", ident, name, got, expected)
        if expected is not None:  # a refused rename leaves the temporary file
            assert failed(self.io.path_op(ident, "unlink", tmp)) is None

    @rule(ident=st.sampled_from(IDENTS), name=st.sampled_from(FILES),
          size=st.integers(0, 3))
    def truncate(self, ident: str, name: str, size: int) -> None:
        expected = self.model.CommitPath(ident, name, "truncate", size=size)
        got = self.io.path_op(ident, "truncate", self.mount.path(name), size)
        assert failed(got) == expected, ("truncate", ident, name, got, expected)

    @rule(ident=st.sampled_from(IDENTS), name=st.sampled_from(FILES))
    def unlink(self, ident: str, name: str) -> None:
        expected = self.model.CommitPath(ident, name, "unlink")
        got = self.io.path_op(ident, "unlink", self.mount.path(name))
        assert failed(got) == expected, ("unlink", ident, name, got, expected)

    @rule(ident=st.sampled_from(IDENTS), name=st.sampled_from(FILES))
    def recreate(self, ident: str, name: str) -> None:
        if self.model.files[name].exists or name in self.forgotten:
            return
        assert failed(self.io.create(ident, self.mount.path(name))) is None
        self.model.create(name)

    @rule(name=st.sampled_from(FILES))
    def reclaim(self, name: str) -> None:
        if not self.model.files[name].exists:
            return
        self.model.Reclaim(name)
        os.setxattr(self.mount.path(name), "user.fencefs.reclaim", b"1")

    @rule(name=st.sampled_from(FILES), data=data_st)
    def foreign_write(self, name: str, data: bytes) -> None:
        """A write straight into the backing file (in place), with an mtime
        of its own so that fencefs cannot miss it."""
        if not self.model.files[name].exists or any(
                h.file == name for h in self.model.handles.values()):
            return
        self.model.AdoptForeign(name, data)
        backing = self.mount.backing / name
        with open(backing, "r+b") as f:
            f.truncate(0)
            f.write(data)
        self.foreign_mtime += 1
        os.utime(backing, ns=(self.foreign_mtime, self.foreign_mtime))

    @rule(name=st.sampled_from(FILES), policy=st.sampled_from((OPTIMISTIC, EXCLUSIVE)))
    def set_policy(self, name: str, policy: str) -> None:
        if not self.model.files[name].exists:
            return
        self.model.SetPolicy(name, policy)
        os.setxattr(self.mount.path(name), "user.fencefs.policy", policy.encode())
        self.settle_all()

    @precondition(lambda self: self.io.can_kill)
    @rule(hid=handles)
    def kill(self, hid: int) -> None:
        """G7: SIGKILL the agent that holds this handle, open with a dirty
        draft (and maybe others): nothing it wrote is committed."""
        if hid not in self.fds or not self.model.handles[hid].dirty:
            return
        ident = self.model.handles[hid].ident
        for hid in [k for k, h in self.model.handles.items() if h.ident == ident]:
            self.fds.pop(hid)
        self.model.Kill(ident)
        self.io.kill(ident)
        self.settle_all()

    @precondition(lambda self: not self.fds and self.steps >= 10)
    @rule()
    def restart(self) -> None:
        self.steps = 0
        self.forgotten |= {n for n, f in self.model.files.items() if not f.exists}
        self.model.Crash()
        if self.CRASH:
            self.mount.kill()
            self.mount.start()
        else:
            self.mount.remount()

    @invariant()
    def files_match_model(self) -> None:
        self.steps += 1
        if not self.model.files:
            return
        for name, f in self.model.files.items():
            path = self.mount.path(name)
            if not f.exists:
                assert not os.path.exists(path), name
                continue
            with open(path, "rb") as fh:
                content = fh.read()
            got = (content, int(os.getxattr(path, "user.fencefs.version")),
                   int(os.getxattr(path, "user.fencefs.epoch")))
            assert got == (f.content, f.version, f.epoch), name
        only_restart_losses(self.model)


class ThreadMountMachine(MountMachine):
    def identity(self, ident: str) -> str:
        pool = self.io.pools[ident]
        return f"thread:{pool.submit(threading.get_native_id).result()}"


class AgentMountMachine(MountMachine):
    OPTIONS = ()  # --identity agent, --durability full: the defaults
    DRIVER = Agents
    CRASH = True


ThreadMountMachine.TestCase.settings = settings(
    max_examples=examples("FENCEFS_MODEL_EXAMPLES", 10, 200),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=PHASES,
)
TestMountMachine = ThreadMountMachine.TestCase

AgentMountMachine.TestCase.settings = settings(
    max_examples=examples("FENCEFS_AGENT_MODEL_EXAMPLES", 6, 100),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=PHASES,
)
TestAgentMountMachine = AgentMountMachine.TestCase


# -- where the model and the code differed --------------------------------------------


def test_append_after_reclaim_keeps_the_revoked_read_revoked() -> None:
    """Observation.tla's ObsAfterCommit moved an observation to the new
    version after an append whenever its *version* was the one replaced,
    even when a reclaim had revoked it (older epoch); the core keeps it
    revoked. The spec was fixed (it now compares version and epoch); this is
    the sequence that told them apart."""
    model, core = Model(), Coordinator()
    model.create("f")
    core.adopt("f", Persisted(0, 0))
    model.Observe("ann", "f")
    core.observe("f", "ann", 1, 0, 0)
    model.Reclaim("f")
    core.reclaim("f", lambda e: None)
    assert model.OpenWrite(1, "ann", "f", "append") is None
    claim = core.open_write("f", "ann", 1, rewrite=False, append=True)
    assert model.Renew(1, b"x") is None
    assert model.Commit(1) is None
    core.commit(claim, lambda v, e: None)
    assert model.OpenWrite(2, "ann", "f", "rewrite") == errno.ESTALE
    with pytest.raises(FenceError) as refused:
        core.open_write("f", "ann", 1, rewrite=True)
    assert refused.value.errno == errno.ESTALE


def _names(model: Model, *names: str) -> Model:
    for name in names:
        model.create(name)
    return model


def test_read_through_an_older_handle_records_the_older_version(
        mount: Mount, agents: Callable[..., Agent]) -> None:
    """Observation.tla Observe: a read records the version it was served,
    also through a handle opened before a commit (the older version). The
    engine recorded a handle's version only once per handle, so a read by
    path in between left the newer observation standing, and a rewrite
    computed from the older bytes landed over the newer commit."""
    model = _names(Model(), "f")
    path = mount.seed("f", "")
    ann, bob = agents("ann"), agents("bob")
    fd = ann.ok("open", path, "O_RDWR")
    assert model.OpenWrite(1, "ann", "f", "update") is None
    assert ann.ok("pread", fd, 100, 0).encode() == model.ReadHandle(1) == b""
    assert bob.ok("writefile", path, "bob's") == 5
    assert model.OpenWrite(2, "bob", "f", "rewrite") is None
    assert model.Renew(2, b"bob's") is None and model.Close(2) is None
    assert ann.ok("readfile", path).encode() == model.Observe("ann", "f") == b"bob's"
    assert ann.ok("pread", fd, 100, 0).encode() == model.ReadHandle(1) == b""  # older bytes
    assert model.OpenWrite(3, "ann", "f", "rewrite") == errno.EAGAIN
    assert ann.fails("writefile", path, "computed from the older read") == ("EAGAIN", "open")
    ann.ok("close", fd)
    assert Path(path).read_text() == "bob's"


@pytest.mark.xfail(strict=True, reason="known gap: specs/gaps/Observation_CrashForgetsObservations")
def test_restart_forgets_what_was_read(mount: Mount, agents: Callable[..., Agent]) -> None:
    """Crash/Restart drop every claim, observations included (the specs'
    Crash), but what a program read stays in the program: its rewrite after
    the restart is blind and lands over a commit it never saw (NoLostUpdate
    fails in the model; the contract wants EAGAIN)."""
    model = _names(Model(), "f")
    path = mount.seed("f", "v")
    ann, bob = agents("ann"), agents("bob")
    ann.ok("readfile", path)
    model.Observe("ann", "f")
    model.Crash()
    mount.remount()
    bob.ok("writefile", path, "bob's")
    assert model.OpenWrite(1, "bob", "f", "rewrite") is None
    assert model.Renew(1, b"bob's") is None and model.Close(1) is None
    got = ann.outcome("writefile", path, "ann's, computed from v")
    assert model.OpenWrite(2, "ann", "f", "rewrite") is None  # blind: what the code does
    assert model.Renew(2, b"x") is None and model.Close(2) is None
    assert model.lost == [("ann", "f", 0, 1, "restart")]
    assert got == "EAGAIN"  # what the contract wants; today "ok"


@pytest.mark.xfail(strict=True, reason="known gap: a deleted path's tombstone is in memory only")
def test_recreated_after_restart_keeps_version_and_epoch(
        mount: Mount, agents: Callable[..., Agent]) -> None:
    """Versions and epochs are persisted and never go down, not even across a
    restart (Fencing.tla's VersionMonotonic, EpochMonotonic). An unlink is a
    commit, and the path keeps its version and epoch (a tombstone) for the
    next file made there; but the tombstone is in memory only, so after a
    restart an empty file's path starts over at version 0, epoch 0 (the
    model-based machines do not re-create such paths)."""
    model = _names(Model(), "f")
    path = mount.path("f")
    Path(path).touch()
    os.setxattr(path, "user.fencefs.reclaim", b"1")
    model.Reclaim("f")
    ann = agents("ann")
    ann.ok("unlink", path)
    assert model.CommitPath("ann", "f", "unlink") is None
    model.Crash()
    mount.remount()
    ann.ok("create", path, 0o644)
    model.create("f")
    got = (int(os.getxattr(path, "user.fencefs.version")),
           int(os.getxattr(path, "user.fencefs.epoch")))
    assert got == (model.files["f"].version, model.files["f"].epoch) == (1, 1)
