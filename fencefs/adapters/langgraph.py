"""LangGraph: a ``BaseStore`` that keeps one file per item, fenced.

    from fencefs.adapters.langgraph import FenceStore
    from fencefs.client import FenceConflict
    from langgraph.types import RetryPolicy

    store = FenceStore("/mnt/shared/store")
    builder.add_node("remember", remember, retry_policy=RetryPolicy(retry_on=FenceConflict))
    graph = builder.compile(store=store)

Layout: ``ROOT/<label>/<label>/.../<key>.json``, each label and key encoded
as a safe file name (``fencefs.adapters._names``). A file holds the item as
JSON (namespace, key, value, created_at, updated_at); a deleted item is an
empty file, so that its version keeps counting.

Fencing: every item a ``get`` or ``search`` returns is a ``FenceItem``
carrying the ``version`` and ``epoch`` it was read at, and the store
remembers that read for the code that made it (a context variable: each
LangGraph node run, each thread and each asyncio task has its own). A later
``put`` or ``delete`` of that item by the same code commits only if the file
is still at that version (and epoch); otherwise it raises ``FenceConflict``
(or ``Fenced``), and a ``RetryPolicy(retry_on=FenceConflict)`` re-runs the
node, which reads afresh. A put of an item the code never read is blind: it
replaces whatever is there (retried internally on a conflict), as a blind
writer does on the mount.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from fencefs import client
from fencefs.adapters._names import decode, encode

__all__ = ["FenceItem", "FenceSearchItem", "FenceStore"]

Stamp = tuple[int, int | None]  # (version, epoch) an item was read or written at

# The reads the current code rests on, by item path. Immutable: a context that
# records a read sets a new mapping, so a node's reads never leak into its
# caller or into other nodes (LangGraph runs each node attempt in a copy of
# the context).
_READS: ContextVar[Mapping[str, Stamp]] = ContextVar("fencefs_langgraph_reads",
                                                     default=MappingProxyType({}))
_MAX_READS = 4096  # per context; the oldest are dropped first (their puts are then blind)

SUFFIX = ".json"


class _Versioned:
    """What both item kinds add: the ``version`` and ``epoch`` of the file."""

    version: int
    epoch: int

    def __init__(self, *, version: int, epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.epoch = epoch

    def dict(self) -> dict[str, Any]:
        return {**super().dict(), "version": self.version, "epoch": self.epoch}  # type: ignore[misc]


class FenceItem(_Versioned, Item):
    """An ``Item`` with the ``version`` and ``epoch`` of the file it was read from."""


class FenceSearchItem(_Versioned, SearchItem):
    """A ``SearchItem`` with ``version`` and ``epoch``; ``score`` is always None."""


class FenceStore(BaseStore):
    """A LangGraph store over files under ``root`` (on a fencefs mount, or not).

    ``search`` supports ``filter`` (exact values and ``$eq``, ``$ne``,
    ``$gt``, ``$gte``, ``$lt``, ``$lte``), ``limit`` and ``offset``; there is
    no vector index, so ``query`` is ignored and every ``score`` is None.
    Results are ordered by namespace, then key. No TTL (``supports_ttl`` is
    False). ``retries`` bounds the internal retries of blind puts.
    """

    supports_ttl = False

    def __init__(self, root: str | os.PathLike[str], *, retries: int = 8) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.retries = retries
        os.makedirs(self.root, exist_ok=True)

    # -- BaseStore -------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        results, seen = self._run(list(ops), _READS.get())
        _remember(seen)
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        # The file I/O runs on a worker thread; the reads are recorded here,
        # in the caller's context (a worker thread's context is a copy).
        results, seen = await asyncio.to_thread(self._run, list(ops), _READS.get())
        _remember(seen)
        return results

    # -- paths -----------------------------------------------------------------

    def _dir(self, namespace: tuple[str, ...]) -> str:
        return os.path.join(self.root, *(encode(label) for label in namespace))

    def _path(self, namespace: tuple[str, ...], key: str) -> str:
        return os.path.join(self._dir(namespace), encode(key) + SUFFIX)

    # -- operations ------------------------------------------------------------

    def _run(self, ops: list[Op], reads: Mapping[str, Stamp]) -> tuple[list[Result],
                                                                       dict[str, Stamp]]:
        seen: dict[str, Stamp] = {}
        results: list[Result] = []
        for op in ops:
            if isinstance(op, GetOp):
                path = self._path(op.namespace, op.key)
                item, stamp = self._load(path)
                seen[path] = stamp
                results.append(item)
            elif isinstance(op, SearchOp):
                results.append(self._search(op, seen))
            elif isinstance(op, PutOp):
                path = self._path(op.namespace, op.key)
                rested = seen.get(path, reads.get(path))
                written = self._put(op, path, rested)
                if written is not None:
                    seen[path] = written
                results.append(None)
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            else:
                raise TypeError(f"unknown store operation {op!r}")
        return results, seen

    def _load(self, path: str) -> tuple[FenceItem | None, Stamp]:
        try:
            data, version, epoch = client.read_versioned(path)
        except FileNotFoundError:
            return None, (0, None)
        if not data:  # deleted
            return None, (version, epoch)
        doc = json.loads(data)
        item = FenceItem(value=doc["value"], key=doc["key"], namespace=tuple(doc["namespace"]),
                         created_at=doc["created_at"], updated_at=doc["updated_at"],
                         version=version, epoch=epoch)
        return item, (version, epoch)

    def _put(self, op: PutOp, path: str, rested: Stamp | None) -> Stamp | None:
        now = datetime.now(UTC).isoformat()

        def content(old: bytes) -> bytes:
            if op.value is None:
                return b""
            created = now
            if old:
                created = json.loads(old).get("created_at", now)
            doc = {"namespace": list(op.namespace), "key": op.key, "value": dict(op.value),
                   "created_at": created, "updated_at": now}
            return json.dumps(doc).encode()

        if rested is None:  # blind: the latest put wins, as a blind writer on the mount
            if op.value is None and not os.path.exists(path):
                return None
            os.makedirs(os.path.dirname(path), exist_ok=True)
            done = client.update(path, content, create=True, retries=self.retries)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            done = client.replace(path, content, version=rested[0], epoch=rested[1])
        return done.version, done.epoch

    def _items_under(self, prefix: tuple[str, ...]) -> Iterable[str]:
        base = self._dir(prefix)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith(".") and name.endswith(SUFFIX):
                    yield os.path.join(dirpath, name)

    def _search(self, op: SearchOp, seen: dict[str, Stamp]) -> list[SearchItem]:
        found: list[SearchItem] = []
        skip = op.offset
        for path in self._items_under(op.namespace_prefix):
            item, stamp = self._load(path)
            if item is None or (op.filter and not _matches(item.value, op.filter)):
                continue
            if skip:
                skip -= 1
                continue
            seen[path] = stamp
            found.append(FenceSearchItem(
                namespace=item.namespace, key=item.key, value=item.value,
                created_at=item.created_at, updated_at=item.updated_at, score=None,
                version=item.version, epoch=item.epoch))
            if len(found) >= op.limit:
                break
        return found

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        spaces: set[tuple[str, ...]] = set()
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            live = any(not n.startswith(".") and n.endswith(SUFFIX)
                       and os.path.getsize(os.path.join(dirpath, n)) > 0 for n in filenames)
            if not live:
                continue
            rel = os.path.relpath(dirpath, self.root)
            if rel == ".":
                continue
            namespace = tuple(decode(part) for part in rel.split(os.sep))
            if op.match_conditions and not all(_ns_matches(c, namespace)
                                               for c in op.match_conditions):
                continue
            if op.max_depth is not None:
                namespace = namespace[:op.max_depth]
            spaces.add(namespace)
        return sorted(spaces)[op.offset:op.offset + op.limit]


def _remember(seen: dict[str, Stamp]) -> None:
    if not seen:
        return
    reads = dict(_READS.get())
    for path, stamp in seen.items():
        reads.pop(path, None)  # re-inserted last: the most recent
        reads[path] = stamp
    while len(reads) > _MAX_READS:
        del reads[next(iter(reads))]
    _READS.set(MappingProxyType(reads))


def _ns_matches(cond: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(cond.path)
    if len(namespace) < len(path):
        return False
    part = namespace[:len(path)] if cond.match_type == "prefix" else namespace[-len(path):]
    if not path:
        return True
    return all(want == "*" or want == got for want, got in zip(path, part, strict=True))


_OPS = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a is not None and a > b,
    "$gte": lambda a, b: a is not None and a >= b,
    "$lt": lambda a, b: a is not None and a < b,
    "$lte": lambda a, b: a is not None and a <= b,
}


def _matches(value: Any, wanted: Any) -> bool:
    """Whether ``value`` satisfies the filter ``wanted`` (nested dicts, operators)."""
    if isinstance(wanted, dict):
        if wanted and all(k.startswith("$") for k in wanted):
            for op, operand in wanted.items():
                if op not in _OPS:
                    raise ValueError(f"unsupported filter operator {op}")
                try:
                    if not _OPS[op](value, operand):
                        return False
                except TypeError:
                    return False
            return True
        if not isinstance(value, dict):
            return False
        return all(_matches(value.get(k), w) for k, w in wanted.items())
    return bool(value == wanted)
