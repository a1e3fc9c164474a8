"""G3 made structural: the check-and-install sections never reach a checkpoint.

Under trio, code between two checkpoints runs without interruption, and that
is all that makes "check, journal, rename, advance" one step on one host.
Each such section is a plain synchronous ``def`` (Python rejects an ``await``
in it), called inside ``atomic()``. With ``FENCEFS_CHECK_ATOMIC=1`` in the
daemon's environment (the test suite sets it) ``atomic()`` also asserts, with
``trio.testing.assert_no_checkpoints``, that nothing inside it yielded: an
``await`` slipped into a section (by making it ``async``) fails the request,
which tests see. Without it ``atomic()`` costs one branch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import trio.testing

CHECKING = os.environ.get("FENCEFS_CHECK_ATOMIC") == "1"


@contextlib.contextmanager
def atomic() -> Iterator[None]:
    """The body runs as one step: no checkpoint (asserted when CHECKING)."""
    if not CHECKING:
        yield
        return
    with trio.testing.assert_no_checkpoints():
        yield
