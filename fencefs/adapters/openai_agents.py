"""OpenAI Agents SDK: a ``Session`` kept in one JSON-lines file, fenced per run.

    from agents import Runner
    from fencefs.adapters.openai_agents import FenceSession

    session = FenceSession("support-42", "/mnt/shared/sessions")
    result = await Runner.run(agent, "hello", session=session)

The conversation is ``ROOT/<session_id>.jsonl`` (the id encoded as a safe
file name), one item per line.

Fencing: the session opts into the SDK's per-run ``wrapper`` argument, so it
knows which run calls it. A run's first ``get_items`` records the version of
the history it read; every ``add_items``, ``pop_item`` or ``clear_session``
of that run commits only if the file is still at the version that run last
read or wrote. When two runs on one session overlap, the first to write wins
and the other's write raises ``FenceConflict``, which ends its
``Runner.run``: its turn was computed from a history that no longer exists.
Run it again (it reads the new history) or give up. Calls made outside a run
(no ``wrapper``) are not tied to a read: ``add_items`` then appends to the
current content through one fenced read-modify-write, so concurrent appends
never lose each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from agents.memory import SessionABC
from agents.memory.session_settings import SessionSettings, resolve_session_limit

from fencefs import client
from fencefs.adapters._names import encode

__all__ = ["FenceSession"]

Stamp = tuple[int, int | None]


class FenceSession(SessionABC):
    """A session stored under ``root`` (on a fencefs mount, or not)."""

    def __init__(
        self,
        session_id: str,
        root: str | os.PathLike[str],
        *,
        session_settings: SessionSettings | None = None,
        retries: int = 8,
    ) -> None:
        self.session_id = session_id
        self.session_settings = session_settings
        self.root = os.path.abspath(os.fspath(root))
        self.path = os.path.join(self.root, encode(session_id) + ".jsonl")
        self.retries = retries
        os.makedirs(self.root, exist_ok=True)
        # What each live run rests on, by id(wrapper); dropped with the wrapper.
        self._runs: dict[int, tuple[Callable[[], Any], Stamp]] = {}
        self._lock = threading.Lock()

    # -- per-run state ---------------------------------------------------------

    def _rested(self, wrapper: Any) -> Stamp | None:
        if wrapper is None:
            return None
        with self._lock:
            entry = self._runs.get(id(wrapper))
        return entry[1] if entry is not None and entry[0]() is wrapper else None

    def _rest(self, wrapper: Any, stamp: Stamp) -> None:
        if wrapper is None:
            return
        key = id(wrapper)

        def forget(_: object) -> None:
            with self._lock:
                self._runs.pop(key, None)

        ref: Callable[[], Any]
        try:
            ref = weakref.ref(wrapper, forget)
        except TypeError:  # not weak-referenceable: kept until the session goes
            ref = _Strong(wrapper)
        with self._lock:
            self._runs[key] = (ref, stamp)

    # -- file ------------------------------------------------------------------

    def _read(self) -> tuple[list[Any], Stamp]:
        try:
            data, version, epoch = client.read_versioned(self.path)
        except FileNotFoundError:
            return [], (0, None)
        return _parse(data), (version, epoch)

    def _write(self, wrapper: Any, change: Any) -> Any:
        """Apply ``change(items) -> (new_items, result)``, fenced as described
        in the module docstring; returns ``result``."""
        out: list[Any] = []

        def fn(old: bytes) -> bytes:
            items, result = change(_parse(old))
            out[:] = [result]
            return _dump(items)

        rested = self._rested(wrapper)
        if rested is None:
            done = client.update(self.path, fn, create=True, retries=self.retries)
        else:
            done = client.replace(self.path, fn, version=rested[0], epoch=rested[1])
        self._rest(wrapper, (done.version, done.epoch))
        return out[0] if out else None

    # -- Session ---------------------------------------------------------------

    async def get_items(self, limit: int | None = None, *, wrapper: Any = None) -> list[Any]:
        items, stamp = await asyncio.to_thread(self._read)
        if wrapper is not None and self._rested(wrapper) is None:
            self._rest(wrapper, stamp)  # the run rests on the first history it read
        n = resolve_session_limit(limit, self.session_settings)
        if n is not None and n > 0:
            return items[-n:]
        return items

    async def add_items(self, items: list[Any], *, wrapper: Any = None) -> None:
        if not items:
            return
        new = [json.loads(json.dumps(item)) for item in items]  # plain JSON, checked early
        await asyncio.to_thread(self._write, wrapper, lambda old: (old + new, None))

    async def pop_item(self, *, wrapper: Any = None) -> Any | None:
        def pop(old: list[Any]) -> tuple[list[Any], Any]:
            return (old[:-1], old[-1]) if old else (old, None)

        return await asyncio.to_thread(self._write, wrapper, pop)

    async def clear_session(self, *, wrapper: Any = None) -> None:
        await asyncio.to_thread(self._write, wrapper, lambda old: ([], None))


class _Strong:
    """A strong reference with weakref's call interface."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __call__(self) -> Any:
        return self.obj


def _parse(data: bytes) -> list[Any]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def _dump(items: list[Any]) -> bytes:
    return b"".join(json.dumps(item, separators=(",", ":")).encode() + b"\n" for item in items)
