"""The wire protocol between the daemon, ``fencefs.client`` and the CLI.

Written once, read by all three: the ``user.fencefs.*`` attribute names,
the claim-line format of ``user.fencefs.claims`` and ``user.fencefs.claim``,
the status JSON of ``user.fencefs.status``, and the parsing of
``/proc/self/mountinfo`` (how a program finds a fencefs mount and the daemon
its own mount id).

Standard library only, and nothing from the daemon's layers: the client
imports it without trio or pyfuse3.

A claim line is one line of space-separated ``key=value`` fields::

    identity=agent:planner kind=write version=3 epoch=0 pid=4242 lease=1764668000.250

``identity`` is percent-encoded (UTF-8 bytes as ``%XX``) where it has a
space, a control character, something unprintable or a ``%``, so that a
line is always one line and splits on spaces. ``lease`` is the wall-clock
expiry of a write claim's lease, or ``-``. Unknown keys are ignored by the
parser (a newer daemon may add some).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CLAIM", "CLAIMS", "COMMIT", "DELETE_LIST", "EPOCH", "POLICY", "PREFIX", "READABLE",
    "RECLAIM", "RECLAIM_AGENT", "RECLAIM_EXPIRED", "RENEW", "RESTS_LIST", "RESULT", "SNAPSHOTS",
    "SNAPSHOT_CREATE", "SNAPSHOT_DELETE", "SNAPSHOT_VIEW", "STATUS", "TXN_DIR", "VERSION",
    "HOSTS", "HostEntry", "format_hosts", "parse_hosts",
    "ClaimInfo", "MountInfo", "StatusClaim", "StatusEntry",
    "format_claim", "format_claims", "format_rests", "format_snapshot", "format_status",
    "is_control", "mount_at", "parse_claims", "parse_mountinfo", "parse_rests", "parse_result",
    "parse_snapshot",
    "parse_status", "read_mountinfo", "unescape_mountinfo",
]

# -- attribute names -----------------------------------------------------------

PREFIX = "user.fencefs."
VERSION = PREFIX + "version"
EPOCH = PREFIX + "epoch"
CLAIMS = PREFIX + "claims"  # every claim on the file, one claim line each
CLAIM = PREFIX + "claim"  # the caller's own claims
POLICY = PREFIX + "policy"
RECLAIM = PREFIX + "reclaim"  # write 1: revoke every claim (epoch + 1)
RENEW = PREFIX + "renew"  # write 1: renew the caller's lease
STATUS = PREFIX + "status"  # on the mount's root: every file with claims, as JSON
RECLAIM_EXPIRED = PREFIX + "reclaim-expired"  # on the root: value 1
RECLAIM_AGENT = PREFIX + "reclaim-agent"  # on the root: value is an identity
HOSTS = PREFIX + "hosts"  # on the root of an --etcd mount: the cluster's hosts, as JSON
READABLE = (VERSION, EPOCH, CLAIMS, CLAIM, POLICY)
# Multi-file commits and snapshots (docs/guide.md, "Several files at once").
COMMIT = PREFIX + "commit"  # on MOUNT/.fencefs/txn/NAME: value 1
RESULT = PREFIX + "result"  # on MOUNT/.fencefs/txn/NAME, read: "ERRNAME text" of the last commit
SNAPSHOT_CREATE = PREFIX + "snapshot-create"  # on the root: NAME, or NAME newline DIR
SNAPSHOT_DELETE = PREFIX + "snapshot-delete"  # on the root: NAME
SNAPSHOTS = PREFIX + "snapshots"  # on the root, read: every snapshot, as a JSON list
TXN_DIR = ".fencefs/txn"  # staging directories, under the mount
SNAPSHOT_VIEW = ".fencefs/snapshots"  # snapshots, read-only, under the mount
DELETE_LIST = ".fencefs-delete"  # in a staging directory: paths to delete, one a line
# In a staging directory, optional: what members rest on, one line each,
# "PATH<TAB>VERSION<TAB>EPOCH", or "PATH<TAB>-" for a file that must not exist.
RESTS_LIST = ".fencefs-rests"


def format_rests(rests: dict[str, tuple[int, int] | None]) -> bytes:
    return "".join(f"{p}\t-\n" if r is None else f"{p}\t{r[0]}\t{r[1]}\n"
                   for p, r in sorted(rests.items())).encode()


def parse_rests(text: str) -> dict[str, tuple[int, int] | None]:
    """The lines of ``RESTS_LIST``; ValueError for a line that does not parse."""
    out: dict[str, tuple[int, int] | None] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) == 2 and fields[1] == "-":
            out[fields[0]] = None
        elif len(fields) == 3:
            out[fields[0]] = (int(fields[1]), int(fields[2]))
        else:
            raise ValueError(f"bad line in {RESTS_LIST}: {line!r}")
    return out

FSTYPE = "fuse.fencefs"  # the filesystem type a fencefs mount shows in mountinfo


def format_snapshot(name: str, under: str = "") -> bytes:
    """The value of ``snapshot-create``: the name, then the directory if any."""
    return (name + (f"\n{under}" if under else "")).encode()


def parse_snapshot(value: bytes) -> tuple[str, str]:
    """``NAME`` or ``NAME\nDIR`` (the name is checked by the store)."""
    try:
        text = value.decode()
    except UnicodeDecodeError:
        raise ValueError("snapshot: not UTF-8") from None
    name, _, under = text.partition("\n")
    return name, under


def parse_result(raw: bytes | str) -> tuple[str, str, list[str]]:
    """``user.fencefs.result``: (errno name or "ok", reason word, moved files)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    code, _, rest = text.partition(" ")
    reason, _, detail = rest.partition(" ")
    moved = detail[len("moved="):].split(",") if detail.startswith("moved=") else []
    return code, reason, [m for m in moved if m]


def is_control(name: str) -> bool:
    return name.startswith(PREFIX)


# -- claim lines ---------------------------------------------------------------


@dataclass(frozen=True)
class ClaimInfo:
    """One claim line of ``user.fencefs.claims``."""

    identity: str
    kind: str
    version: int
    epoch: int
    pid: int
    lease: float | None  # wall-clock expiry of a write claim's lease; None for reads


def _quote(identity: str) -> str:
    out = []
    for ch in identity:
        if ch.isprintable() and not ch.isspace() and ch != "%":
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def _unquote(text: str) -> str:
    return urllib.parse.unquote(text, errors="surrogateescape")


def format_claim(claim: ClaimInfo) -> str:
    """One claim line, without its newline."""
    lease = "-" if claim.lease is None else f"{claim.lease:.3f}"
    return (f"identity={_quote(claim.identity)} kind={claim.kind} version={claim.version} "
            f"epoch={claim.epoch} pid={claim.pid} lease={lease}")


def format_claims(claims: Iterable[ClaimInfo]) -> bytes:
    """The value of ``user.fencefs.claims``/``claim``: one line per claim."""
    return "".join(format_claim(c) + "\n" for c in claims).encode()


def parse_claims(text: str | bytes) -> tuple[ClaimInfo, ...]:
    """The claims of a ``user.fencefs.claims`` (or ``claim``) value.

    Raises ValueError on a line that is not a claim line."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    claims = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = dict(part.split("=", 1) for part in line.split(" ") if "=" in part)
        try:
            lease = fields.get("lease", "-")
            claims.append(ClaimInfo(
                identity=_unquote(fields["identity"]), kind=fields["kind"],
                version=int(fields["version"]), epoch=int(fields["epoch"]),
                pid=int(fields.get("pid", "0")),
                lease=None if lease == "-" else float(lease)))
        except (KeyError, ValueError):
            raise ValueError(f"not a claim line: {line!r}") from None
    return tuple(claims)


# -- status JSON ---------------------------------------------------------------


@dataclass(frozen=True)
class StatusClaim:
    identity: str
    pid: int
    kind: str
    version: int
    epoch: int
    lease_left: float | None  # seconds left on a write claim's lease; None for reads
    host: str | None = None  # with --etcd: the host holding the claim
    alive: bool | None = None  # with --etcd: whether that host's etcd lease lives


@dataclass(frozen=True)
class StatusEntry:
    """One file with claims, as ``user.fencefs.status`` shows it."""

    file: str
    version: int
    epoch: int
    policy: str
    claims: tuple[StatusClaim, ...]

    def as_json(self) -> dict[str, object]:
        return {"file": self.file, "version": self.version, "epoch": self.epoch,
                "policy": self.policy,
                "claims": [_claim_json(c) for c in self.claims]}


def _claim_json(c: StatusClaim) -> dict[str, object]:
    d: dict[str, object] = {"identity": c.identity, "pid": c.pid, "kind": c.kind,
                            "version": c.version, "epoch": c.epoch, "lease_left": c.lease_left}
    if c.host is not None:
        d.update(host=c.host, alive=c.alive)
    return d


def format_status(entries: Iterable[StatusEntry]) -> bytes:
    """The value of ``user.fencefs.status``: a JSON list of entries."""
    return json.dumps([e.as_json() for e in entries]).encode()


def parse_status(raw: str | bytes) -> list[StatusEntry]:
    """Entries of a ``user.fencefs.status`` value; ValueError if it is not one."""
    try:
        rows = json.loads(raw)
        if not isinstance(rows, list):
            raise TypeError("not a list")
        return [StatusEntry(
            file=str(row["file"]), version=int(row["version"]), epoch=int(row["epoch"]),
            policy=str(row["policy"]),
            claims=tuple(StatusClaim(
                identity=str(c["identity"]), pid=int(c["pid"]), kind=str(c["kind"]),
                version=int(c["version"]), epoch=int(c["epoch"]),
                lease_left=None if c["lease_left"] is None else float(c["lease_left"]),
                host=None if c.get("host") is None else str(c["host"]),
                alive=None if c.get("alive") is None else bool(c["alive"]))
                for c in row["claims"]))
            for row in rows]
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"not a fencefs status value: {e}") from None


@dataclass(frozen=True)
class HostEntry:
    """One host of an --etcd mount's cluster, as ``user.fencefs.hosts`` shows it."""

    host: str
    alive: bool  # its etcd lease lives
    me: bool  # the host of the mount asked
    pid: int | None = None


def format_hosts(entries: Iterable[HostEntry]) -> bytes:
    return json.dumps([{"host": h.host, "alive": h.alive, "me": h.me, "pid": h.pid}
                       for h in entries]).encode()


def parse_hosts(raw: str | bytes) -> list[HostEntry]:
    try:
        rows = json.loads(raw)
        if not isinstance(rows, list):
            raise TypeError("not a list")
        return [HostEntry(str(r["host"]), bool(r["alive"]), bool(r["me"]),
                          None if r.get("pid") is None else int(r["pid"])) for r in rows]
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"not a fencefs hosts value: {e}") from None


# -- /proc/self/mountinfo ------------------------------------------------------


@dataclass(frozen=True)
class MountInfo:
    """One line of ``/proc/PID/mountinfo`` (see proc(5)), fields unescaped."""

    mount_id: int
    parent_id: int
    device: str  # "major:minor", as st_dev splits
    root: str
    mountpoint: str
    options: str
    fstype: str
    source: str
    super_options: str


_OCTAL = re.compile(rb"\\([0-3][0-7][0-7])")


def unescape_mountinfo(field: bytes) -> str:
    """Undo the kernel's escapes in a mountinfo field: it writes space, tab,
    newline and backslash as ``\\040``, ``\\011``, ``\\012``, ``\\134``.
    Bytes that are not UTF-8 come back as ``os.fsdecode`` gives them, so the
    result compares equal to ``os.path.realpath`` of the same path."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m[1], 8)]), field))


def parse_mountinfo(data: bytes | str) -> list[MountInfo]:
    """Every well-formed line of a mountinfo text, in order (the last mount at
    a path is the one on top). Malformed lines are skipped."""
    if isinstance(data, str):
        data = os.fsencode(data)
    mounts = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)  # optional fields end at a lone "-"
            mounts.append(MountInfo(
                mount_id=int(fields[0]), parent_id=int(fields[1]),
                device=fields[2].decode("ascii"), root=unescape_mountinfo(fields[3]),
                mountpoint=unescape_mountinfo(fields[4]),
                options=fields[5].decode("ascii", "replace"),
                fstype=unescape_mountinfo(fields[sep + 1]),
                source=unescape_mountinfo(fields[sep + 2]),
                super_options=unescape_mountinfo(b" ".join(fields[sep + 3:]))))
        except (ValueError, IndexError):
            continue
    return mounts


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountInfo]:
    """The mounts this process sees; raises OSError where there is no /proc.

    Read with plain ``os.read`` calls (the daemon reads it before its own
    mount answers, and never through a Python file object)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return parse_mountinfo(b"".join(chunks))


def mount_at(mountpoint: str, mounts: Iterable[MountInfo] | None = None) -> MountInfo | None:
    """The mount on top at the absolute, resolved path ``mountpoint``, if any
    (no stat: the mount may not answer)."""
    if mounts is None:
        try:
            mounts = read_mountinfo()
        except OSError:
            return None
    found = None
    for m in mounts:
        if m.mountpoint == mountpoint:
            found = m
    return found
