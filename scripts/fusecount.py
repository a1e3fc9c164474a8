"""Run a pyfuse3 filesystem with a count of the FUSE requests it answers.

    python scripts/fusecount.py COUNTS.json -m fencefs.cli mount --foreground B M
    python scripts/fusecount.py COUNTS.json path/to/passthroughfs.py B M

Wraps every request handler of the Operations instance handed to
``pyfuse3.init`` with a counter (one dict increment per request, the same
cost for any filesystem it runs). On SIGUSR1 the counts so far are written to
COUNTS.json (atomically: a temporary file renamed over it), with ``seq``, the
number of dumps so far, so that a reader can wait for the dump it asked for,
and the seconds spent in each kind of handler (from the start of a request to
its answer, waits included).
Used by ``scripts/bench --workspace`` to count the requests of every step.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import runpy
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3

COUNTS: Counter[str] = Counter()
SECONDS: Counter[str] = Counter()  # time from a request's start to its answer
_dumps = 0


def _counted(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def handler(*args: Any, **kwargs: Any) -> Any:
        COUNTS[name] += 1
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            SECONDS[name] += time.perf_counter() - start

    return handler


def _instrument(ops: pyfuse3.Operations) -> None:
    for name in dir(pyfuse3.Operations):
        if name.startswith("_"):
            continue
        fn = getattr(ops, name, None)
        if fn is not None and inspect.iscoroutinefunction(fn):
            setattr(ops, name, _counted(name, fn))


def _dump(path: str) -> None:
    global _dumps
    _dumps += 1
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"seq": _dumps, "counts": dict(COUNTS), "seconds": dict(SECONDS)}, f)
    os.replace(tmp, path)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    counts_path, rest = argv[0], argv[1:]
    real_init = pyfuse3.init

    def init(ops: pyfuse3.Operations, *args: Any, **kwargs: Any) -> None:
        _instrument(ops)
        real_init(ops, *args, **kwargs)

    pyfuse3.init = init
    signal.signal(signal.SIGUSR1, lambda *_: _dump(counts_path))
    if rest[0] == "-m":
        sys.path[0] = os.getcwd()  # as ``python -m`` has it (not this script's directory)
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
