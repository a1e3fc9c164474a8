#!/usr/bin/env python3
"""Crash torture for multi-file commits: the daemon is SIGKILLed while
writers commit transactions, over and over.

    scripts/txn_torture.py [--kills N] [--seconds S] [--writers W] [--workdir DIR]

Each round mounts a daemon on the same backing directory, checks the files,
starts W writer processes and a snapshotter, and kills the daemon with
SIGKILL at a random moment within S seconds. Each writer repeats
``client.update_many`` over three files: ``count`` (a counter), ``log`` (one
line per transaction) and ``last`` (the counter again), all three changed by
every transaction; after each acknowledged commit it appends the counter it
committed to its own ledger. After every remount, and at the end:

- the three files are one state that whole transactions made: ``log`` holds
  exactly the lines 1..count in order and ``last`` equals ``count`` (a torn
  transaction, or a lost one in the middle, breaks this);
- every acknowledged counter is at most ``count`` (G6: an acknowledged
  commit survives the crash) and no counter was acknowledged twice (G1);
- no draft is left in ``.fencefs/drafts/``; every ``txn-recovered`` line
  says ``forward`` or ``back``;
- every snapshot that was taken holds one state of the same kind.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402

FILES = ("t/count", "t/log", "t/last")
GONE = {errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV, errno.ENOENT}


def step(old: dict[str, bytes]) -> dict[str, bytes | None]:
    n = int(old["t/count"] or b"0")
    me = os.environ.get("FENCEFS_AGENT", "?").encode()
    return {"t/count": b"%d" % (n + 1), "t/log": old["t/log"] + b"%d %s\n" % (n + 1, me),
            "t/last": b"%d" % (n + 1)}


def writer_main(mnt: str, ledger: str) -> int:
    from fencefs import client

    with open(ledger, "a") as out:
        while True:
            try:
                done = client.update_many(mnt, list(FILES), step, retries=50, backoff=0.002)
            except client.FenceError:
                continue
            except OSError as e:
                if e.errno in GONE:
                    return 0
                out.write(json.dumps({"error": errno.errorcode.get(e.errno or 0)}) + "\n")
                out.flush()
                time.sleep(0.05)
                continue
            out.write(json.dumps({"ack": int(done["t/count"])}) + "\n")
            out.flush()


def snapshotter_main(mnt: str, ledger: str) -> int:
    k = 0
    with open(ledger, "a") as out:
        while True:
            name = f"cut-{os.getpid()}-{k}"
            k += 1
            try:
                os.setxattr(mnt, "user.fencefs.snapshot-create", name.encode())
                view = Path(mnt, ".fencefs", "snapshots", name)
                texts = {f: (view / f).read_bytes() for f in FILES}
            except OSError as e:
                if e.errno in GONE:
                    return 0
                continue
            problem = check_state(texts)
            out.write(json.dumps({"cut": name, "problem": problem}) + "\n")
            out.flush()
            time.sleep(0.05)


def check_state(texts: dict[str, bytes]) -> str | None:
    """None if the three files are one state made of whole transactions."""
    count = int(texts["t/count"] or b"0")
    lines = texts["t/log"].splitlines()
    if [int(line.split()[0]) for line in lines] != list(range(1, count + 1)):
        return f"log does not hold 1..{count}: {texts['t/log'][-200:]!r}"
    if int(texts["t/last"] or b"0") != count:
        return f"last {texts['t/last']!r} != count {count}"
    return None


class Torture:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="fencefs-txn-torture-"))
        self.backing, self.mnt, self.logs = (self.work / d for d in ("backing", "mnt", "logs"))
        for d in (self.backing, self.mnt, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(args.seed)
        self.problems: list[str] = []
        self.kills = 0

    def verify(self, when: str) -> int:
        texts = {f: (self.mnt / f).read_bytes() if (self.mnt / f).exists() else b""
                 for f in FILES}
        count = int(texts["t/count"] or b"0")
        problem = check_state(texts)
        if problem:
            self.problems.append(f"{when}: {problem}")
        acks: list[int] = []
        for path in self.logs.glob("w*.log"):
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if "ack" in rec:
                    acks.append(rec["ack"])
        if acks and max(acks) > count:
            self.problems.append(f"{when}: acknowledged {max(acks)} but count is {count}")
        if len(acks) != len(set(acks)):
            self.problems.append(f"{when}: a counter was acknowledged twice")
        drafts = os.listdir(self.backing / ".fencefs" / "drafts")
        if drafts:
            self.problems.append(f"{when}: drafts left behind: {drafts}")
        for e in workload.read_journal(self.backing):
            if e.get("event") == "txn-recovered" and e.get("rolled") not in ("forward", "back"):
                self.problems.append(f"{when}: {e}")
        for path in self.logs.glob("s*.log"):
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("problem"):
                    self.problems.append(f"snapshot {rec['cut']}: {rec['problem']}")
        return count

    def round(self, index: int) -> None:
        daemon = workload.start_daemon(self.backing, self.mnt, self.work / "daemon.log",
                                       repo=REPO)
        self.verify(f"after mount {index}")
        if index == self.args.kills:
            workload.stop_daemon(daemon, self.mnt)
            return
        procs = [subprocess.Popen([sys.executable, __file__, "writer", str(self.mnt),
                                   str(self.logs / f"w{index}-{w}.log")],
                                  env={**os.environ, "FENCEFS_AGENT": f"r{index}w{w}"}, cwd="/")
                 for w in range(self.args.writers)]
        procs.append(subprocess.Popen([sys.executable, __file__, "snapshotter", str(self.mnt),
                                       str(self.logs / f"s{index}.log")], cwd="/"))
        time.sleep(self.rng.uniform(0.2, 1.0) * self.args.seconds)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        if daemon.stderr:
            daemon.stderr.close()
        self.kills += 1
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)

    def run(self) -> int:
        start = time.monotonic()
        try:
            for index in range(self.args.kills + 1):
                self.round(index)
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        journal = workload.read_journal(self.backing)
        rolled = [e.get("rolled") for e in journal if e.get("event") == "txn-recovered"]
        acks = sum(line.count('"ack"') for p in self.logs.glob("w*.log")
                   for line in p.read_text().splitlines())
        cuts = sum(1 for p in self.logs.glob("s*.log") for _ in p.read_text().splitlines())
        count = int((self.backing / "t" / "count").read_bytes() or b"0")
        log = (self.work / "daemon.log").read_text() if (self.work / "daemon.log").exists() else ""
        if "Traceback" in log:
            self.problems.append("the daemon logged a traceback")
        print(f"kills: {self.kills}")
        print(f"transactions acknowledged: {acks}, committed in all: {count}")
        print(f"rolled forward at mount: {rolled.count('forward')}, "
              f"rolled back: {rolled.count('back')}")
        print(f"snapshots checked: {cuts}")
        print(f"elapsed: {time.monotonic() - start:.1f}s, workdir: {self.work}")
        for problem in self.problems[:50]:
            print(f"PROBLEM: {problem}")
        ok = not self.problems and acks > 0
        print("txn torture: OK" if ok else f"txn torture: FAILED ({len(self.problems)} problems)")
        if ok and not self.args.workdir:
            shutil.rmtree(self.work, ignore_errors=True)
        return 0 if ok else 1


def main(argv: list[str]) -> int:
    if argv and argv[0] == "writer":
        return writer_main(argv[1], argv[2])
    if argv and argv[0] == "snapshotter":
        return snapshotter_main(argv[1], argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the daemon")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="each round kills the daemon within this long")
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", help="keep everything here (default: a temporary dir)")
    return Torture(parser.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
