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


class _History:
    def __init__(self) -> None:
        self.wanted = trio.Event()
        self.sweeps = 0

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


def test_upkeep_ticks_once_per_interval_on_trios_clock() -> None:
    history, journaling = _History(), _Journaling()
    none: Any = None
    upkeep = Upkeep(none, _Readers(), none, history, journaling,  # type: ignore[arg-type]
                    none, none, none, None, sweep_after=None)

    async def main() -> None:
        with trio.move_on_after(10.5):
            await upkeep.maintain(interval=2.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # ticks at 2, 4, 6, 8, 10 (virtual) seconds: each one sweep and one flush
    assert journaling.flushes == 5
    assert history.sweeps == 5
