#!/usr/bin/env python3
"""Crash torture: writers commit while the daemon is SIGKILLed, over and over.

    scripts/torture [--kills N] [--seconds S] [--writers W] [--files F] [--workdir DIR]

Each round mounts a fresh daemon on the same backing directory, checks it,
starts W writer processes and one reclaimer, kills the daemon with SIGKILL
at a random moment within S seconds, lazily unmounts the dead mount, and
goes again. After every remount, and once more at the end:

- every file's content is one whole content some writer wrote (never torn,
  never a mix), and its persisted version is the version that content was
  committed at;
- epochs never went down (each is at least the highest a reclaimer saw);
- every commit whose close(), fsync() or rename() returned success is the
  file's content or is superseded by a commit built on it (the chain of
  base pointers from the current content back to the seed holds it), and no
  two commits were acknowledged at the same version;
- no draft is left behind: the drafts the dead daemon left are put away as
  abandoned and journaled, and every rejected write is named in the journal.

Writers use three kinds of commit: read-modify-write through one O_RDWR
handle (closed, or fsynced then closed), read then rewrite with O_TRUNC, and
write a temporary file then rename it over the target.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402
from workload import Content, Ledger, Verdict  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GONE = {errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV}  # the daemon died


def name_of(i: int) -> str:
    return f"file-{i:02d}.dat"


# -- the writer (a separate process) -------------------------------------------


def writer_main(mnt: Path, files: int, me: str, log_path: Path, seed: int,
                max_payload: int) -> int:
    rng = random.Random(seed)
    log = open(log_path, "a", buffering=1)
    seq = 0

    def record(**rec: object) -> None:
        log.write(json.dumps(rec) + "\n")

    while True:
        name = name_of(rng.randrange(files))
        path = mnt / name
        mode = rng.choice(["rw", "rw-fsync", "trunc", "rename"])
        seq += 1
        try:
            if mode.startswith("rw"):
                fd = os.open(path, os.O_RDWR)
                try:
                    old = read_all(fd)
                    base = workload.parse_content(old)
                    if base is None:
                        record(k="error", e="TORN", f=name)
                        return 1
                    data, new = build(base, me, seq, rng, max_payload)
                    record(k="try", f=name, v=new.version, b=new.base, h=new.sha)
                    write_all(fd, data)
                    os.ftruncate(fd, len(data))
                    if mode == "rw-fsync":
                        os.fsync(fd)
                        record(k="ack", f=name, v=new.version, b=new.base, h=new.sha)
                finally:
                    os.close(fd)  # raises if the commit was refused
                if mode == "rw":
                    record(k="ack", f=name, v=new.version, b=new.base, h=new.sha)
            else:
                with open(path, "rb") as f:
                    base = workload.parse_content(f.read())
                if base is None:
                    record(k="error", e="TORN", f=name)
                    return 1
                data, new = build(base, me, seq, rng, max_payload)
                record(k="try", f=name, v=new.version, b=new.base, h=new.sha)
                if mode == "trunc":
                    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
                    try:
                        write_all(fd, data)
                    finally:
                        os.close(fd)
                else:
                    tmp = mnt / f"{name}.{me}.tmp"
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    try:
                        write_all(fd, data)
                    finally:
                        os.close(fd)
                    os.rename(tmp, path)
                record(k="ack", f=name, v=new.version, b=new.base, h=new.sha)
        except OSError as e:
            if e.errno in GONE:
                return 0
            record(k="error", e=errno.errorcode.get(e.errno or 0, str(e.errno)), f=name)


def build(base: Content, me: str, seq: int, rng: random.Random,
          max_payload: int) -> tuple[bytes, Content]:
    size = rng.choice([0, 10, 100, 4096, 70_000, max_payload])
    data = workload.make_content(base.version + 1, base.sha, me, seq,
                                 workload.payload(rng.randbytes(min(size, max_payload) // 2)))
    content = workload.parse_content(data)
    assert content is not None
    return data, content


def read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    offset = 0
    while offset < len(data):  # in several writes: a torn commit would show
        offset += os.pwrite(fd, view[offset:offset + 16384], offset)


def reclaimer_main(mnt: Path, files: int, log_path: Path, seed: int) -> int:
    rng = random.Random(seed)
    log = open(log_path, "a", buffering=1)
    while True:
        name = name_of(rng.randrange(files))
        try:
            os.setxattr(mnt / name, "user.fencefs.reclaim", b"1")
            epoch = int(os.getxattr(mnt / name, "user.fencefs.epoch"))
            log.write(json.dumps({"k": "epoch", "f": name, "e": epoch}) + "\n")
        except OSError as e:
            if e.errno in GONE:
                return 0
            log.write(json.dumps({"k": "error", "e": errno.errorcode.get(e.errno or 0),
                                  "f": name}) + "\n")
        time.sleep(rng.uniform(0.01, 0.1))


# -- the driver ------------------------------------------------------------------


class Torture:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="fencefs-torture-"))
        self.backing = self.work / "backing"
        self.mnt = self.work / "mnt"
        self.logs = self.work / "logs"
        for d in (self.backing, self.mnt, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.daemon_log = self.work / "daemon.log"
        self.rng = random.Random(args.seed)
        self.verdict = Verdict()
        self.kills = 0
        self.abandoned_expected = 0
        self.epochs_seen: dict[str, int] = {}
        self.versions_seen: dict[str, int] = {}
        self.counts = {"orphaned drafts": 0, "history entries checked": 0}
        self.reported: set[str] = set()

    def log_paths(self) -> list[Path]:
        return sorted(self.logs.glob("*.log"))

    def ledger(self) -> Ledger:
        ledger = Ledger()
        ledger.read_logs(self.log_paths())
        return ledger

    def seed(self) -> None:
        with open(self.logs / "seed.log", "w") as log:
            for i in range(self.args.files):
                data = workload.make_content(1, workload.SEED_BASE, "seed", i, b"seed")
                content = workload.parse_content(data)
                assert content is not None
                with open(self.mnt / name_of(i), "wb") as f:
                    f.write(data)
                rec = {"f": name_of(i), "v": 1, "b": workload.SEED_BASE, "h": content.sha}
                log.write(json.dumps({"k": "ack", **rec}) + "\n")

    def verify(self, when: str) -> None:
        ledger = self.ledger()
        verdict = Verdict()
        for i in range(self.args.files):
            name = name_of(i)
            path = self.mnt / name
            with open(path, "rb") as f:
                data = f.read()
            version = int(os.getxattr(path, "user.fencefs.version"))
            epoch = int(os.getxattr(path, "user.fencefs.epoch"))
            workload.verify_file(ledger, name, data, version, epoch, verdict)
            if epoch < self.epochs_seen.get(name, 0):
                verdict.fail(f"{name}: epoch went down across a remount")
            if version < self.versions_seen.get(name, 0):
                verdict.fail(f"{name}: version went down across a remount")
            self.epochs_seen[name] = epoch
            self.versions_seen[name] = version
        # Drafts: none left; every one the dead daemon left is journaled as abandoned.
        drafts = os.listdir(self.backing / ".fencefs" / "drafts")
        if drafts:
            verdict.fail(f"drafts left behind after the remount: {drafts}")
        journal = workload.read_journal(self.backing)
        abandoned = [e for e in journal if e.get("event") == "abandoned"
                     and e.get("reason") == "daemon-restart"]
        if len(abandoned) != self.abandoned_expected:
            verdict.fail(f"{self.abandoned_expected} orphaned drafts, "
                         f"{len(abandoned)} journaled as abandoned")
        # Every version up to the current one is journaled as committed once;
        # a commit journaled but never installed (killed in between) is
        # matched by the abandoned draft that carried it, or (a rename or
        # unlink, which have no draft) by the `failed` line the next mount
        # wrote for it.
        unused = {e.get("draft") for e in journal if e.get("event") == "abandoned"} - {None}
        net: dict[tuple[object, object], int] = {}
        ops: dict[tuple[object, object], str] = {}
        for e in journal:
            key = (e.get("file"), e.get("new_version"))
            if e.get("event") == "commit" and e.get("draft") not in unused:
                net[key] = net.get(key, 0) + 1
                ops[key] = str(e.get("op", "commit"))
            elif e.get("event") == "failed" and net.get(key, 0) > 0:
                net[key] -= 1
        for name, version in self.versions_seen.items():
            for v in range(1, version + 1):
                if net.get((name, v), 0) != 1:
                    verdict.fail(f"{name} v{v} is journaled as committed "
                                 f"{net.get((name, v), 0)} times ({ops.get((name, v))})")
            later = [v for (f, v), n in net.items()
                     if f == name and isinstance(v, int) and v > version and n > 0]
            if later:
                verdict.fail(f"{name}: commits of v{later} journaled, file at v{version} "
                             f"({[ops[(name, v)] for v in later]})")
        self.verify_history(verdict)
        named = {e.get("rejected") for e in journal}
        for kept in os.listdir(self.backing / ".fencefs" / "rejected"):
            if kept not in named:
                verdict.fail(f"rejected write {kept} is not in the journal")
        # Leftover temporary files of atomic writers that died before their rename.
        for tmp in self.mnt.glob("*.tmp"):
            tmp.unlink()
        self.verdict.problems += [f"{when}: {p}" for p in verdict.problems
                                  if p not in self.reported]
        self.reported.update(verdict.problems)
        self.verdict.torn += verdict.torn
        self.verdict.verified = verdict.verified  # the last check covers all acks so far

    def verify_history(self, verdict: Verdict) -> None:
        """History (on by default) after a crash: every retained version is a
        whole content, labeled with the version it was committed as, older
        than the file's current version; no entry a crash left half-made."""
        top = self.backing / ".fencefs" / "versions"
        for i in range(self.args.files):
            name = name_of(i)
            d = top / name
            if not d.is_dir():
                continue
            for entry in os.listdir(d):
                if not entry.isdigit():
                    verdict.fail(f"{name}: stray entry {entry} in its history")
                    continue
                path = d / entry
                try:
                    state = json.loads(os.getxattr(path, "user.fencefs.state"))
                except (OSError, ValueError):
                    verdict.fail(f"{name}: history entry {entry} has no state")
                    continue
                if int(state["v"]) != int(entry):
                    verdict.fail(f"{name}: history entry {entry} holds v{state['v']}")
                content = workload.parse_content(path.read_bytes())
                if content is None:
                    verdict.fail(f"{name}: history entry {entry} is not one whole content")
                elif content.version != int(entry):
                    verdict.fail(f"{name}: history entry {entry} holds a content built "
                                 f"as v{content.version}")
                if int(entry) >= self.versions_seen.get(name, 0):
                    verdict.fail(f"{name}: history entry {entry} is not older than the file")
                self.counts["history entries checked"] += 1

    def round(self, index: int) -> None:
        extra = ["--upkeep-interval", "0.5"]
        daemon = workload.start_daemon(self.backing, self.mnt, self.daemon_log, *extra,
                                       repo=REPO)
        if index == 0:
            self.seed()
        self.verify(f"after mount {index}")
        if index == self.args.kills:
            workload.stop_daemon(daemon, self.mnt)
            return
        procs = []
        for w in range(self.args.writers):
            me = f"r{index}w{w}"
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "writer", str(self.mnt), str(self.args.files), me,
                 str(self.logs / f"{me}.log"), str(self.rng.randrange(1 << 30)),
                 str(self.args.max_payload)],
                env={**os.environ, "FENCEFS_AGENT": me}, cwd="/"))
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "reclaimer", str(self.mnt), str(self.args.files),
             str(self.logs / f"r{index}-reclaim.log"), str(self.rng.randrange(1 << 30))],
            cwd="/"))
        time.sleep(self.rng.uniform(0.2, 1.0) * self.args.seconds)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        if daemon.stderr:
            daemon.stderr.close()
        self.kills += 1
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, -signal.SIGKILL):
                self.verdict.fail(f"round {index}: a writer exited with {proc.returncode}")
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        orphans = len(os.listdir(self.backing / ".fencefs" / "drafts"))
        self.counts["orphaned drafts"] += orphans
        self.abandoned_expected += orphans

    def run(self) -> int:
        start = time.monotonic()
        try:
            for index in range(self.args.kills + 1):
                self.round(index)
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        ledger = self.ledger()
        log = self.daemon_log.read_text() if self.daemon_log.exists() else ""
        if "Traceback" in log:
            self.verdict.fail("the daemon logged a traceback")
        if ledger.errors.get("TORN"):
            self.verdict.fail(f"writers read {ledger.errors['TORN']} torn contents")
        untyped = {k: v for k, v in ledger.errors.items() if k not in workload.TYPED}
        acked = len(ledger.acked) - self.args.files  # the seeds are not counted
        print(f"kills: {self.kills}")
        print(f"commits acknowledged: {acked}")
        print(f"commits verified: {self.verdict.verified - self.args.files}")
        print(f"torn files: {self.verdict.torn}")
        print(f"refusals (typed): {sum(v for k, v in ledger.errors.items() if k in workload.TYPED)}"
              f" {dict(sorted((k, v) for k, v in ledger.errors.items() if k in workload.TYPED))}")
        print(f"other errors: {untyped}")
        print(f"reclaims acknowledged: {sum(1 for _ in self.epoch_records())}")
        print(f"orphaned drafts put away and journaled: {self.counts['orphaned drafts']}")
        print(f"history entries checked: {self.counts['history entries checked']}")
        print(f"highest version: {max(self.versions_seen.values(), default=0)}, "
              f"highest epoch: {max(self.epochs_seen.values(), default=0)}")
        print(f"elapsed: {time.monotonic() - start:.1f}s, workdir: {self.work}")
        for problem in self.verdict.problems[:50]:
            print(f"PROBLEM: {problem}")
        ok = not self.verdict.problems and self.verdict.torn == 0 and acked > 0
        print("torture: OK" if ok else f"torture: FAILED ({len(self.verdict.problems)} problems)")
        if ok and not self.args.workdir and not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return 0 if ok else 1

    def epoch_records(self) -> list[str]:
        out = []
        for path in self.logs.glob("*-reclaim.log"):
            with open(path) as f:
                out += [line for line in f if '"epoch"' in line]
        return out


def main(argv: list[str]) -> int:
    if argv and argv[0] == "writer":
        mnt, files, me, log, seed, max_payload = argv[1:7]
        return writer_main(Path(mnt), int(files), me, Path(log), int(seed), int(max_payload))
    if argv and argv[0] == "reclaimer":
        mnt, files, log, seed = argv[1:5]
        return reclaimer_main(Path(mnt), int(files), Path(log), int(seed))
    parser = argparse.ArgumentParser(prog="scripts/torture", description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the daemon")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="longest time between a mount and its kill")
    parser.add_argument("--writers", type=int, default=6)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--max-payload", type=int, default=300_000,
                        help="largest content written, in bytes")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", help="keep everything here (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dir")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("scripts/torture: run as root (it mounts FUSE filesystems)", file=sys.stderr)
    return Torture(args).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
