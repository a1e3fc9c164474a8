"""fencefs.adapters.crewai.FenceStorage: two crews consolidate into one memory
record (issue 8).

CrewAI is about 1 GB installed, so CI does not install it: these tests skip
there (the one documented exception) and run with ``bash scripts/test-crewai``,
which makes its own virtualenv with ``fencefs[crewai]``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.adapters.conftest import Race, need
from tests.support.mount import Mount

need("crewai", "crewai")

from crewai import Memory  # noqa: E402
from crewai.memory.types import MemoryRecord  # noqa: E402

from fencefs.adapters.crewai import FenceStorage  # noqa: E402
from fencefs.client import FenceConflict  # noqa: E402


def embed(texts: list[str]) -> list[list[float]]:
    """A deterministic stand-in for an embedding model (no API key)."""
    out = []
    for text in texts:
        digest = hashlib.sha256(text.encode()).digest()
        out.append([b / 255 for b in digest[:16]])
    return out


def seed_record(storage: Any) -> str:
    record = MemoryRecord(content="The client wants the report on Friday.", scope="/project",
                          categories=["deadlines"], embedding=embed(["report"])[0])
    storage.save([record])
    return record.id


def consolidate(storage: Any, record_id: str, who: str, addition: str, race: Race) -> None:
    """What CrewAI's consolidation does with a similar record: read it, merge
    the new fact into it (the LLM's job), update it."""
    existing = storage.get_record(record_id)
    assert existing is not None
    race.pause(who)
    merged = existing.model_copy(update={"content": f"{existing.content} {addition}"})
    storage.update(merged)


def two_crews(make_storage: Any) -> tuple[dict[str, BaseException | None], str, Any]:
    first = make_storage()
    record_id = seed_record(first)
    race = Race()
    alice, bob = make_storage(), make_storage()
    outcome = race.run_threads(
        lambda: consolidate(alice, record_id, "alice", "It must include the budget.", race),
        lambda: consolidate(bob, record_id, "bob", "It must be in French.", race))
    return outcome, record_id, make_storage()


def test_without_fencefs_one_update_is_lost(tmp_path: Path) -> None:
    from crewai.memory.storage.lancedb_storage import LanceDBStorage  # CrewAI's default

    outcome, record_id, storage = two_crews(lambda: LanceDBStorage(path=str(tmp_path / "db")))
    assert outcome == {"alice": None, "bob": None}
    record = storage.get_record(record_id)
    assert record.content == "The client wants the report on Friday. It must be in French."


def test_on_fencefs_the_loser_gets_fence_conflict(mount: Mount) -> None:
    root = mount.path("crew-memory")
    outcome, record_id, storage = two_crews(lambda: FenceStorage(root))
    assert outcome["alice"] is None
    assert isinstance(outcome["bob"], FenceConflict)
    record = storage.get_record(record_id)
    assert record.content == "The client wants the report on Friday. It must include the budget."
    # bob reads again and merges: nothing is lost
    bob, no_race = FenceStorage(root), Race()
    no_race.paused.add("bob")  # no waiting this time
    consolidate(bob, record_id, "bob", "It must be in French.", no_race)
    assert storage.get_record(record_id).content.endswith("budget. It must be in French.")


def test_on_the_fallback_the_loser_gets_fence_conflict(tmp_path: Path) -> None:
    outcome, _, _ = two_crews(lambda: FenceStorage(tmp_path / "crew-memory"))
    assert outcome["alice"] is None and isinstance(outcome["bob"], FenceConflict)


def test_saves_are_append_only_and_deletes_fenced(mount: Mount) -> None:
    root = mount.path("crew-memory")
    crews = [FenceStorage(root) for _ in range(4)]
    threads = [threading.Thread(target=lambda s=s, n=n: s.save([
        MemoryRecord(content=f"fact {n}.{i}", scope=f"/team/{n}", categories=[f"c{n % 2}"],
                     embedding=embed([f"fact {n}.{i}"])[0]) for i in range(5)]))
        for n, s in enumerate(crews)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    reader = FenceStorage(root)
    assert reader.count() == 20 and len(reader.record_ids()) == 20
    assert reader.list_scopes("/") == ["/team"]
    assert reader.list_scopes("/team") == [f"/team/{n}" for n in range(4)]
    assert reader.list_categories() == {"c0": 10, "c1": 10}
    assert reader.count("/team/1") == 5
    info = reader.get_scope_info("/team")
    assert info.record_count == 20 and info.child_scopes == reader.list_scopes("/team")
    hits = reader.search(embed(["fact 2.3"])[0], limit=3)
    assert hits[0][0].content == "fact 2.3" and hits[0][1] == pytest.approx(1.0)
    assert [r.content for r in reader.list_records("/team/3", limit=2)] != []
    # a delete by id rests on what this storage read
    victim = hits[0][0].id
    other = FenceStorage(root)
    record = other.get_record(victim)
    assert record is not None
    other.update(record.model_copy(update={"content": "fact 2.3, corrected"}))
    with pytest.raises(FenceConflict):
        reader.delete(record_ids=[victim])
    assert reader.get_record(victim).content == "fact 2.3, corrected"  # type: ignore[union-attr]
    assert reader.delete(record_ids=[victim]) == 1
    assert reader.get_record(victim) is None and reader.count() == 19
    reader.reset("/team/0")
    assert reader.count() == 14


def test_memory_uses_the_storage_and_failures_are_swallowed(
        mount: Mount, caplog: pytest.LogCaptureFixture) -> None:
    root = mount.path("crew-memory")
    memory = Memory(storage=FenceStorage(root), embedder=embed)
    record = memory.remember("The API key rotates monthly.", scope="/ops",
                             categories=["security"], importance=0.9)
    assert record is not None
    assert os.path.exists(os.path.join(root, record.id + ".json"))
    matches = memory.recall("The API key rotates monthly.", depth="shallow")
    assert [m.record.id for m in matches] == [record.id]

    class Conflicting(FenceStorage):
        def save(self, records: list[MemoryRecord]) -> None:
            raise FenceConflict(os.path.join(root, "x.json"), rested_version=1,
                                current_version=2)

    caplog.set_level(logging.ERROR, logger="crewai.flow.runtime")
    quiet = Memory(storage=Conflicting(root), embedder=embed)
    # What agents call after a task: returns at once and never raises...
    assert quiet.remember_many(["a new fact"], scope="/ops", categories=["x"],
                               importance=0.5) == []
    quiet.drain_writes()
    errors = [r.getMessage() for r in caplog.records if r.name == "crewai.flow.runtime"]
    assert len([e for e in errors if "conflict on" in e]) == 1, errors  # only a log line
    # The blocking remember() does raise it.
    with pytest.raises(FenceConflict):
        quiet.remember("another fact", scope="/ops", categories=["x"], importance=0.5)
    assert memory.recall("a new fact", depth="shallow", limit=10)[0].record.id == record.id
