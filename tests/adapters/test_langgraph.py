"""fencefs.adapters.langgraph.FenceStore: two LangGraph agents race on one
store item (issue 8)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import pytest

from tests.adapters.conftest import Race, need
from tests.support.mount import Mount

need("langgraph", "langgraph")

from langchain_core.language_models.fake_chat_models import FakeListChatModel  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402
from langgraph.store.base import (  # noqa: E402
    BaseStore,
    GetOp,
    Item,
    Op,
    PutOp,
    Result,
)
from langgraph.types import RetryPolicy  # noqa: E402

from fencefs.adapters.langgraph import FenceItem, FenceStore  # noqa: E402
from fencefs.client import FenceConflict  # noqa: E402

NS = ("team", "notes")


class NaiveFileStore(BaseStore):
    """What one writes without fencefs: one JSON file per item, read and
    written with plain open()."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, namespace: tuple[str, ...], key: str) -> Path:
        return self.root.joinpath(*namespace, key + ".json")

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        out: list[Result] = []
        for op in ops:
            if isinstance(op, GetOp):
                path = self._path(op.namespace, op.key)
                if not path.exists():
                    out.append(None)
                    continue
                now = datetime.now(UTC)
                out.append(Item(value=json.loads(path.read_text()), key=op.key,
                                namespace=op.namespace, created_at=now, updated_at=now))
            elif isinstance(op, PutOp):
                path = self._path(op.namespace, op.key)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(op.value))
                out.append(None)
            else:
                raise NotImplementedError(op)
        return out

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))


class State(TypedDict, total=False):
    fact: str


def agent(who: str, store: BaseStore, race: Race, attempts: list[str],
          retry: bool = True) -> Any:
    """A one-node graph: ask the (fake) model for a fact, add it to the team's notes."""
    model = FakeListChatModel(responses=[f"{who} learned something"])

    def remember(state: State, *, store: BaseStore) -> State:
        attempts.append(who)
        fact = str(model.invoke("what did you learn?").content)
        item = store.get(NS, "facts")
        facts = list(item.value["facts"]) if item else []
        race.pause(who)
        store.put(NS, "facts", {"facts": facts + [fact]})
        return {"fact": fact}

    builder = StateGraph(State)
    policy = RetryPolicy(retry_on=FenceConflict, initial_interval=0.01, jitter=False)
    builder.add_node("remember", remember, retry_policy=policy if retry else None)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", END)
    return builder.compile(store=store)


def race_two(store: BaseStore, retry: bool = True) -> tuple[dict[str, BaseException | None],
                                                            list[str]]:
    race = Race()
    attempts: list[str] = []
    alice = agent("alice", store, race, attempts, retry)
    bob = agent("bob", store, race, attempts, retry)
    outcome = race.run_threads(lambda: alice.invoke({}), lambda: bob.invoke({}))
    return outcome, attempts


def facts(store: BaseStore) -> list[str]:
    item = store.get(NS, "facts")
    assert item is not None
    return list(item.value["facts"])


def test_without_fencefs_one_update_is_lost(tmp_path: Path) -> None:
    store = NaiveFileStore(tmp_path)
    store.put(NS, "facts", {"facts": ["seed"]})
    outcome, _ = race_two(store)
    assert outcome == {"alice": None, "bob": None}  # both "succeed"...
    assert facts(store) == ["seed", "bob learned something"]  # ...and alice's fact is gone


def test_on_fencefs_no_update_is_lost(mount: Mount) -> None:
    store = FenceStore(mount.path("store"))
    store.put(NS, "facts", {"facts": ["seed"]})
    outcome, attempts = race_two(store)
    assert outcome == {"alice": None, "bob": None}
    assert facts(store) == ["seed", "alice learned something", "bob learned something"]
    assert attempts.count("bob") == 2  # bob's node was re-run on fresh state
    item = store.get(NS, "facts")
    assert isinstance(item, FenceItem) and (item.version, item.epoch) == (3, 0)
    assert os.getxattr(mount.path("store/team/notes/facts.json"), "user.fencefs.version") == b"3"


def test_on_the_fallback_no_update_is_lost(tmp_path: Path) -> None:
    store = FenceStore(tmp_path / "store")
    store.put(NS, "facts", {"facts": ["seed"]})
    outcome, attempts = race_two(store)
    assert outcome == {"alice": None, "bob": None}
    assert facts(store) == ["seed", "alice learned something", "bob learned something"]
    assert attempts.count("bob") == 2


def test_without_retry_policy_the_loser_gets_fence_conflict(mount: Mount) -> None:
    store = FenceStore(mount.path("store"))
    store.put(NS, "facts", {"facts": ["seed"]})
    outcome, _ = race_two(store, retry=False)
    assert outcome["alice"] is None
    err = outcome["bob"]
    assert isinstance(err, FenceConflict)
    assert (err.rested_version, err.current_version) == (1, 2)
    assert facts(store) == ["seed", "alice learned something"]


def test_async_nodes_as_tasks_of_one_loop(mount: Mount) -> None:
    store = FenceStore(mount.path("store"))
    store.put(NS, "facts", {"facts": []})
    race = Race()

    def graph(who: str) -> Any:
        async def remember(state: State, *, store: BaseStore) -> State:
            item = await store.aget(NS, "facts")
            assert item is not None
            await race.apause(who)
            await store.aput(NS, "facts", {"facts": [*item.value["facts"], who]})
            return {}

        builder = StateGraph(State)
        builder.add_node("remember", remember,
                         retry_policy=RetryPolicy(retry_on=FenceConflict, initial_interval=0.01))
        builder.add_edge(START, "remember")
        builder.add_edge("remember", END)
        return builder.compile(store=store)

    alice, bob = graph("alice"), graph("bob")
    outcome = asyncio.run(race.run_tasks(lambda: alice.ainvoke({}), lambda: bob.ainvoke({})))
    assert outcome == {"alice": None, "bob": None}
    assert facts(store) == ["alice", "bob"]


def test_store_interface_on_the_mount(mount: Mount) -> None:
    store = FenceStore(mount.path("store"))
    odd = ("a/b", "ü ber", "%41", "-")  # LangGraph itself refuses "." in labels
    store.put(odd, "", {"n": 1})
    store.put(odd, "..", {"n": 2, "tag": "x"})
    store.put(("users", "u1"), "profile", {"n": 3, "tag": "x"})
    got = store.get(odd, "")
    assert isinstance(got, FenceItem) and got.value == {"n": 1} and got.namespace == odd
    assert (got.version, got.epoch) == (1, 0)
    assert store.get(odd, "missing") is None
    # every name is a plain, visible file name
    names = [n for _, dirs, files in os.walk(mount.path("store")) for n in dirs + files]
    assert not any(n.startswith(".") or "/" in n for n in names)
    assert store.list_namespaces() == [odd, ("users", "u1")]
    assert store.list_namespaces(prefix=("users",)) == [("users", "u1")]
    assert store.list_namespaces(suffix=("*",), max_depth=1) == [("a/b",), ("users",)]
    tagged = store.search((), filter={"tag": "x"})
    assert [(i.namespace, i.key) for i in tagged] == [(odd, ".."), (("users", "u1"), "profile")]
    assert [i.key for i in store.search((), filter={"n": {"$gte": 2}}, limit=1)] == [".."]
    assert [i.key for i in store.search((), filter={"n": {"$gte": 2}}, offset=1)] == ["profile"]
    # a delete is fenced like a put and leaves an empty file, so versions keep counting
    store.delete(odd, "")
    assert store.get(odd, "") is None
    store.put(odd, "", {"n": 4})
    again = store.get(odd, "")
    assert again is not None and again.version == 3
    assert again.created_at >= got.created_at


def test_a_put_rests_on_what_this_code_read(mount: Mount) -> None:
    store = FenceStore(mount.path("store"))
    store.put(NS, "doc", {"v": "seed"})
    assert store.get(NS, "doc") is not None  # this thread rests on version 1
    other = FenceStore(mount.path("store"))

    def elsewhere() -> None:  # another thread: it never read, so its put is blind
        other.put(NS, "doc", {"v": "theirs"})

    race = Race()  # only used for its thread runner
    race.alice_done.set()
    assert race.run_threads(elsewhere, lambda: None) == {"alice": None, "bob": None}
    with pytest.raises(FenceConflict):
        store.put(NS, "doc", {"v": "mine, from a stale read"})
    with pytest.raises(FenceConflict):
        store.delete(NS, "doc")
    assert store.get(NS, "doc").value == {"v": "theirs"}  # type: ignore[union-attr]
    store.put(NS, "doc", {"v": "mine, after reading theirs"})
    assert store.get(NS, "doc").value == {"v": "mine, after reading theirs"}  # type: ignore[union-attr]
