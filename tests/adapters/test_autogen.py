"""fencefs.adapters.autogen: two AutoGen agents edit one shared file through
tools, with replayed model responses (issue 8)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.adapters.conftest import Race, need
from tests.support.mount import Mount

need("autogen_agentchat", "autogen")
need("autogen_ext.models.replay", "autogen")

from autogen_agentchat.agents import AssistantAgent  # noqa: E402
from autogen_core import FunctionCall  # noqa: E402
from autogen_core.memory import MemoryContent, MemoryMimeType  # noqa: E402
from autogen_core.model_context import UnboundedChatCompletionContext  # noqa: E402
from autogen_core.models import (  # noqa: E402
    CreateResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    RequestUsage,
)
from autogen_core.tools import FunctionTool  # noqa: E402
from autogen_ext.models.replay import ReplayChatCompletionClient  # noqa: E402

from fencefs.adapters.autogen import FenceMemory, StaleEdit, fence_tools  # noqa: E402

USAGE = RequestUsage(prompt_tokens=0, completion_tokens=0)


def call(name: str, **arguments: Any) -> CreateResult:
    return CreateResult(finish_reason="function_calls", usage=USAGE, cached=False,
                        content=[FunctionCall(id=f"call-{name}", name=name,
                                              arguments=json.dumps(arguments))])


class ScriptedClient(ReplayChatCompletionClient):
    """AutoGen's replay client, with a script that reacts to tool results the
    way a model would: read the notes, then commit them with one line added
    (to whatever content and version the last tool result showed)."""

    def __init__(self, who: str, race: Race, tools: str) -> None:
        super().__init__([], model_info={"vision": False, "function_calling": True,
                                         "json_output": False, "family": "unknown",
                                         "structured_output": False})
        self.who, self.race, self.tools = who, race, tools
        self.turn = 0

    async def create(self, messages: Sequence[LLMMessage], **kwargs: Any) -> CreateResult:
        self.turn += 1
        results = [m for m in messages if isinstance(m, FunctionExecutionResultMessage)]
        if self.turn == 1:
            step = call("read_file", path="notes.md")
        else:
            last = results[-1].content[-1].content
            if self.turn == 2:
                await self.race.apause(self.who)  # both have read; alice commits first
            if self.turn == 2 or "CONFLICT" in last:
                content, version = parse_read(last)
                step = self.commit(content + f"- {self.who} was here\n", version)
            else:
                step = CreateResult(finish_reason="stop", usage=USAGE, cached=False,
                                    content=f"{self.who} done")
        self.chat_completions.append(step)
        return await super().create(messages, **kwargs)

    def commit(self, content: str, version: int | None) -> CreateResult:
        if self.tools == "naive":
            return call("write_file", path="notes.md", content=content)
        return call("commit_file", path="notes.md", content=content, base_version=version)


def parse_read(text: str) -> tuple[str, int | None]:
    """The content and version a tool result showed the model."""
    if m := re.match(r"version: (\d+)\n---\n(.*)\Z", text, re.S):  # read_file
        return m.group(2), int(m.group(1))
    if m := re.search(r"--- current content of .* \(version (\d+)\) ---\n(.*)\n--- end of ",
                      text, re.S):  # a conflict
        return m.group(2), int(m.group(1))
    return text, None  # the naive tool's plain content


def naive_tools(root: Path) -> list[FunctionTool]:
    """What one gives agents without fencefs: read and write, plain files."""

    async def read_file(path: str) -> str:
        """Read a shared file."""
        return (root / path).read_text()

    async def write_file(path: str, content: str) -> str:
        """Write a shared file."""
        (root / path).write_text(content)
        return "written"

    return [FunctionTool(read_file, description="Read a shared file."),
            FunctionTool(write_file, description="Write a shared file.")]


def two_agents(tools: list[FunctionTool], kind: str) -> tuple[dict[str, BaseException | None],
                                                              dict[str, list[str]]]:
    race = Race()
    clients = {who: ScriptedClient(who, race, kind) for who in ("alice", "bob")}
    agents = {who: AssistantAgent(who, model_client=clients[who], tools=tools,
                                  max_tool_iterations=4) for who in clients}
    said: dict[str, list[str]] = {}

    async def run(who: str) -> None:
        result = await agents[who].run(task="add your line to notes.md")
        said[who] = [str(m.content) for m in result.messages]

    outcome = asyncio.run(race.run_tasks(lambda: run("alice"), lambda: run("bob")))
    return outcome, said


def test_without_fencefs_one_update_is_lost(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("# notes\n")
    outcome, _ = two_agents(naive_tools(tmp_path), "naive")
    assert outcome == {"alice": None, "bob": None}
    assert (tmp_path / "notes.md").read_text() == "# notes\n- bob was here\n"  # alice's is gone


def test_on_fencefs_no_update_is_lost(mount: Mount) -> None:
    root = mount.path("docs")
    os.mkdir(root)
    Path(root, "notes.md").write_text("# notes\n")
    outcome, said = two_agents(fence_tools(root), "fenced")
    assert outcome == {"alice": None, "bob": None}
    with open(os.path.join(root, "notes.md")) as f:
        assert f.read() == "# notes\n- alice was here\n- bob was here\n"
    assert os.getxattr(os.path.join(root, "notes.md"), "user.fencefs.version") == b"3"
    # bob's model was told, in the tool's error, what happened and what is there now
    conflict = next(s for s in said["bob"] if "CONFLICT" in s)
    assert "NOT saved" in conflict and "base_version=2" in conflict
    assert "- alice was here" in conflict


def test_on_the_fallback_no_update_is_lost(tmp_path: Path) -> None:
    Path(tmp_path, "notes.md").write_text("# notes\n")
    outcome, _ = two_agents(fence_tools(tmp_path), "fenced")
    assert outcome == {"alice": None, "bob": None}
    assert Path(tmp_path, "notes.md").read_text() == "# notes\n- alice was here\n- bob was here\n"


def test_commit_tool_directly(mount: Mount) -> None:
    read, commit = fence_tools(mount.path("docs"))

    async def go() -> None:
        assert "does not exist" in await read.run_json({"path": "plan.md"}, None)
        assert await commit.run_json({"path": "plan.md", "content": "v1",
                                      "base_version": 0}, None) == "committed plan.md at version 1"
        assert await read.run_json({"path": "plan.md"}, None) == "version: 1\n---\nv1"
        try:
            await commit.run_json({"path": "plan.md", "content": "stale", "base_version": 0},
                                  None)
            raise AssertionError("a stale commit went through")
        except StaleEdit as e:
            assert e.current is not None and e.current.data == b"v1"
            assert "version 1" in str(e) and "\nv1\n--- end of plan.md ---" in str(e)
        try:
            await read.run_json({"path": "../escape"}, None)
            raise AssertionError("a path outside the root was read")
        except ValueError:
            pass

    asyncio.run(go())


def test_memory_on_the_mount(mount: Mount) -> None:
    root = mount.path("memory")

    async def go() -> None:
        memories = [FenceMemory(root) for _ in range(4)]  # four agents, one file
        await asyncio.gather(*(m.add(MemoryContent(content=f"fact {n}.{i}",
                                                   mime_type=MemoryMimeType.TEXT))
                               for n, m in enumerate(memories) for i in range(5)))
        entries = await memories[0].entries()
        assert sorted(str(e.content) for e in entries) == sorted(
            f"fact {n}.{i}" for n in range(4) for i in range(5))
        found = await memories[1].query("FACT 2.")
        assert sorted(str(e.content) for e in found.results) == [f"fact 2.{i}" for i in range(5)]
        context = UnboundedChatCompletionContext()
        result = await memories[2].update_context(context)
        assert len(result.memories.results) == 20
        messages = await context.get_messages()
        assert len(messages) == 1 and "fact 3.4" in str(messages[0].content)
        config = memories[0].dump_component()
        again = FenceMemory.load_component(config)
        assert isinstance(again, FenceMemory) and again.path == memories[0].path
        await memories[3].clear()
        assert await memories[0].entries() == []
        await memories[3].close()

    asyncio.run(go())
    assert os.getxattr(os.path.join(root, "memory.jsonl"), "user.fencefs.version") == b"21"
