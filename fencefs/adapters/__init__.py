"""Framework adapters over ``fencefs.client``, one module per framework.

Each is an optional extra (``pip install fencefs[langgraph]`` and so on) and is
imported only by name: nothing in fencefs imports them.

- ``fencefs.adapters.langgraph.FenceStore(root)``: a LangGraph ``BaseStore``
- ``fencefs.adapters.openai_agents.FenceSession(session_id, root)``: an
  OpenAI Agents SDK ``Session``
- ``fencefs.adapters.autogen.FenceMemory(root)``: an AutoGen ``Memory``, and
  ``commit_tool`` for agents
- ``fencefs.adapters.crewai.FenceStorage(root)``: a CrewAI memory
  ``StorageBackend``

See docs/adapters.md.
"""
