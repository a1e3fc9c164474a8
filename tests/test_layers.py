"""The core stays pure: it never imports pyfuse3, trio or the other layers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_core_imports_no_fuse_no_trio_no_io_layers() -> None:
    code = (
        "import sys, fencefs.core, fencefs.core.coordinator\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pyfuse3', 'trio')"
        " or m.startswith(('fencefs.fuse', 'fencefs.store', 'fencefs.cli'))]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"fencefs.core pulled in: {out}"


def test_core_has_no_await() -> None:
    import inspect

    import fencefs.core.coordinator as coordinator

    source = inspect.getsource(coordinator)
    assert "await " not in source and "async def" not in source


def test_client_is_plain_file_io() -> None:
    """fencefs.client needs no trio, no pyfuse3 and none of the daemon's layers."""
    code = (
        "import sys, fencefs.client\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pyfuse3', 'trio', 'xattr')"
        " or m in ('fencefs.cli', 'fencefs.daemon')"
        " or m.startswith(('fencefs.fuse', 'fencefs.store', 'fencefs.core', 'fencefs.adapters'))]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"fencefs.client pulled in: {out}"


def test_nothing_imports_the_adapters() -> None:
    """The adapters are optional extras: the package never imports them or a framework."""
    code = (
        "import sys, fencefs, fencefs.cli, fencefs.daemon, fencefs.client, fencefs.adapters\n"
        "bad = [m for m in sys.modules if m.startswith('fencefs.adapters.')"
        " or m.split('.')[0] in ('langgraph', 'agents', 'autogen_core', 'autogen_agentchat',"
        " 'crewai')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"importing fencefs pulled in: {out}"


def test_engine_imports_no_fuse() -> None:
    """The commit engine is FUSE-agnostic: errors leave it as FenceError or
    OSError, and the FUSE layer's boundary maps them (one place)."""
    code = (
        "import sys, fencefs.engine.commits, fencefs.engine.shared, fencefs.engine.readers\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'pyfuse3'"
        " or m.startswith(('fencefs.fuse', 'fencefs.cli', 'fencefs.daemon'))]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"fencefs.engine pulled in: {out}"


def _imports_of(path: Path, module: str) -> set[str]:
    """The fencefs modules that ``module`` (at ``path``) imports at load time."""
    import ast

    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fencefs"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: resolve against the package
                parts = module.split(".")[: -node.level]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            if base.startswith("fencefs"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
    return found


def test_package_has_no_import_cycle() -> None:
    """No module of fencefs imports, directly or through others, itself."""
    root = Path(__file__).resolve().parent.parent / "fencefs"
    modules: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        name = ".".join(rel.parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {name: {m for m in _imports_of(path, name) if m in modules and m != name}
             for name, path in modules.items()}
    # Importing a package runs its __init__: an edge to a submodule is one to
    # the packages above it too (only where they have an __init__).
    for deps in graph.values():
        for dep in list(deps):
            parts = dep.split(".")
            deps.update(".".join(parts[:i]) for i in range(2, len(parts))
                        if ".".join(parts[:i]) in modules)
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # A package's __init__ importing its own submodules is not a cycle.
    real = [c for c in cycles if not all(c[0].startswith(m) or m.startswith(c[0]) for m in c)]
    assert real == [], f"import cycles: {real}"


def test_atomic_sections_fail_on_a_checkpoint() -> None:
    """The G3 guard: a checkpoint inside atomic() fails when checking is on."""
    code = (
        "import trio\n"
        "from fencefs.engine.atomic import atomic\n"
        "async def main():\n"
        "    with atomic():\n"
        "        pass\n"  # no checkpoint: fine
        "    try:\n"
        "        with atomic():\n"
        "            await trio.sleep(0)\n"
        "    except AssertionError:\n"
        "        print('caught')\n"
        "trio.run(main)\n"
    )
    env = {**os.environ, "FENCEFS_CHECK_ATOMIC": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.strip()
    assert out == "caught"
    env["FENCEFS_CHECK_ATOMIC"] = "0"  # off: no assertion (and no cost) in production
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.strip()
    assert out == ""
