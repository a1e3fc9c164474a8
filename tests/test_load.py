"""Load (issue 7, item 6): scripts/load runs 32 processes doing mixed reads,
commits, appends and reclaims on 100 files, then checks that no
acknowledged commit was lost, that every refusal was typed, and that the
daemon leaked no descriptors; it prints the daemon's peak RSS. CI runs a
few seconds; the 60-second form is marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mount import ROOT, require_fuse
from tests.support.trace import assert_follows_the_specs


def load(tmp_path: Path, seconds: float) -> dict[str, str]:
    require_fuse()
    if os.geteuid() != 0:
        pytest.skip("scripts/load mounts FUSE filesystems: run as root")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "load.py"),
                             "--procs", "32", "--files", "100", "--seconds", str(seconds),
                             "--seed", "11", "--workdir", str(tmp_path / "load")],
                            capture_output=True, text=True, timeout=seconds + 300, cwd=ROOT)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert counts["commits lost"] == "0"
    assert counts["other errors"] == "{}"
    before, after = (int(x.split()[0]) for x in counts["daemon descriptors"].split(", "))
    assert after <= before
    rss = float(counts["daemon peak RSS"].split()[0])
    assert rss < 256, f"daemon peak RSS {rss} MiB"
    assert_follows_the_specs(tmp_path / "load" / "backing" / ".fencefs" / "journal.jsonl")
    return counts


def test_load_bounded(tmp_path: Path) -> None:
    counts = load(tmp_path, 4)
    assert "rewrites" in counts["commits acknowledged"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_load_sixty_seconds(tmp_path: Path) -> None:
    load(tmp_path, 60)
