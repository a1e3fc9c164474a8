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
from hypothesis import HealthCheck, core, settings

from tests.support.agent import Agent
from tests.support.mount import Mount, daemon_errors, require_fuse

# Every daemon a test starts asserts that its check-and-install sections reach
# no checkpoint (G3, fencefs/engine/atomic.py).
os.environ["FENCEFS_CHECK_ATOMIC"] = "1"

# -- hypothesis: exploring, loudly ----------------------------------------------
# Under CI, hypothesis would load its own "ci" profile, which derandomizes:
# every run would replay the same few sequences. Ours explores with a fresh
# seed per run, printed in the header (replay with FENCEFS_HYPOTHESIS_SEED=N or
# --hypothesis-seed=N). The example counts are set per test (sized to the CI
# budget) and scaled up by the "slow" profile (pytest -m slow
# --hypothesis-profile=slow), see tests/support/explore.py.
settings.register_profile("fencefs-ci", derandomize=False, database=None, print_blob=True,
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", parent=settings.get_profile("fencefs-ci"))
if os.environ.get("CI"):
    settings.load_profile("fencefs-ci")

# -- skips: under CI, a skip is a failure ---------------------------------------
# Except these, each with its reason (test node ids, by prefix):
SKIP_ALLOWED_IN_CI = {
    # CrewAI installs about 1 GB: scripts/test-crewai runs it in a job of its own.
    "tests/adapters/test_crewai.py",
}


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("CI") or config.getoption("hypothesis_seed", None) is not None:
        return
    seed = os.environ.get("FENCEFS_HYPOTHESIS_SEED") or str(int.from_bytes(os.urandom(4)))
    core.global_force_seed = int(seed)  # type: ignore[attr-defined]
    config.stash[SEED] = seed


SEED = pytest.StashKey[str]()


def _seed_line(config: pytest.Config) -> str | None:
    seed = config.stash.get(SEED, None)
    if seed is None:
        return None
    return (f"hypothesis: profile {settings.get_current_profile_name()!r}, seed {seed} "
            f"(replay: FENCEFS_HYPOTHESIS_SEED={seed})")


def pytest_report_header(config: pytest.Config) -> str | None:
    return _seed_line(config)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    line = _seed_line(config)  # at the end too, where -q and a failure show it
    if line is not None:
        terminalreporter.write_line(line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if not (os.environ.get("CI") and report.skipped) or hasattr(report, "wasxfail"):
        return
    if any(item.nodeid.startswith(allowed) for allowed in SKIP_ALLOWED_IN_CI):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"skipped under CI, where a skip is a failure: {reason}"


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
