"""Adapter tests: each framework is an optional extra.

``need(module, extra)`` imports a framework or skips the module that asked for
it, so a missing extra skips only that adapter's tests locally. Under CI (CI
set) a missing extra is a failure, except for the extras listed in
``CI_OPTIONAL``: CrewAI is about 1 GB and is tested by ``scripts/test-crewai``
in its own virtualenv instead (see README.md), which sets
``FENCEFS_REQUIRE_EXTRAS=crewai`` so that there a missing CrewAI fails too.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import threading
from collections.abc import Awaitable, Callable
from types import ModuleType

import pytest

CI_OPTIONAL = {"crewai"}


def need(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        reason = f"{module} is missing (pip install 'fencefs[{extra}]'): {e}"
        required = os.environ.get("FENCEFS_REQUIRE_EXTRAS", "").split(",")
        if (os.environ.get("CI") and extra not in CI_OPTIONAL) or extra in required:
            pytest.fail(f"the {extra} adapter must be tested here, but {reason}",
                        pytrace=False)
        pytest.skip(reason, allow_module_level=True)


class Race:
    """Two agents, alice and bob, made to race the same way every time: both
    read the shared state, then alice finishes her whole turn, then bob writes
    what he computed from his (now stale) read. ``pause(who)`` goes between an
    agent's read and its write; only an agent's first pause waits, so a retry
    runs straight through."""

    def __init__(self) -> None:
        self.both_read = threading.Barrier(2, timeout=30)
        self.alice_done = threading.Event()
        self.paused: set[str] = set()
        self.lock = threading.Lock()

    def pause(self, who: str) -> None:
        with self.lock:
            if who in self.paused:
                return
            self.paused.add(who)
        self.both_read.wait()
        if who == "bob":
            assert self.alice_done.wait(30), "alice never finished"

    async def apause(self, who: str) -> None:
        await asyncio.to_thread(self.pause, who)

    def run_threads(self, alice: Callable[[], object],
                    bob: Callable[[], object]) -> dict[str, BaseException | None]:
        """Run alice and bob in two threads; each one's exception or None."""
        outcome: dict[str, BaseException | None] = {}

        def agent(who: str, fn: Callable[[], object]) -> None:
            try:
                fn()
                outcome[who] = None
            except BaseException as e:  # reported to the test
                outcome[who] = e
            finally:
                if who == "alice":
                    self.alice_done.set()

        threads = [threading.Thread(target=agent, args=("alice", alice)),
                   threading.Thread(target=agent, args=("bob", bob))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return outcome

    async def run_tasks(self, alice: Callable[[], Awaitable[object]],
                        bob: Callable[[], Awaitable[object]]) -> dict[str, BaseException | None]:
        """Run alice and bob as two asyncio tasks of one event loop."""
        outcome: dict[str, BaseException | None] = {}

        async def agent(who: str, fn: Callable[[], Awaitable[object]]) -> None:
            try:
                await fn()
                outcome[who] = None
            except BaseException as e:  # reported to the test
                outcome[who] = e
            finally:
                if who == "alice":
                    self.alice_done.set()

        await asyncio.wait_for(asyncio.gather(agent("alice", alice), agent("bob", bob)), 60)
        return outcome
