"""Fixtures: a real fencefs mount per test, mounts with options, test agents.

The helpers live in tests/support/ (mount.py: Mount; agent.py: the test
agent; procs.py); tests import them from there. Mount fixtures fail a test
whose daemon logged a traceback or an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.agent import Agent
from tests.support.mount import Mount, daemon_errors, require_fuse

# Every daemon a test starts asserts that its check-and-install sections reach
# no checkpoint (G3, fencefs/engine/atomic.py).
os.environ["FENCEFS_CHECK_ATOMIC"] = "1"


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    require_fuse()
    m = Mount(tmp_path)
    m.start()
    try:
        yield m
    finally:
        m.stop()
    log = m.log()
    assert not daemon_errors(log), f"daemon logged errors:\n{log}"


@pytest.fixture
def make_mount(tmp_path: Path) -> Iterator[object]:
    """Factory for mounts with extra options."""
    require_fuse()
    made: list[Mount] = []

    def factory(*extra: str, name: str = "m") -> Mount:
        base = tmp_path / name
        base.mkdir(exist_ok=True)
        m = Mount(base, *extra)
        m.start()
        made.append(m)
        return m

    yield factory
    for m in made:
        m.stop()
    for m in made:
        log = m.log()
        assert not daemon_errors(log), f"daemon logged errors:\n{log}"


@pytest.fixture
def agents() -> Iterator[Callable[..., Agent]]:
    """Factory for test agents (tests/support/agent.py); all end with the test."""
    made: list[Agent] = []

    def factory(name: str | None = None, **kwargs: object) -> Agent:
        made.append(Agent(name, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield factory
    for a in made:
        if a.proc.returncode is None:
            try:
                a.close(timeout=10)
            except Exception:
                a.proc.kill()
                a.proc.communicate()
