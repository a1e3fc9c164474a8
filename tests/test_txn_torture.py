"""scripts/txn_torture.py, bounded: the daemon SIGKILLed while writers commit
multi-file transactions; every remount finds whole transactions only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import require_fuse

ROOT = Path(__file__).resolve().parent.parent


def test_txn_torture_bounded(tmp_path: Path) -> None:
    require_fuse()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "txn_torture.py"),
                           "--kills", "3", "--seconds", "2", "--workdir", str(tmp_path / "t")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "txn torture: OK" in proc.stdout
    acked = int(proc.stdout.split("transactions acknowledged: ")[1].split(",")[0])
    assert acked > 0
