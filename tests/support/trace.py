"""scripts/check-trace from tests: journals checked against the specs' rules."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.mount import ROOT

CHECK = ROOT / "scripts" / "check-trace"


def check_trace(*journals: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CHECK), *map(str, journals)], capture_output=True, text=True,
                          timeout=120)


def assert_follows_the_specs(*journals: Path | str) -> None:
    """The torture, load and model-based runs: their journals pass."""
    result = check_trace(*journals)
    assert result.returncode == 0, result.stdout + result.stderr
