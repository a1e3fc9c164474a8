"""Model-based tests: random sequences of actions, every result checked
against tests/model.py (written from the TLA+ actions).

Two variants drive the same model:
- ``TestMountMachine``: a real mount; identities are threads (the mount runs
  with --identity thread), so one test process holds many identities.
- ``TestCoreMachine``: the pure core directly, with many more examples.

FENCEFS_MODEL_EXAMPLES raises the number of mount examples (default 12).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
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
from tests.model import Model
from tests.support.explore import examples
from tests.support.mount import Mount, require_fuse
from tests.support.trace import check_trace

T = TypeVar("T")
FILES = ("a.md", "b.json")
IDENTS = ("ann", "bob", "cid")
data_st = st.binary(min_size=1, max_size=12)
mode_st = st.sampled_from(("rw", "trunc", "append"))


def _errno_of(call: Callable[[], Any]) -> int | None:
    try:
        call()
    except OSError as e:
        return e.errno
    return None


class MountMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        require_fuse()
        self.tmp = tempfile.TemporaryDirectory()
        self.mount = Mount(Path(self.tmp.name), "--identity", "thread", "--durability", "none")
        self.mount.start()
        self.model = Model()
        self.threads = {i: ThreadPoolExecutor(max_workers=1) for i in (*IDENTS, "checker")}
        self.fds: dict[int, int] = {}
        self.next_hid = 0

    def as_ident(self, ident: str, fn: Callable[[], T]) -> T:
        return self.threads[ident].submit(fn).result()

    def teardown(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        for pool in self.threads.values():
            pool.shutdown()
        self.mount.stop()
        log = self.mount.log()
        trace = check_trace(self.mount.journal_path())  # the journal follows the specs
        self.tmp.cleanup()
        assert trace.returncode == 0, trace.stdout + trace.stderr
        assert "Traceback" not in log, log

    @initialize()
    def create_files(self) -> None:
        for name in FILES:
            fd = os.open(self.mount.path(name), os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(fd)
            self.model.create(name)

    @rule(target=handles, ident=st.sampled_from(IDENTS), name=st.sampled_from(FILES),
          mode=mode_st)
    def open_write(self, ident: str, name: str, mode: str) -> int:
        flags = {"rw": os.O_RDWR, "trunc": os.O_WRONLY | os.O_TRUNC,
                 "append": os.O_WRONLY | os.O_APPEND}[mode]
        path = self.mount.path(name)
        hid = self.next_hid
        self.next_hid += 1
        expected = self.model.open_write(hid, ident, name, mode)
        result: dict[str, int] = {}

        def do() -> None:
            result["fd"] = os.open(path, flags)

        got = _errno_of(lambda: self.as_ident(ident, do))
        assert got == expected, (ident, name, mode, got, expected)
        if got is None:
            self.fds[hid] = result["fd"]
        return hid if got is None else -1

    @rule(hid=handles, data=data_st)
    def write(self, hid: int, data: bytes) -> None:
        if hid not in self.fds:
            return
        h = self.model.handles[hid]
        fd = self.fds[hid]
        expected = self.model.write(hid, data)
        op = (lambda: os.write(fd, data)) if h.mode == "append" else \
            (lambda: os.pwrite(fd, data, 0))
        got = _errno_of(lambda: self.as_ident(h.ident, op))
        assert got == expected, ("write", h, got, expected)

    @rule(hid=handles)
    def fsync(self, hid: int) -> None:
        if hid not in self.fds:
            return
        h = self.model.handles[hid]
        expected = self.model.commit(hid)
        got = _errno_of(lambda: self.as_ident(h.ident, lambda: os.fsync(self.fds[hid])))
        assert got == expected, ("fsync", h, got, expected)

    @rule(hid=consumes(handles))
    def close(self, hid: int) -> None:
        if hid not in self.fds:
            return
        h = self.model.handles[hid]
        expected = self.model.close(hid)
        fd = self.fds.pop(hid)
        got = _errno_of(lambda: self.as_ident(h.ident, lambda: os.close(fd)))
        assert got == expected, ("close", h, got, expected)

    @rule(ident=st.sampled_from(IDENTS), name=st.sampled_from(FILES))
    def read(self, ident: str, name: str) -> None:
        expected = self.model.observe(ident, name)
        path = self.mount.path(name)

        def do() -> bytes:
            with open(path, "rb") as f:
                return f.read()

        assert self.as_ident(ident, do) == expected

    @rule(name=st.sampled_from(FILES))
    def reclaim(self, name: str) -> None:
        self.model.reclaim(name)
        os.setxattr(self.mount.path(name), "user.fencefs.reclaim", b"1")

    @precondition(lambda self: not self.fds)
    @rule()
    def remount(self) -> None:
        self.model.restart()
        self.mount.remount()

    @invariant()
    def files_match_model(self) -> None:
        if not self.model.files:
            return
        for name, f in self.model.files.items():
            path = self.mount.path(name)

            def check(path: str = path) -> tuple[bytes, int, int]:
                with open(path, "rb") as fh:
                    content = fh.read()
                return (content, int(os.getxattr(path, "user.fencefs.version")),
                        int(os.getxattr(path, "user.fencefs.epoch")))

            assert self.as_ident("checker", check) == (f.content, f.version, f.epoch), name


MountMachine.TestCase.settings = settings(
    max_examples=examples("FENCEFS_MODEL_EXAMPLES", 12, 200),
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
TestMountMachine = MountMachine.TestCase


class CoreMachine(RuleBasedStateMachine):
    """The same model against the pure core: fast, many examples."""

    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.core = Coordinator()
        self.model = Model()
        self.claims: dict[int, Any] = {}
        self.next_hid = 0
        for name in FILES:
            self.core.adopt(name, Persisted(0, 0))
            self.model.create(name)

    @rule(target=handles, ident=st.sampled_from(IDENTS), name=st.sampled_from(FILES),
          mode=mode_st)
    def open_write(self, ident: str, name: str, mode: str) -> int:
        hid = self.next_hid
        self.next_hid += 1
        expected = self.model.open_write(hid, ident, name, mode)
        try:
            claim = self.core.open_write(name, ident, 1, rewrite=mode == "trunc",
                                         append=mode == "append")
            got = None
        except FenceError as e:
            got = e.errno
        assert got == expected
        if got is None:
            self.claims[hid] = claim
        return hid if got is None else -1

    @rule(hid=handles, data=data_st)
    def write(self, hid: int, data: bytes) -> None:
        if hid not in self.claims:
            return
        h = self.model.handles[hid]
        before = h.error
        expected = self.model.write(hid, data)
        if before is not None:
            return  # the FUSE layer answers a dead handle; the core is not asked
        try:
            self.core.check(self.claims[hid])
            got = None
        except FenceError as e:
            got = e.errno
        assert got == expected

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
        needs_core = h.error is None and h.dirty
        expected = self.model.close(hid) if close else self.model.commit(hid)
        got: int | None = h.error if not needs_core else None
        if needs_core:
            try:
                self.core.commit(self.claims[hid], lambda v, e: None)
            except FenceError as e:
                got = e.errno
        assert got == expected
        if close:
            self.core.release(self.claims.pop(hid))

    @rule(ident=st.sampled_from(IDENTS), name=st.sampled_from(FILES))
    def read(self, ident: str, name: str) -> None:
        self.model.observe(ident, name)
        f = self.core.get(name)
        assert f is not None
        self.core.observe(name, ident, 1, f.version, f.epoch)

    @rule(name=st.sampled_from(FILES))
    def reclaim(self, name: str) -> None:
        self.model.reclaim(name)
        self.core.reclaim(name, lambda e: None)

    @precondition(lambda self: not self.claims)
    @rule()
    def restart(self) -> None:
        self.model.restart()
        persisted = {n: Persisted(f.version, f.epoch) for n, f in
                     ((n, self.core.get(n)) for n in FILES) if f is not None}
        self.core = Coordinator()
        for name, p in persisted.items():
            self.core.adopt(name, p)

    @invariant()
    def versions_match(self) -> None:
        for name, f in self.model.files.items():
            state = self.core.get(name)
            assert state is not None
            assert (state.version, state.epoch) == (f.version, f.epoch)


CoreMachine.TestCase.settings = settings(
    max_examples=examples("FENCEFS_CORE_EXAMPLES", 400, 10000),
    stateful_step_count=40,
    deadline=None,
)
TestCoreMachine = CoreMachine.TestCase

assert errno.EAGAIN != errno.ESTALE
