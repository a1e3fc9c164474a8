"""scripts/bench runs end to end (tiny sizes). No figure is asserted: the
benchmark prints ratios for people; this only proves it still works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.mount import require_fuse

REPO = Path(__file__).resolve().parent.parent
BENCH = [sys.executable, str(REPO / "scripts" / "bench"), "--quick", "--rounds", "1"]
CASES = {"overwrite_1k", "replace_1k", "read_1k", "read_64k", "stat", "overwrite_1k_8procs",
         "rmw_cycle", "counter_8x", "readdir_small", "readdir_large", "seq_write", "seq_read"}


def run_bench(*args: str, scratch: Path) -> dict[str, object]:
    proc = subprocess.run([*BENCH, "--scratch", str(scratch), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def test_bench_side_by_side(tmp_path: Path) -> None:
    require_fuse()
    report = run_bench(scratch=tmp_path)
    cases = report["cases"]
    assert isinstance(cases, dict) and set(cases) == CASES
    for name, row in cases.items():
        medians = row["median"]
        assert {"native", "passthrough", "fencefs"} <= set(medians), name
        assert all(m["ops"] > 0 for m in medians.values()), name
        assert row["fencefs/passthrough"] > 0, name
    # (The bench itself fails when a counter lost an update.) Only fencefs
    # retries: the others take a lock around each increment.
    counter = cases["counter_8x"]["median"]
    assert counter["fencefs"]["commit_p50_ms"] > 0
    assert counter["native"]["retries"] == counter["passthrough"]["retries"] == 0


def test_bench_scaling_and_memory(tmp_path: Path) -> None:
    require_fuse()
    scaling = run_bench("--files", "10,50", scratch=tmp_path / "s")["scaling"]
    assert isinstance(scaling, dict)
    assert {"10/fencefs", "50/fencefs", "10/native", "50/native"} <= set(scaling)
    memory = run_bench("--memory", scratch=tmp_path / "m")["memory"]
    assert isinstance(memory, dict)
    assert memory["files"] == 500 and memory["claims"] == 100
    assert 0 < memory["start_mib"] <= memory["peak_mib"]


def test_bench_workspace(tmp_path: Path) -> None:
    require_fuse()
    report = run_bench("--workspace", scratch=tmp_path)["workspace"]
    assert isinstance(report, dict)
    steps = report["steps"]
    assert set(steps) == {"clone", "git status", "git status again", "grep -rn", "compileall",
                           "git log --stat", "sed -i + git diff", "git commit -a",
                           "find -newer", "rm -rf"}
    for name, row in steps.items():
        assert set(row["seconds"]) == {"native", "passthrough", "fencefs"}, name
        assert all(s > 0 for s in row["seconds"].values()), name
    # every step of the FUSE targets made requests, counted by kind
    assert all(sum(v for k, v in row["requests"]["fencefs"].items()
                   if not k.startswith("ms:")) > 0 for row in steps.values())
    assert steps["clone"]["requests"]["fencefs"]["create"] > 0
    assert steps["rm -rf"]["requests"]["passthrough"]["unlink"] > 0
    assert report["total_requests"]["fencefs"] > 0
