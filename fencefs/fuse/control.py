"""The claim-state attributes: names, parsing of values, formatting."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

from fencefs.core.errors import BadValue
from fencefs.core.model import POLICIES, Claim, FileState

PREFIX = "user.fencefs."
VERSION, EPOCH, CLAIMS, CLAIM, POLICY = (
    PREFIX + n for n in ("version", "epoch", "claims", "claim", "policy")
)
RECLAIM, RENEW = PREFIX + "reclaim", PREFIX + "renew"
STATUS = PREFIX + "status"  # on the mount's root: every file with claims, as JSON
RECLAIM_EXPIRED = PREFIX + "reclaim-expired"  # on the root: value 1
RECLAIM_AGENT = PREFIX + "reclaim-agent"  # on the root: value is an identity
READABLE = (VERSION, EPOCH, CLAIMS, CLAIM, POLICY)


def is_control(name: str) -> bool:
    return name.startswith(PREFIX)


def _quote(identity: str) -> str:
    return "".join(c if c.isprintable() and not c.isspace() else f"%{ord(c):02X}"
                   for c in identity)


def format_claim(claim: Claim, now: float) -> str:
    if claim.lease_expiry is None:
        lease = "-"
    else:
        # Shown as wall-clock time; measured on the daemon's monotonic clock.
        lease = f"{time.time() + (claim.lease_expiry - now):.3f}"
    return (f"identity={_quote(claim.identity)} kind={claim.kind.value} "
            f"version={claim.version} epoch={claim.epoch} pid={claim.pid} lease={lease}")


def format_claims(claims: list[Claim], now: float) -> bytes:
    return "".join(format_claim(c, now) + "\n" for c in claims).encode()


def value_of(name: str, file: FileState, identity: str, now: float, policy: str) -> bytes:
    if name == VERSION:
        return str(file.version).encode()
    if name == EPOCH:
        return str(file.epoch).encode()
    if name == POLICY:
        return policy.encode()
    if name == CLAIMS:
        return format_claims(file.claims(), now)
    if name == CLAIM:
        return format_claims([c for c in file.claims() if c.identity == identity], now)
    raise KeyError(name)


def status_of(files: Iterable[FileState], now: float,
              policy_of: Callable[[FileState], str]) -> bytes:
    rows = []
    for file in sorted(files, key=lambda f: f.path):
        claims = file.claims()
        if not claims:
            continue
        rows.append({
            "file": file.path, "version": file.version, "epoch": file.epoch,
            "policy": policy_of(file),
            "claims": [claim_row(c, now) for c in claims],
        })
    return json.dumps(rows).encode()


def claim_row(claim: Claim, now: float) -> dict[str, object]:
    return {
        "identity": claim.identity, "pid": claim.pid, "kind": claim.kind.value,
        "version": claim.version, "epoch": claim.epoch,
        "lease_left": (None if claim.lease_expiry is None
                       else round(claim.lease_expiry - now, 3)),
    }


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
