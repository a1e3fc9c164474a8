"""Shared pieces of scripts/torture.py and scripts/load.py.

Every content a writer tries to commit describes itself::

    fencefs-workload v=7 base=<sha of the content it was built on> w=<writer> s=<seq> n=<len>
    <payload>
    sha=<sha256 of everything above>

so a reader can tell a whole content from a torn one, the version it claims
to have been committed at (the version its writer read, plus one), and the
content it replaced. Writers log every content they try ("try") before
writing it and every commit whose close() (or fsync(), or rename()) returned
success ("ack"). From the file's current content, the base pointers lead
back through every commit that built on another to the seed: an
acknowledged commit that is not on that chain was lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"fencefs-workload"
SEED_BASE = "seed"
TYPED = {"EAGAIN", "ESTALE", "EBUSY"}  # the contract's refusals (conflict, fenced, busy)


@dataclass(frozen=True)
class Content:
    version: int
    base: str
    sha: str


def make_content(version: int, base: str, writer: str, seq: int, payload: bytes) -> bytes:
    head = b"%s v=%d base=%s w=%s s=%d n=%d\n" % (MAGIC, version, base.encode(),
                                                 writer.encode(), seq, len(payload))
    body = head + payload
    return body + b"\nsha=" + hashlib.sha256(body).hexdigest().encode() + b"\n"


def parse_content(data: bytes) -> Content | None:
    """The content's header, or None if it is not one whole content."""
    if not data.startswith(MAGIC + b" "):
        return None
    body, sep, tail = data.rpartition(b"\nsha=")
    if not sep or not tail.endswith(b"\n") or \
            hashlib.sha256(body).hexdigest().encode() != tail[:-1]:
        return None
    head = body.split(b"\n", 1)[0].decode()
    fields = dict(part.split("=", 1) for part in head.split()[1:])
    try:
        version, n = int(fields["v"]), int(fields["n"])
    except (KeyError, ValueError):
        return None
    if len(body) != len(head) + 1 + n:
        return None
    return Content(version, fields.get("base", ""), sha_of(data))


def sha_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def payload(rng_bytes: bytes) -> bytes:
    return rng_bytes.hex().encode()


@dataclass
class Ledger:
    """Everything the writers logged: contents tried, commits acknowledged."""

    tried: dict[tuple[str, str], Content] = field(default_factory=dict)  # (file, sha)
    acked: list[tuple[str, Content]] = field(default_factory=list)
    epochs: dict[str, int] = field(default_factory=dict)  # highest epoch seen, per file
    appended: dict[str, set[str]] = field(default_factory=dict)  # acked lines per file
    refused_appends: dict[str, set[str]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # errno name -> count
    reads: int = 0
    torn_reads: int = 0

    def read_logs(self, paths: Iterable[Path]) -> None:
        for path in paths:
            with open(path) as f:
                for line in f:
                    if not line.endswith("\n"):
                        break  # a writer killed mid-line
                    self.add(json.loads(line))

    def add(self, rec: dict[str, object]) -> None:
        kind = rec["k"]
        name = str(rec.get("f", ""))
        if kind in ("try", "ack"):
            content = Content(int(rec["v"]), str(rec["b"]), str(rec["h"]))  # type: ignore[arg-type]
            self.tried[(name, content.sha)] = content
            if kind == "ack":
                self.acked.append((name, content))
        elif kind == "epoch":
            self.epochs[name] = max(self.epochs.get(name, 0), int(rec["e"]))  # type: ignore[arg-type]
        elif kind == "append":
            self.appended.setdefault(name, set()).add(str(rec["line"]))
        elif kind == "append-refused":
            self.refused_appends.setdefault(name, set()).add(str(rec["line"]))
        elif kind == "error":
            err = str(rec["e"])
            self.errors[err] = self.errors.get(err, 0) + 1
        elif kind == "reads":
            self.reads += int(rec["n"])  # type: ignore[arg-type]
            self.torn_reads += int(rec["torn"])  # type: ignore[arg-type]


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    verified: int = 0
    torn: int = 0

    def fail(self, text: str) -> None:
        self.problems.append(text)


def chain_of(ledger: Ledger, name: str, current: Content, verdict: Verdict) -> set[str]:
    """The shas of every content the current one was built on, back to the seed."""
    chain = {current.sha}
    at = current
    while at.base != SEED_BASE:
        below = ledger.tried.get((name, at.base))
        if below is None:
            verdict.fail(f"{name}: v{at.version} rests on a content nobody wrote ({at.base})")
            break
        if below.version != at.version - 1:
            verdict.fail(f"{name}: v{at.version} rests on v{below.version}, not v{at.version - 1}")
        chain.add(below.sha)
        at = below
    return chain


def verify_file(ledger: Ledger, name: str, data: bytes, version: int, epoch: int,
                verdict: Verdict) -> Content | None:
    """One rewrite file, after a remount or at the end of a run."""
    content = parse_content(data)
    if content is None:
        verdict.torn += 1
        verdict.fail(f"{name}: torn or unknown content ({len(data)} bytes)")
        return None
    if (name, content.sha) not in ledger.tried:
        verdict.fail(f"{name}: content that no writer wrote")
    if content.version != version:
        verdict.fail(f"{name}: content of v{content.version} persisted as version {version}")
    if epoch < ledger.epochs.get(name, 0):
        verdict.fail(f"{name}: epoch {epoch} went down (was {ledger.epochs[name]})")
    chain = chain_of(ledger, name, content, verdict)
    by_version: dict[int, str] = {}
    for acked_name, acked in ledger.acked:
        if acked_name != name:
            continue
        other = by_version.setdefault(acked.version, acked.sha)
        if other != acked.sha:
            verdict.fail(f"{name}: two commits acknowledged at v{acked.version} (lost update)")
        if acked.sha in chain:
            verdict.verified += 1
        else:
            verdict.fail(f"{name}: acknowledged commit v{acked.version} {acked.sha} was lost")
    return content


def verify_appends(ledger: Ledger, name: str, data: bytes, verdict: Verdict) -> int:
    lines = data.decode(errors="replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    else:
        verdict.fail(f"{name}: ends in a partial line")
    seen: dict[str, int] = {}
    for line in lines:
        seen[line] = seen.get(line, 0) + 1
    acked = ledger.appended.get(name, set())
    for line in acked:
        if seen.get(line, 0) != 1:
            verdict.fail(f"{name}: acknowledged append {line!r} found {seen.get(line, 0)} times")
    for line in ledger.refused_appends.get(name, set()):
        if line in seen:
            verdict.fail(f"{name}: refused append {line!r} landed")
    verdict.verified += len(acked)
    return len(acked)


# -- mounts --------------------------------------------------------------------


def mounted(mountpoint: Path) -> bool:
    from fencefs import wire

    found = wire.mount_at(str(mountpoint))
    return found is not None and found.fstype == wire.FSTYPE


def start_daemon(backing: Path, mnt: Path, log: Path, *extra: str,
                 repo: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fencefs.cli", "mount", "--foreground", "--log-file", str(log),
         *extra, str(backing), str(mnt)],
        cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not mounted(mnt):
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"fencefs daemon died at start: {err}")
        if time.monotonic() > deadline:
            raise RuntimeError("fencefs did not mount within 30 s")
        time.sleep(0.02)
    return proc


def stop_daemon(proc: subprocess.Popen[bytes], mnt: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr:
        proc.stderr.close()


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def read_journal(backing: Path) -> list[dict[str, object]]:
    """Every journal entry, across the rotated segments (journal/NNNNNN.jsonl)."""
    entries = []
    segments = sorted((backing / ".fencefs" / "journal").glob("*.jsonl"))
    for path in [*segments, backing / ".fencefs" / "journal.jsonl"]:
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue
    return entries
