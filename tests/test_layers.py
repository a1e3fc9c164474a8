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
