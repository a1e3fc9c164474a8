"""CrewAI: a memory ``StorageBackend`` with one file per record, fenced.

    from crewai import Memory
    from fencefs.adapters.crewai import FenceStorage

    memory = Memory(storage=FenceStorage("/mnt/shared/crew-memory"))

Each record is ``ROOT/<id>.json`` (the id encoded as a safe file name): the
record as JSON plus its embedding. Saves are append-only: a new record is a
new file, created only if no file of that id exists, so agents saving at once
never touch each other's records.

Fencing: every record this storage returns (``search``, ``get_record``,
``list_records``) is remembered with the version it was read at, by record
id, for this storage object. A later ``update`` of that record, or a
``delete`` of it by id or by filter, commits only if the record's file is
still at that version; otherwise it raises ``FenceConflict`` (``Fenced``
after a reclaim). CrewAI's consolidation reads similar records, asks the LLM
what to merge, then updates or deletes them, so two crews consolidating into
the same record resolve to one winner instead of one silently overwriting the
other. A record this storage never read is updated or deleted blind (against
its current version). A deleted record is left as an empty file, so its
version keeps counting.

CrewAI swallows errors of automatic memory saves: the background saves of
``remember_many`` (what agents and crews call after each task) report a
failure only as a ``MemorySaveFailedEvent`` on ``crewai_event_bus``, and an
agent's own save logs ``Failed to save to memory`` and goes on. A conflict
there is not raised to your code; see docs/adapters.md for how to observe it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from crewai.memory.types import MemoryRecord, ScopeInfo

from fencefs import client
from fencefs.adapters._names import decode, encode

__all__ = ["FenceStorage"]

SUFFIX = ".json"
Stamp = tuple[int, int | None]


class FenceStorage:
    """A CrewAI memory storage under ``root`` (on a fencefs mount, or not)."""

    def __init__(self, root: str | os.PathLike[str], *, retries: int = 8) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.retries = retries
        os.makedirs(self.root, exist_ok=True)
        self._reads: dict[str, Stamp] = {}  # record id -> what this storage read
        self._lock = threading.Lock()

    # -- files -----------------------------------------------------------------

    def _path(self, record_id: str) -> str:
        return os.path.join(self.root, encode(record_id) + SUFFIX)

    def _load(self, path: str) -> tuple[MemoryRecord | None, Stamp]:
        try:
            data, version, epoch = client.read_versioned(path)
        except FileNotFoundError:
            return None, (0, None)
        if not data:
            return None, (version, epoch)
        doc = json.loads(data)
        return MemoryRecord.model_validate(doc), (version, epoch)

    def _remember(self, record: MemoryRecord, stamp: Stamp) -> None:
        with self._lock:
            self._reads[record.id] = stamp

    def _all(self, remember: bool = False) -> Iterator[MemoryRecord]:
        for name in sorted(os.listdir(self.root)):
            if name.startswith(".") or not name.endswith(SUFFIX):
                continue
            record, stamp = self._load(os.path.join(self.root, name))
            if record is None:
                continue
            if remember:
                self._remember(record, stamp)
            yield record

    @staticmethod
    def _dump(record: MemoryRecord) -> bytes:
        doc = record.model_dump(mode="json")
        doc["embedding"] = record.embedding
        return json.dumps(doc).encode()

    def _commit(self, record_id: str, content: bytes | None) -> None:
        """Replace (``None``: delete) a record, resting on this storage's read of it."""
        path = self._path(record_id)
        with self._lock:
            rested = self._reads.get(record_id)
        data = b"" if content is None else content
        if rested is None:
            if content is None and not os.path.exists(path):
                return
            done = client.update(path, lambda _old: data, create=True, retries=self.retries)
        else:
            done = client.replace(path, data, version=rested[0], epoch=rested[1])
        with self._lock:
            if content is None:
                self._reads.pop(record_id, None)
            else:
                self._reads[record_id] = (done.version, done.epoch)

    # -- StorageBackend --------------------------------------------------------

    def save(self, records: list[MemoryRecord]) -> None:
        for record in records:
            done = client.replace(self._path(record.id), self._dump(record), version=0)
            self._remember(record, (done.version, done.epoch))

    def search(
        self,
        query_embedding: list[float],
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        metadata_filter: dict[str, Any] | None = None,
        limit: int = 10,
        min_score: float = 0.0,
    ) -> list[tuple[MemoryRecord, float]]:
        scored = []
        for record in self._matching(scope_prefix, categories, metadata_filter, remember=True):
            score = _cosine(query_embedding, record.embedding) if record.embedding else 0.0
            if score >= min_score:
                scored.append((record, score))
        scored.sort(key=lambda pair: pair[1], reverse=True)
        return scored[:limit]

    def delete(
        self,
        scope_prefix: str | None = None,
        categories: list[str] | None = None,
        record_ids: list[str] | None = None,
        older_than: datetime | None = None,
        metadata_filter: dict[str, Any] | None = None,
    ) -> int:
        victims = []
        for record in self._matching(scope_prefix, categories, metadata_filter):
            if record_ids is not None and record.id not in record_ids:
                continue
            if older_than is not None and not _before(record.created_at, older_than):
                continue
            victims.append(record.id)
        for record_id in victims:
            self._commit(record_id, None)
        return len(victims)

    def update(self, record: MemoryRecord) -> None:
        self._commit(record.id, self._dump(record))

    def get_record(self, record_id: str) -> MemoryRecord | None:
        record, stamp = self._load(self._path(record_id))
        if record is not None:
            self._remember(record, stamp)
        return record

    def list_records(self, scope_prefix: str | None = None, limit: int = 200,
                     offset: int = 0) -> list[MemoryRecord]:
        found = list(self._matching(scope_prefix, None, None, remember=True))
        found.sort(key=lambda r: r.created_at, reverse=True)
        return found[offset:offset + limit]

    def get_scope_info(self, scope: str) -> ScopeInfo:
        found = list(self._matching(scope, None, None))
        return ScopeInfo(
            path=scope, record_count=len(found),
            categories=sorted({c for r in found for c in r.categories}),
            oldest_record=min((r.created_at for r in found), default=None),
            newest_record=max((r.created_at for r in found), default=None),
            child_scopes=self.list_scopes(scope))

    def list_scopes(self, parent: str = "/") -> list[str]:
        base = parent.rstrip("/")
        children = set()
        for record in self._matching(parent, None, None):
            rest = record.scope.rstrip("/")[len(base):].lstrip("/")
            if rest:
                children.add(f"{base}/{rest.split('/')[0]}")
        return sorted(children)

    def list_categories(self, scope_prefix: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self._matching(scope_prefix, None, None):
            for category in record.categories:
                counts[category] = counts.get(category, 0) + 1
        return counts

    def count(self, scope_prefix: str | None = None) -> int:
        return sum(1 for _ in self._matching(scope_prefix, None, None))

    def reset(self, scope_prefix: str | None = None) -> None:
        for record in list(self._matching(scope_prefix, None, None)):
            with self._lock:
                self._reads.pop(record.id, None)  # a reset is deliberate: blind
            self._commit(record.id, None)

    def close(self) -> None:
        pass

    async def asave(self, records: list[MemoryRecord]) -> None:
        await asyncio.to_thread(self.save, records)

    async def asearch(self, query_embedding: list[float], scope_prefix: str | None = None,
                      categories: list[str] | None = None,
                      metadata_filter: dict[str, Any] | None = None, limit: int = 10,
                      min_score: float = 0.0) -> list[tuple[MemoryRecord, float]]:
        return await asyncio.to_thread(self.search, query_embedding, scope_prefix, categories,
                                       metadata_filter, limit, min_score)

    async def adelete(self, scope_prefix: str | None = None, categories: list[str] | None = None,
                      record_ids: list[str] | None = None, older_than: datetime | None = None,
                      metadata_filter: dict[str, Any] | None = None) -> int:
        return await asyncio.to_thread(self.delete, scope_prefix, categories, record_ids,
                                       older_than, metadata_filter)

    # -- filters ---------------------------------------------------------------

    def _matching(self, scope_prefix: str | None, categories: list[str] | None,
                  metadata_filter: dict[str, Any] | None,
                  remember: bool = False) -> Iterator[MemoryRecord]:
        for record in self._all(remember=remember):
            if scope_prefix and not _in_scope(record.scope, scope_prefix):
                continue
            if categories and not set(categories) & set(record.categories):
                continue
            if metadata_filter and any(record.metadata.get(k) != v
                                       for k, v in metadata_filter.items()):
                continue
            yield record

    def record_ids(self) -> list[str]:
        """Ids of every live record (for tests and tools)."""
        return [decode(n[:-len(SUFFIX)]) for n in sorted(os.listdir(self.root))
                if not n.startswith(".") and n.endswith(SUFFIX)
                and os.path.getsize(os.path.join(self.root, n)) > 0]


def _in_scope(scope: str, prefix: str) -> bool:
    base = prefix.rstrip("/")
    return not base or scope == base or scope.startswith(base + "/")


def _before(created: datetime, cutoff: datetime) -> bool:
    if (created.tzinfo is None) != (cutoff.tzinfo is None):
        created, cutoff = created.replace(tzinfo=None), cutoff.replace(tzinfo=None)
    return created < cutoff


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
