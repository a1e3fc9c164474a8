"""AutoGen (autogen-agentchat / autogen-core 0.7): a ``Memory`` over a file,
and file tools whose commit is fenced.

    from autogen_agentchat.agents import AssistantAgent
    from fencefs.adapters.autogen import FenceMemory, fence_tools

    memory = FenceMemory("/mnt/shared/memory")
    agent = AssistantAgent("planner", model_client=client, memory=[memory],
                           tools=fence_tools("/mnt/shared/docs"), max_tool_iterations=5)

``FenceMemory`` keeps its entries in ``ROOT/<name>.jsonl``, one
``MemoryContent`` per line. ``add`` appends through one fenced
read-modify-write (retried on a conflict), so agents in any number of
processes, threads or tasks adding at once never lose each other's entries.
``clear`` is fenced the same way. ``query`` returns the entries whose text
contains the query (case-insensitive; all entries for an empty query), and
``update_context`` adds every entry to the model context as one system
message.

``fence_tools(root)`` gives an agent two tools over the files under
``root``: ``read_file(path)``, which returns the content with the version it
was read at, and ``commit_file(path, content, base_version)``, which commits
only if the file is still at ``base_version``. When it is not, the tool fails
with a message that tells the model its edit was not saved and gives it the
current content and version, so the model can merge and commit again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

from autogen_core import CancellationToken, Component, Image
from autogen_core.memory import (
    Memory,
    MemoryContent,
    MemoryMimeType,
    MemoryQueryResult,
    UpdateContextResult,
)
from autogen_core.model_context import ChatCompletionContext
from autogen_core.models import SystemMessage
from autogen_core.tools import FunctionTool
from pydantic import BaseModel

from fencefs import client
from fencefs.adapters._names import encode

__all__ = ["FenceMemory", "FenceMemoryConfig", "StaleEdit", "commit_tool", "fence_tools",
           "read_tool"]


class FenceMemoryConfig(BaseModel):
    root: str
    name: str = "memory"
    retries: int = 8


class FenceMemory(Memory, Component[FenceMemoryConfig]):
    """An AutoGen memory stored under ``root`` (on a fencefs mount, or not)."""

    component_type = "memory"
    component_provider_override = "fencefs.adapters.autogen.FenceMemory"
    component_config_schema = FenceMemoryConfig

    def __init__(self, root: str | os.PathLike[str], *, name: str = "memory",
                 retries: int = 8) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.name = name
        self.retries = retries
        self.path = os.path.join(self.root, encode(name) + ".jsonl")
        os.makedirs(self.root, exist_ok=True)

    async def entries(self) -> list[MemoryContent]:
        """Every entry, oldest first."""
        def read() -> bytes:
            try:
                return client.read_versioned(self.path).data
            except FileNotFoundError:
                return b""

        data = await asyncio.to_thread(read)
        return [_load(line) for line in data.splitlines() if line.strip()]

    async def add(self, content: MemoryContent,
                  cancellation_token: CancellationToken | None = None) -> None:
        line = _dump(content) + b"\n"
        await client.aupdate(self.path, lambda old: old + line, create=True,
                             retries=self.retries)

    async def query(self, query: str | MemoryContent = "",
                    cancellation_token: CancellationToken | None = None,
                    **kwargs: Any) -> MemoryQueryResult:
        text = query.content if isinstance(query, MemoryContent) else query
        needle = str(text).lower()
        found = [e for e in await self.entries() if needle in _text(e).lower()]
        return MemoryQueryResult(results=found)

    async def update_context(self, model_context: ChatCompletionContext) -> UpdateContextResult:
        found = await self.entries()
        if found:
            lines = "\n".join(f"{i}. {_text(e)}" for i, e in enumerate(found, 1))
            await model_context.add_message(
                SystemMessage(content=f"Shared memory ({self.name}), oldest first:\n{lines}"))
        return UpdateContextResult(memories=MemoryQueryResult(results=found))

    async def clear(self) -> None:
        if os.path.exists(self.path):
            await client.aupdate(self.path, lambda old: b"", retries=self.retries)

    async def close(self) -> None:
        pass

    def _to_config(self) -> FenceMemoryConfig:
        return FenceMemoryConfig(root=self.root, name=self.name, retries=self.retries)

    @classmethod
    def _from_config(cls, config: FenceMemoryConfig) -> FenceMemory:
        return cls(config.root, name=config.name, retries=config.retries)


def _dump(entry: MemoryContent) -> bytes:
    """One line of JSON; the content's type is kept (text, json, bytes, image)."""
    content = entry.content
    value: Any
    if isinstance(content, str):
        kind, value = "text", content
    elif isinstance(content, bytes):
        kind, value = "bytes", base64.b64encode(content).decode()
    elif isinstance(content, dict):
        kind, value = "json", content
    else:
        kind, value = "image", content.to_base64()
    mime = entry.mime_type.value if isinstance(entry.mime_type, MemoryMimeType) \
        else entry.mime_type
    return json.dumps({kind: value, "mime_type": mime, "metadata": entry.metadata}).encode()


def _load(line: bytes) -> MemoryContent:
    doc = json.loads(line)
    content: Any
    if "text" in doc:
        content = doc["text"]
    elif "bytes" in doc:
        content = base64.b64decode(doc["bytes"])
    elif "json" in doc:
        content = doc["json"]
    else:
        content = Image.from_base64(doc["image"])
    return MemoryContent(content=content, mime_type=doc["mime_type"], metadata=doc["metadata"])


def _text(entry: MemoryContent) -> str:
    content = entry.content
    if isinstance(content, dict):
        return json.dumps(content, sort_keys=True)
    if isinstance(content, bytes):
        return content.decode("utf-8", "replace")
    return str(content)


# -- tools ---------------------------------------------------------------------


class StaleEdit(client.FenceConflict):
    """A ``commit_file`` whose base version is no longer the file's. Its text
    is written for the model: what happened, the current content, what to do."""

    def __init__(self, path: str, *, shown: str, base_version: int, current: client.Versioned
                 | None) -> None:
        self.shown = shown
        self.current = current
        super().__init__(path, rested_version=base_version,
                         current_version=None if current is None else current.version,
                         current_epoch=None if current is None else current.epoch)

    def _message(self) -> str:
        if self.current is None:
            return (f"CONFLICT: {self.shown} was deleted since you read it; your edit was NOT "
                    f"saved. Create it with base_version=0 if it should exist.")
        return (f"CONFLICT: {self.shown} changed since you read it (your edit was based on "
                f"version {self.rested_version}, the file is now at version "
                f"{self.current.version}). Your edit was NOT saved. Re-apply your change to "
                f"the current content below and call commit_file again with "
                f"base_version={self.current.version}.\n"
                f"--- current content of {self.shown} (version {self.current.version}) ---\n"
                f"{self.current.data.decode('utf-8', 'replace')}\n"
                f"--- end of {self.shown} ---")


def _resolve(root: str, path: str) -> str:
    full = os.path.realpath(os.path.join(root, path))
    base = os.path.realpath(root)
    if full != base and not full.startswith(base + os.sep):
        raise ValueError(f"{path} is outside {root}")
    return full


def read_tool(root: str | os.PathLike[str]) -> FunctionTool:
    """The ``read_file(path)`` tool over the files under ``root``."""
    base = os.path.abspath(os.fspath(root))

    async def read_file(path: str) -> str:
        """Read a shared file. Returns its version and content; pass the version to
        commit_file as base_version when you write the file back."""
        try:
            data, version, _epoch = await client.aread_versioned(_resolve(base, path))
        except FileNotFoundError:
            return f"{path} does not exist (version 0). Create it with base_version=0."
        return f"version: {version}\n---\n{data.decode('utf-8', 'replace')}"

    return FunctionTool(read_file, description=read_file.__doc__ or "", name="read_file")


def commit_tool(root: str | os.PathLike[str]) -> FunctionTool:
    """The ``commit_file(path, content, base_version)`` tool over the files under ``root``."""
    base = os.path.abspath(os.fspath(root))

    async def commit_file(path: str, content: str, base_version: int) -> str:
        """Replace a shared file's content. base_version is the version you read with
        read_file (0 to create a new file); if the file changed since, nothing is saved
        and you get the current content to merge your change into."""
        full = _resolve(base, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        try:
            done = await client.areplace(full, content.encode(), version=base_version)
        except client.FenceConflict:
            try:
                current: client.Versioned | None = await client.aread_versioned(full)
            except FileNotFoundError:
                current = None
            raise StaleEdit(full, shown=path, base_version=base_version,
                            current=current) from None
        return f"committed {path} at version {done.version}"

    return FunctionTool(commit_file, description=commit_file.__doc__ or "", name="commit_file")


def fence_tools(root: str | os.PathLike[str]) -> list[FunctionTool]:
    """``[read_file, commit_file]`` over the files under ``root``."""
    return [read_tool(root), commit_tool(root)]
