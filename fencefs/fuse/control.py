"""The claim-state attributes: parsing of the values written to them, and the
daemon's state turned into what fencefs.wire formats (names and formats live there)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from fencefs.core.errors import BadValue
from fencefs.core.model import POLICIES, Claim, FileState
from fencefs.wire import (  # noqa: F401 - the names the handlers use, from the one wire module
    CLAIM,
    CLAIMS,
    COMMIT,
    EPOCH,
    POLICY,
    PREFIX,
    READABLE,
    RECLAIM,
    RECLAIM_AGENT,
    RECLAIM_EXPIRED,
    RENEW,
    RESULT,
    SNAPSHOT_CREATE,
    SNAPSHOT_DELETE,
    SNAPSHOTS,
    STATUS,
    VERSION,
    ClaimInfo,
    StatusClaim,
    StatusEntry,
    format_claims,
    format_status,
    is_control,
    parse_snapshot,
)


def claim_info(claim: Claim, now: float) -> ClaimInfo:
    """A claim as its claim line shows it: the lease as wall-clock time
    (measured on the daemon's monotonic clock, ``now``)."""
    lease = None if claim.lease_expiry is None else time.time() + (claim.lease_expiry - now)
    return ClaimInfo(identity=claim.identity, kind=claim.kind.value, version=claim.version,
                     epoch=claim.epoch, pid=claim.pid, lease=lease)


def value_of(name: str, file: FileState, identity: str, now: float, policy: str) -> bytes:
    if name == VERSION:
        return str(file.version).encode()
    if name == EPOCH:
        return str(file.epoch).encode()
    if name == POLICY:
        return policy.encode()
    if name == CLAIMS:
        return format_claims(claim_info(c, now) for c in file.claims())
    if name == CLAIM:
        return format_claims(claim_info(c, now) for c in file.claims()
                             if c.identity == identity)
    raise KeyError(name)


def status_of(files: Iterable[FileState], now: float,
              policy_of: Callable[[FileState], str]) -> bytes:
    entries = []
    for file in sorted(files, key=lambda f: f.path):
        claims = file.claims()
        if claims:
            entries.append(StatusEntry(
                file=file.path, version=file.version, epoch=file.epoch,
                policy=policy_of(file), claims=tuple(status_claim(c, now) for c in claims)))
    return format_status(entries)


def status_claim(claim: Claim, now: float) -> StatusClaim:
    return StatusClaim(
        identity=claim.identity, pid=claim.pid, kind=claim.kind.value,
        version=claim.version, epoch=claim.epoch,
        lease_left=None if claim.lease_expiry is None else round(claim.lease_expiry - now, 3))


def parse_one(value: bytes, name: str = RECLAIM) -> None:
    if value.strip() != b"1":
        raise BadValue(f"{name} takes the value 1")


def parse_identity(value: bytes) -> str:
    """An identity as shown in claims (agent:ID, pid:N) or a bare agent ID."""
    try:
        text = value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadValue("identity must be UTF-8") from None
    if not text or len(text) > 300 or any(not c.isprintable() for c in text):
        raise BadValue("bad identity")
    if text.startswith(("agent:", "pid:", "thread:", "session:")):
        return text
    return f"agent:{text}"


def parse_policy(value: bytes) -> str:
    try:
        policy = value.decode("ascii").strip()
    except UnicodeDecodeError:
        raise BadValue("policy must be ASCII") from None
    if policy not in POLICIES:
        raise BadValue(f"policy must be one of {', '.join(POLICIES)}")
    return policy
