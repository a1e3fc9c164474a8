"""The core stays pure: it never imports pyfuse3, trio or the other layers."""

from __future__ import annotations

import subprocess
import sys


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
