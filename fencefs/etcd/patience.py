"""Start-up steps that need etcd, retried with backoff within a bound.

A daemon with ``--etcd`` needs etcd before it serves: to check the backing
marker, to recover its own drafts, to take its lease. etcd may be briefly
away then (an election, a member restarting, a network blip right after the
mount command's own check): each such step is retried while etcd is
unreachable, with a doubling pause (0.1 s up to 2 s), until
``--etcd-start-timeout`` seconds have passed; then the step fails with one
clear line. Refusals (a bad password, a permission, a foreign backing) are
not retried: asking again gets the same answer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from fencefs.etcd.client import EtcdUnreachable

log = logging.getLogger("fencefs.etcd")

T = TypeVar("T")

FIRST_PAUSE = 0.1
LONGEST_PAUSE = 2.0


async def patiently(what: str, step: Callable[[], Awaitable[T]], timeout: float) -> T:
    """``await step()``, again after each ``EtcdUnreachable`` until ``timeout``
    seconds have passed; then ``EtcdUnreachable`` saying for how long and why."""
    deadline = trio.current_time() + timeout
    pause = FIRST_PAUSE
    tries = 0
    while True:
        tries += 1
        try:
            return await step()
        except EtcdUnreachable as e:
            left = deadline - trio.current_time()
            if left <= 0:
                raise EtcdUnreachable(f"etcd unreachable for {timeout:g} s ({tries} tries) "
                                      f"while {what}: {e}") from None
            if tries == 1:
                log.warning("etcd unreachable while %s: retrying for up to %g s (%s)",
                            what, timeout, e)
            await trio.sleep(min(pause, left))
            pause = min(pause * 2, LONGEST_PAUSE)
