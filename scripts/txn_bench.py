#!/usr/bin/env python3
"""Costs of snapshots and multi-file commits.

    .venv/bin/python scripts/txn_bench.py --store 10,1000,100000 [--scratch DIR]

--store: the cut itself (``fencefs.store.snapshots.Snapshots.create``, the
hard links made in one synchronous step) on a backing directory of N files
in directories of 1000, without a mount: seconds for the cut, microseconds
per file, and the cut's cost against a baseline measured in the same run
(one ``lstat`` per file, the least any walk of the tree costs), plus the
process's peak RSS. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fencefs.core.model import Persisted  # noqa: E402
from fencefs.store.backing import Backing  # noqa: E402
from fencefs.store.snapshots import Snapshots  # noqa: E402

PER_DIR = 1000


def populate(root: Path, count: int) -> Backing:
    root.mkdir(parents=True)
    backing = Backing(str(root))
    os.makedirs(backing.meta, exist_ok=True)
    for n in range(count):
        d = root / f"d{n // PER_DIR:04d}"
        if n % PER_DIR == 0:
            d.mkdir()
        rel = f"{d.name}/f{n:06d}.md"
        with open(root / rel, "wb") as f:
            f.write(b"x" * 64)
        backing.write_state(rel, Persisted(1, 0), durable=False)
    return backing


def lstat_walk(root: Path) -> int:
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and ".fencefs" in dirnames:
            dirnames.remove(".fencefs")
        for name in filenames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return n


def store_costs(scratch: Path, counts: list[int]) -> list[dict[str, float]]:
    rows = []
    for count in counts:
        root = scratch / f"store-{count}"
        backing = populate(root, count)
        os.sync()
        start = time.perf_counter()
        walked = lstat_walk(root)
        baseline = time.perf_counter() - start
        snaps = Snapshots(backing)
        info = snaps.create("cut", durable=True)
        start = time.perf_counter()
        snaps.delete("cut")
        deleted = time.perf_counter() - start
        assert info.files == count == walked, (info.files, count, walked)
        rows.append({"files": count, "cut_s": info.seconds,
                     "us_per_file": info.seconds / count * 1e6,
                     "lstat_walk_s": baseline, "ratio_vs_walk": info.seconds / baseline,
                     "delete_s": deleted,
                     "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        shutil.rmtree(root)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="10,1000,100000",
                   help="comma-separated file counts for the store-level cut")
    p.add_argument("--scratch", help="scratch directory (default: a temporary one in /tmp)")
    args = p.parse_args()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="fencefs-txn-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        rows = store_costs(scratch, [int(c) for c in args.store.split(",") if c])
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"{'files':>8} {'cut s':>8} {'us/file':>8} {'lstat walk s':>13} "
          f"{'cut/walk':>9} {'delete s':>9} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['files']:>8.0f} {r['cut_s']:>8.3f} {r['us_per_file']:>8.1f} "
              f"{r['lstat_walk_s']:>13.3f} {r['ratio_vs_walk']:>9.1f} {r['delete_s']:>9.3f} "
              f"{r['peak_rss_mib']:>13.1f}")
    print(json.dumps({"store_snapshots": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
