#!/usr/bin/env python3
"""Costs of snapshots and multi-file commits.

    .venv/bin/python scripts/txn_bench.py --store 10,1000,100000 [--scratch DIR]
    .venv/bin/python scripts/txn_bench.py --mount [--rounds N] [--snapshot-files N] [--known N]

--store: the cut itself (``fencefs.store.snapshots.Snapshots.create``, the
hard links made in one synchronous step) on a backing directory of N files
in directories of 1000, without a mount: seconds for the cut, microseconds
per file, and the cut's cost against a baseline measured in the same run
(one ``lstat`` per file, the least any walk of the tree costs), plus the
process's peak RSS. Prints a table, then one JSON line.

--mount: a real fencefs daemon (default durability) on a scratch directory.
(1) A 3-file transaction (stage three files under .fencefs/txn/NAME, commit
with user.fencefs.commit) against three single-file commits in sequence
(open, write, close, each close a durable commit), interleaved round by
round in the same run: medians per round and the ratio singles/transaction
(target >= 0.5: a transaction at least half as fast as three singles).
With --known N, N of the snapshot's files are first looked up through the
mount (stat), so the daemon's inode table holds N entries while the rounds
run: what a commit costs with a large working set known to the kernel;
--durability none takes the fsyncs out, leaving what the daemon's CPU costs.
(2) A snapshot of N files (default 100000, written into the backing
directory before the mount) through the root's snapshot-create attribute:
wall-clock seconds of the setxattr, and the daemon's VmRSS and VmHWM (peak)
from /proc after it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
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


def start_daemon(backing: Path, mnt: Path, durability: str = "full"
                 ) -> subprocess.Popen[bytes]:
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "fencefs.cli", "mount", "--foreground",
                             "--durability", durability, str(backing), str(mnt)],
                            cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("txn_bench: the daemon did not mount")
        time.sleep(0.02)
    return proc


def stop_daemon(proc: subprocess.Popen[bytes], mnt: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_mib(pid: int) -> tuple[float, float]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return int(fields["VmRSS"][0]) / 1024, int(fields["VmHWM"][0]) / 1024


def singles(mnt: Path, n: int) -> float:
    start = time.perf_counter()
    for f in ("a", "b", "c"):
        with open(mnt / f"{f}.txt", "w") as fh:
            fh.write(f"{f} {n}\n")
    return time.perf_counter() - start


def transaction(mnt: Path, n: int) -> float:
    start = time.perf_counter()
    stage = mnt / ".fencefs" / "txn" / f"bench{n}"
    os.mkdir(stage)
    for f in ("a", "b", "c"):
        with open(stage / f"{f}.txt", "w") as fh:
            fh.write(f"{f} {n}\n")
    os.setxattr(stage, "user.fencefs.commit", b"1")
    os.rmdir(stage)
    return time.perf_counter() - start


def look_up(mnt: Path, count: int) -> int:
    """stat ``count`` files through the mount: the kernel keeps their entries."""
    n = 0
    for d in sorted(p for p in os.listdir(mnt) if p.startswith("d")):
        for name in sorted(os.listdir(mnt / d)):
            if n >= count:
                return n
            os.stat(mnt / d / name)
            n += 1
    return n


def mount_costs(scratch: Path, rounds: int, snapshot_files: int,
                known: int = 0, durability: str = "full") -> dict[str, float]:
    backing, mnt = scratch / "backing", scratch / "mnt"
    populate(backing, snapshot_files)
    os.sync()
    proc = start_daemon(backing, mnt, durability)
    try:
        looked_up = look_up(mnt, known) if known else 0
        for f in ("a", "b", "c"):
            (mnt / f"{f}.txt").write_text("0\n")
        single_t, txn_t = [], []
        for n in range(rounds):  # interleaved, so load changes hit both alike
            single_t.append(singles(mnt, n))
            txn_t.append(transaction(mnt, n))
        s_med, t_med = statistics.median(single_t), statistics.median(txn_t)
        rss_before = rss_mib(proc.pid)
        start = time.perf_counter()
        os.setxattr(mnt, "user.fencefs.snapshot-create", b"big")
        snap_s = time.perf_counter() - start
        rss_after, peak = rss_mib(proc.pid)
        listed = json.loads(os.getxattr(mnt, "user.fencefs.snapshots"))
        files = next(s["files"] for s in listed if s["name"] == "big")
        cut_s = next(s["seconds"] for s in listed if s["name"] == "big")
    finally:
        stop_daemon(proc, mnt)
    return {"rounds": rounds, "known": looked_up, "three_singles_ms": s_med * 1e3,
            "txn_3_files_ms": t_med * 1e3,
            "ratio_singles_over_txn": s_med / t_med, "snapshot_files": files,
            "snapshot_setxattr_s": snap_s, "snapshot_cut_s": cut_s,
            "rss_before_mib": rss_before[0], "rss_after_mib": rss_after, "peak_rss_mib": peak}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="10,1000,100000",
                   help="comma-separated file counts for the store-level cut")
    p.add_argument("--scratch", help="scratch directory (default: a temporary one in /tmp)")
    p.add_argument("--mount", action="store_true", help="measure on a real mount instead")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--snapshot-files", type=int, default=100_000)
    p.add_argument("--known", type=int, default=0,
                   help="look up this many files through the mount before the rounds")
    p.add_argument("--durability", default="full", choices=("full", "none"),
                   help="the daemon's --durability (none: what the CPU costs, without fsync)")
    args = p.parse_args()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="fencefs-txn-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    if args.mount:
        try:
            m = mount_costs(scratch, args.rounds, args.snapshot_files, args.known,
                            args.durability)
        finally:
            if not args.scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        print(f"3 single commits: {m['three_singles_ms']:.2f} ms   3-file transaction: "
              f"{m['txn_3_files_ms']:.2f} ms   singles/transaction: "
              f"{m['ratio_singles_over_txn']:.2f} (target >= 0.5), medians of {args.rounds}, "
              f"{m['known']:.0f} files looked up first")
        print(f"snapshot of {m['snapshot_files']} files: {m['snapshot_setxattr_s']:.2f} s "
              f"(the cut itself {m['snapshot_cut_s']:.2f} s; target < 10 s); daemon RSS "
              f"{m['rss_before_mib']:.1f} -> {m['rss_after_mib']:.1f} MiB, peak "
              f"{m['peak_rss_mib']:.1f} MiB (bound 100 MiB)")
        print(json.dumps({"mount": m}))
        return 0
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
