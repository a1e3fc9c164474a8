"""The upkeep loop keeps its tick on trio's clock.

trio's clock is not ``time.monotonic()`` (it starts at an offset, random in
real runs); a deadline taken from ``time.monotonic()`` and handed to
``trio.move_on_at`` is meaningless: in a real run it is long past and the
loop spun, sweeping as fast as it could (a third of a daemon's CPU under
load). Under a mock clock that starts at 0 the same bug shows the other way:
the first tick lies hours ahead and the periodic work never runs. The
loop's collaborators are stand-ins that count (the loop is all that runs).
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from fencefs.fuse.upkeep import Upkeep
from fencefs.store.retention import Retention


class _History:
    def __init__(self) -> None:
        self.wanted = trio.Event()
        self.sweeps = 0
        self.policy = Retention()

    async def scan(self) -> None:
        pass

    async def sweep(self, now: float) -> None:
        self.sweeps += 1
        self.wanted = trio.Event()


class _Journaling:
    def __init__(self) -> None:
        self.flushes = 0

    async def flush_namespace(self) -> None:
        self.flushes += 1


class _Readers:
    identity_pids: dict[str, set[int]] = {}


class _Snapshots:
    def over_bounds(self, count: int, age: float, now: float) -> list[Any]:
        return []


class _Transactions:
    def __init__(self) -> None:
        self.sweeps = 0

    def sweep_abandoned(self, owner_alive: Any, now: float, keep_for: float) -> None:
        self.sweeps += 1


def test_upkeep_ticks_once_per_interval_on_trios_clock() -> None:
    history, journaling, txns = _History(), _Journaling(), _Transactions()
    none: Any = None
    upkeep = Upkeep(none, _Readers(), none, history, journaling,  # type: ignore[arg-type]
                    txns, _Snapshots(), none, None, sweep_after=None)  # type: ignore[arg-type]

    async def main() -> None:
        with trio.move_on_after(10.5):
            await upkeep.maintain(interval=2.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # ticks at 2, 4, 6, 8, 10 (virtual) seconds: each one sweep and one flush
    assert journaling.flushes == 5 and txns.sweeps == 5
    assert history.sweeps == 5
