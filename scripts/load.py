#!/usr/bin/env python3
"""Load: many processes doing mixed reads, commits, appends and reclaims.

    scripts/load [--procs 32] [--files 100] [--seconds 60]

One mount, FILES files: most are rewritten (read-modify-write through one
handle, read then O_TRUNC, or a temporary file renamed over), a fifth are
logs that only get appends (one line per open, O_APPEND), and a tenth of
the rewritten ones are under the exclusive policy. PROCS processes pick a
file and an operation at random for SECONDS seconds; one in forty
operations is a reclaim. At the end, after the processes exit:

- zero lost acknowledged commits: every acknowledged rewrite is the file's
  content or built upon by it (the chain of base pointers), every
  acknowledged append is in its log exactly once, no refused append is;
- no reader ever saw a torn content;
- every refusal was typed: EAGAIN, ESTALE or EBUSY, nothing else;
- the daemon's peak RSS (VmHWM), and its open descriptors before the run
  and after it (none leaked).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402
from workload import Ledger, Verdict  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def kind_of(i: int, files: int) -> str:
    if i >= files - files // 5:
        return "log"
    return "exclusive" if i % 10 == 9 else "rewrite"


def name_of(i: int, files: int) -> str:
    return f"{kind_of(i, files)}-{i:03d}.dat"


# -- a client process ------------------------------------------------------------


def client_main(mnt: Path, files: int, me: str, log_path: Path, seed: int,
                until: float) -> int:
    rng = random.Random(seed)
    log = open(log_path, "w", buffering=1 << 16)
    seq, reads, torn = 0, 0, 0

    def record(**rec: object) -> None:
        log.write(json.dumps(rec) + "\n")

    while time.time() < until:
        i = rng.randrange(files)
        name = name_of(i, files)
        path = mnt / name
        op = rng.random()
        seq += 1
        try:
            if op < 0.025:
                os.setxattr(path, "user.fencefs.reclaim", b"1")
                record(k="epoch", f=name, e=int(os.getxattr(path, "user.fencefs.epoch")))
            elif kind_of(i, files) == "log":
                if op < 0.4:
                    with open(path, "rb") as f:
                        data = f.read()
                    reads += 1
                    if data and not data.endswith(b"\n"):
                        torn += 1
                else:
                    line = f"{me}:{seq}"
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                    try:
                        os.write(fd, line.encode() + b"\n")
                    except OSError:
                        record(k="append-refused", f=name, line=line)
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                        raise
                    try:
                        os.close(fd)
                    except OSError:
                        record(k="append-refused", f=name, line=line)
                        raise
                    record(k="append", f=name, line=line)
            elif op < 0.45:
                with open(path, "rb") as f:
                    data = f.read()
                reads += 1
                if workload.parse_content(data) is None:
                    torn += 1
            else:
                rewrite(mnt, path, name, me, seq, rng, record)
        except OSError as e:
            record(k="error", e=errno.errorcode.get(e.errno or 0, str(e.errno)), f=name)
    record(k="reads", n=reads, torn=torn)
    log.close()
    return 0


def rewrite(mnt: Path, path: Path, name: str, me: str, seq: int, rng: random.Random,
            record: object) -> None:
    rec = record  # type: ignore[assignment]
    how = rng.choice(["rw", "trunc", "rename"])
    size = rng.choice([0, 64, 1024, 16384])
    if how == "rw":
        fd = os.open(path, os.O_RDWR)
        try:
            base = workload.parse_content(os.pread(fd, 1 << 20, 0))
            if base is None:
                rec(k="error", e="TORN", f=name)  # type: ignore[operator]
                return
            data = workload.make_content(base.version + 1, base.sha, me, seq,
                                         workload.payload(rng.randbytes(size // 2)))
            new = workload.parse_content(data)
            assert new is not None
            rec(k="try", f=name, v=new.version, b=new.base, h=new.sha)  # type: ignore[operator]
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
    else:
        with open(path, "rb") as f:
            base = workload.parse_content(f.read())
        if base is None:
            rec(k="error", e="TORN", f=name)  # type: ignore[operator]
            return
        data = workload.make_content(base.version + 1, base.sha, me, seq,
                                     workload.payload(rng.randbytes(size // 2)))
        new = workload.parse_content(data)
        assert new is not None
        rec(k="try", f=name, v=new.version, b=new.base, h=new.sha)  # type: ignore[operator]
        if how == "trunc":
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        else:
            tmp = mnt / f"{name}.{me}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.rename(tmp, path)
            except OSError:
                os.unlink(tmp)
                raise
    rec(k="ack", f=name, v=new.version, b=new.base, h=new.sha)  # type: ignore[operator]


# -- the driver ------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fencefs-load-"))
    backing, mnt, logs = work / "backing", work / "mnt", work / "logs"
    for d in (backing, mnt, logs):
        d.mkdir(parents=True, exist_ok=True)
    daemon = workload.start_daemon(backing, mnt, work / "daemon.log", repo=REPO)
    problems: list[str] = []
    try:
        with open(logs / "seed.log", "w") as seedlog:
            for i in range(args.files):
                name = name_of(i, args.files)
                if kind_of(i, args.files) == "log":
                    (mnt / name).write_bytes(b"")
                    continue
                data = workload.make_content(1, workload.SEED_BASE, "seed", i, b"seed")
                (mnt / name).write_bytes(data)
                if kind_of(i, args.files) == "exclusive":
                    os.setxattr(mnt / name, "user.fencefs.policy", b"exclusive")
                content = workload.parse_content(data)
                assert content is not None
                seedlog.write(json.dumps({"k": "ack", "f": name, "v": 1,
                                          "b": workload.SEED_BASE, "h": content.sha}) + "\n")
        time.sleep(0.5)
        fds_before = workload.open_fds(daemon.pid)
        rss_before = workload.peak_rss_kib(daemon.pid)
        until = time.time() + args.seconds
        start = time.monotonic()
        procs = [subprocess.Popen(
            [sys.executable, __file__, "client", str(mnt), str(args.files), f"c{n}",
             str(logs / f"c{n}.log"), str(args.seed * 1000 + n if args.seed else
                                          random.randrange(1 << 30)), str(until)],
            env={**os.environ, "FENCEFS_AGENT": f"c{n}"}, cwd="/") for n in range(args.procs)]
        rss_peak = rss_before
        while any(p.poll() is None for p in procs):
            rss_peak = max(rss_peak, workload.peak_rss_kib(daemon.pid))
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        for p in procs:
            if p.returncode != 0:
                problems.append(f"a client exited with {p.returncode}")
        # Releases arrive after the processes exit: give them a moment.
        deadline = time.monotonic() + 20
        while workload.open_fds(daemon.pid) > fds_before and time.monotonic() < deadline:
            time.sleep(0.1)
        fds_after = workload.open_fds(daemon.pid)
        rss_peak = max(rss_peak, workload.peak_rss_kib(daemon.pid))
        if fds_after > fds_before:
            problems.append(f"the daemon holds {fds_after - fds_before} more descriptors "
                            "than before the run")
        ledger = Ledger()
        ledger.read_logs(sorted(logs.glob("*.log")))
        verdict = Verdict()
        for i in range(args.files):
            name = name_of(i, args.files)
            path = mnt / name
            data = path.read_bytes()
            if kind_of(i, args.files) == "log":
                workload.verify_appends(ledger, name, data, verdict)
            else:
                workload.verify_file(ledger, name, data,
                                     int(os.getxattr(path, "user.fencefs.version")),
                                     int(os.getxattr(path, "user.fencefs.epoch")), verdict)
        problems += verdict.problems
        if ledger.torn_reads or ledger.errors.get("TORN"):
            problems.append(f"readers saw {ledger.torn_reads + ledger.errors.get('TORN', 0)} "
                            "torn contents")
        untyped = {k: v for k, v in ledger.errors.items() if k not in workload.TYPED}
        if untyped:
            problems.append(f"refusals that are not typed: {untyped}")
        leftovers = list(mnt.glob("*.tmp"))
        if leftovers:
            problems.append(f"temporary files left: {len(leftovers)}")
    finally:
        workload.stop_daemon(daemon, mnt)
    log_text = (work / "daemon.log").read_text()
    if "Traceback" in log_text or " ERROR " in log_text:
        problems.append("the daemon logged errors")
    rewrites = sum(1 for name, _ in ledger.acked) - sum(
        1 for i in range(args.files) if kind_of(i, args.files) != "log")
    appends = sum(len(v) for v in ledger.appended.values())
    typed = {k: v for k, v in sorted(ledger.errors.items()) if k in workload.TYPED}
    print(f"processes: {args.procs}, files: {args.files}, seconds: {elapsed:.1f}")
    print(f"reads: {ledger.reads}, torn: {ledger.torn_reads}")
    print(f"commits acknowledged: {rewrites} rewrites, {appends} appends")
    print(f"commits verified: {verdict.verified - (len(ledger.acked) - rewrites)}")
    print(f"commits lost: {sum(1 for p in verdict.problems if 'lost' in p or 'found 0' in p)}")
    print(f"reclaims: {sum(1 for _ in ledger.epochs)} files reclaimed at least once")
    print(f"refusals (typed): {sum(typed.values())} {typed}")
    print(f"other errors: {untyped}")
    print(f"daemon peak RSS: {rss_peak / 1024:.1f} MiB (at start {rss_before / 1024:.1f} MiB)")
    print(f"daemon descriptors: {fds_before} before, {fds_after} after")
    for problem in problems[:50]:
        print(f"PROBLEM: {problem}")
    print("load: OK" if not problems else f"load: FAILED ({len(problems)} problems)")
    if not problems and not args.workdir and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not problems else 1


def main(argv: list[str]) -> int:
    if argv and argv[0] == "client":
        mnt, files, me, log, seed, until = argv[1:7]
        return client_main(Path(mnt), int(files), me, Path(log), int(seed), float(until))
    parser = argparse.ArgumentParser(prog="scripts/load", description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, default=32)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir")
    parser.add_argument("--keep", action="store_true")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
