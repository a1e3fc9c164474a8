"""scripts/power-cut: the daemon's writes, renames and syncs during a run of
commits, replayed and cut at every point a power loss could land; every cut
state, once fencefs mounts it, holds committed versions only, with every
acknowledged commit (one round of its steps: about 20 s here)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.mount import ROOT, require_fuse
from tests.test_durability import need_strace

POWER_CUT = ROOT / "scripts" / "power-cut"


def power_cut(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(POWER_CUT), *args], capture_output=True, text=True,
                          timeout=900)


def test_every_power_cut_state_mounts_as_committed_versions(tmp_path: Path) -> None:
    require_fuse()
    need_strace()
    work = tmp_path / "work"
    result = power_cut("--rounds", "1", "--workdir", str(work), "--keep")
    assert result.returncode == 0, result.stdout + result.stderr
    m = re.search(r"(\d+) cut states \((\d+) distinct\) mounted and checked", result.stdout)
    assert m, result.stdout
    assert int(m.group(2)) >= 200, result.stdout  # it cut the run in many places
    steps = re.search(r"power-cut: (\d+) steps, \d+ calls traced, (\d+) changes and (\d+) syncs",
                      result.stdout)
    assert steps and int(steps.group(1)) == 16 and int(steps.group(3)) >= 16, result.stdout

    # The same run replayed as if the drafts were never fsynced: the check
    # sees a commit lost (it can fail).
    broken = power_cut("--workdir", str(work), "--keep", "--reuse",
                       "--drop-syncs", ".fencefs/drafts/*.draft")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "power-cut: FAILED at a cut in step" in broken.stdout, broken.stdout


@pytest.mark.slow
def test_three_rounds_of_power_cuts() -> None:
    """The long form: three rounds of the steps (about 20,000 cut states)."""
    require_fuse()
    need_strace()
    result = power_cut("--rounds", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "46 steps" in result.stdout and "mounted and checked" in result.stdout
