"""fencefs.adapters.openai_agents.FenceSession: two concurrent runs on one
session, with a scripted model (issue 8)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.adapters.conftest import Race, need
from tests.support.mount import Mount

need("agents", "openai-agents")

from agents import Agent, Runner, set_tracing_disabled  # noqa: E402
from agents.items import ModelResponse  # noqa: E402
from agents.memory import SessionABC  # noqa: E402
from agents.models.interface import Model  # noqa: E402
from agents.usage import Usage  # noqa: E402
from openai.types.responses import ResponseOutputMessage, ResponseOutputText  # noqa: E402

from fencefs.adapters.openai_agents import FenceSession  # noqa: E402
from fencefs.client import FenceConflict  # noqa: E402

set_tracing_disabled(True)


class ScriptedModel(Model):
    """A model that answers with a fixed text and records what it was shown."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.seen: list[Any] = []

    async def get_response(self, system_instructions: Any, input: Any, model_settings: Any,
                           tools: Any, output_schema: Any, handoffs: Any, tracing: Any,
                           **kwargs: Any) -> ModelResponse:
        self.seen.append(input)
        message = ResponseOutputMessage(
            id="msg_1", type="message", role="assistant", status="completed",
            content=[ResponseOutputText(type="output_text", text=self.text, annotations=[])])
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


class NaiveFileSession(SessionABC):
    """What one writes without fencefs: the conversation as one JSON file that
    a session loads once and saves back whole on every change."""

    def __init__(self, session_id: str, path: Path) -> None:
        self.session_id = session_id
        self.path = path
        self.items: list[Any] | None = None

    def _load(self) -> list[Any]:
        if self.items is None:
            self.items = json.loads(self.path.read_text()) if self.path.exists() else []
        return self.items

    async def get_items(self, limit: int | None = None) -> list[Any]:
        items = self._load()
        return list(items[-limit:] if limit else items)

    async def add_items(self, items: list[Any]) -> None:
        self._load().extend(items)
        self.path.write_text(json.dumps(self.items))

    async def pop_item(self) -> Any | None:
        items = self._load()
        item = items.pop() if items else None
        self.path.write_text(json.dumps(items))
        return item

    async def clear_session(self) -> None:
        self.items = []
        self.path.write_text("[]")


class Pausing:
    """Wraps a session: its first read of history is followed by the race's pause."""

    def __init__(self, inner: Any, race: Race, who: str) -> None:
        self.inner, self.race, self.who = inner, race, who
        self.session_id = inner.session_id
        self.session_settings = None

    async def get_items(self, limit: int | None = None, *, wrapper: Any = None) -> Any:
        items = await self.inner.get_items(limit, **self._w(self.inner.get_items, wrapper))
        await self.race.apause(self.who)
        return items

    async def add_items(self, items: list[Any], *, wrapper: Any = None) -> None:
        await self.inner.add_items(items, **self._w(self.inner.add_items, wrapper))

    async def pop_item(self, *, wrapper: Any = None) -> Any:
        return await self.inner.pop_item(**self._w(self.inner.pop_item, wrapper))

    async def clear_session(self, *, wrapper: Any = None) -> None:
        await self.inner.clear_session(**self._w(self.inner.clear_session, wrapper))

    @staticmethod
    def _w(method: Any, wrapper: Any) -> dict[str, Any]:
        import inspect

        return {"wrapper": wrapper} if "wrapper" in inspect.signature(method).parameters else {}


def texts(items: list[Any]) -> list[str]:
    out = []
    for item in items:
        content = item.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        out.append(f"{item.get('role')}: {content}")
    return out


async def two_runs(make_session: Any) -> tuple[dict[str, BaseException | None], list[Any]]:
    race = Race()
    alice = Agent(name="alice", model=ScriptedModel("alice's answer"))
    bob = Agent(name="bob", model=ScriptedModel("bob's answer"))
    outcome = await race.run_tasks(
        lambda: Runner.run(alice, "alice asks", session=Pausing(make_session(), race, "alice")),
        lambda: Runner.run(bob, "bob asks", session=Pausing(make_session(), race, "bob")))
    return outcome, await make_session().get_items()


HISTORY = [{"role": "user", "content": "earlier question"},
           {"role": "assistant", "content": "earlier answer"}]


def test_without_fencefs_one_update_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "support.json"
    path.write_text(json.dumps(HISTORY))
    outcome, items = asyncio.run(two_runs(lambda: NaiveFileSession("support", path)))
    assert outcome == {"alice": None, "bob": None}  # both runs "succeed"...
    assert texts(items) == ["user: earlier question", "assistant: earlier answer",
                            "user: bob asks", "assistant: bob's answer"]  # ...alice's turn is gone


def seed(session: FenceSession) -> None:
    asyncio.run(session.add_items([dict(item) for item in HISTORY]))


def check_one_winner(outcome: dict[str, BaseException | None], items: list[Any]) -> None:
    assert outcome["alice"] is None
    err = outcome["bob"]
    assert isinstance(err, FenceConflict), err  # the loser's Runner.run raises
    assert texts(items) == ["user: earlier question", "assistant: earlier answer",
                            "user: alice asks", "assistant: alice's answer"]


def test_on_fencefs_the_loser_gets_fence_conflict(mount: Mount) -> None:
    root = mount.path("sessions")
    seed(FenceSession("support", root))
    outcome, items = asyncio.run(two_runs(lambda: FenceSession("support", root)))
    check_one_winner(outcome, items)
    err = outcome["bob"]
    assert isinstance(err, FenceConflict) and err.path == os.path.join(root, "support.jsonl")
    assert (err.rested_version, err.current_version) == (1, 3)


def test_on_the_fallback_the_loser_gets_fence_conflict(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    seed(FenceSession("support", root))
    outcome, items = asyncio.run(two_runs(lambda: FenceSession("support", root)))
    check_one_winner(outcome, items)


def test_one_session_object_shared_by_two_runs(mount: Mount) -> None:
    """Runs are told apart by the SDK's per-run wrapper, not by the session object."""
    session = FenceSession("shared", mount.path("sessions"))
    seed(session)
    race = Race()
    alice = Agent(name="alice", model=ScriptedModel("alice's answer"))
    bob = Agent(name="bob", model=ScriptedModel("bob's answer"))

    async def both() -> dict[str, BaseException | None]:
        return await race.run_tasks(
            lambda: Runner.run(alice, "alice asks", session=Pausing(session, race, "alice")),
            lambda: Runner.run(bob, "bob asks", session=Pausing(session, race, "bob")))

    outcome = asyncio.run(both())
    check_one_winner(outcome, asyncio.run(session.get_items()))
    # a later run reads the winner's history and goes through
    result = asyncio.run(Runner.run(bob, "bob asks again", session=session))
    assert result.final_output == "bob's answer"
    assert texts(asyncio.run(session.get_items()))[-2:] == ["user: bob asks again",
                                                            "assistant: bob's answer"]


def test_session_interface(mount: Mount) -> None:
    session = FenceSession("a/b ü", mount.path("sessions"))
    assert os.listdir(mount.path("sessions")) == []

    async def go() -> None:
        assert await session.get_items() == []
        assert await session.pop_item() is None
        await session.add_items([{"role": "user", "content": str(i)} for i in range(4)])
        assert [i["content"] for i in await session.get_items(limit=2)] == ["2", "3"]
        assert (await session.pop_item()) == {"role": "user", "content": "3"}
        assert len(await session.get_items()) == 3
        await session.clear_session()
        assert await session.get_items() == []
        with pytest.raises(TypeError):
            await session.add_items([{"not json": object()}])

    asyncio.run(go())
    assert os.listdir(mount.path("sessions")) == ["a%2Fb%20%C3%BC.jsonl"]


def test_appends_outside_runs_never_lose_each_other(mount: Mount) -> None:
    root = mount.path("sessions")

    async def go() -> None:
        sessions = [FenceSession("log", root) for _ in range(4)]
        await asyncio.gather(*(s.add_items([{"role": "user", "content": f"{n}-{i}"}])
                               for n, s in enumerate(sessions) for i in range(5)))

    asyncio.run(go())
    items = asyncio.run(FenceSession("log", root).get_items())
    assert sorted(i["content"] for i in items) == sorted(f"{n}-{i}" for n in range(4)
                                                         for i in range(5))
