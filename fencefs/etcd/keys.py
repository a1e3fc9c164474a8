"""The etcd key layout of a fencefs cluster and its records' wire format.

Everything lives under ``/<cluster>/`` (``--cluster``, default ``fencefs``);
``PATH`` is a file's path relative to the backing directory:

- ``/<cluster>/backing``: the backing marker ``{"cluster", "id"}``.
- ``/<cluster>/f/PATH``: the file record ``{v, e, p, c, h, i[, t]}`` (version,
  epoch at commit, policy, content id, host, identity, and the transaction
  of a multi-file commit). Its
  ``mod_revision`` is the fencing token of the version guard.
- ``/<cluster>/e/PATH``: the file's epoch, decimal; absent means 0.
- ``/<cluster>/x/PATH``: the exclusive holder ``{h, i, id}``, bound to the
  holding host's lease.
- ``/<cluster>/xh/PATH``: the same without a lease ("held, not released"):
  left behind by a holder whose lease expired, it makes the next writer
  reclaim.
- ``/<cluster>/c/PATH\\0HOST\\0ID``: a write claim ``{i, pid, v, e, r, x,
  a}`` (x, a: its lease's end and its last activity, wall-clock seconds),
  published by the holding host for status, sweep and reclaim across
  hosts. Not bound to the host's lease: a dead host's claims stay visible
  (as a dead host's) until another host reclaims them (fencefs/etcd/hosts.py).
- ``/<cluster>/p/PATH``: a policy set with ``user.fencefs.policy``
  ``{p, ino}`` (p: the policy, "" for none; ino: the file's inode then).
- ``/<cluster>/h/HOST``: a live host ``{mount, pid}``, bound to its lease.
- ``/<cluster>/t/TXN``: a multi-file commit's intent ``{h, i, m}`` (host,
  identity, members: file, draft, version, epoch, delete), put by the same
  etcd transaction that decides it and deleted once every member is
  installed; or ``{"aborted": ...}``, put by a host that gave the
  transaction up, so that it can never apply late (``fencefs/etcd/txns.py``).

File names cannot contain NUL, so ``PATH\\0`` is a prefix that covers the
claims of one file and no other file's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_CLUSTER_NAME = 128


def check_cluster_name(name: str) -> str:
    """``name`` if usable as ``--cluster``; ``ValueError`` with the reason otherwise."""
    if not name:
        raise ValueError("the cluster name is empty")
    if "/" in name:
        raise ValueError(f"the cluster name may not contain '/': {name!r}")
    if len(name) > MAX_CLUSTER_NAME or not name.isprintable() or name.strip() != name:
        raise ValueError(f"the cluster name must be printable, without surrounding blanks "
                         f"and at most {MAX_CLUSTER_NAME} characters: {name!r}")
    return name


def check_host_id(host: str) -> str:
    if not host or "\0" in host or not host.isprintable() or len(host) > 512:
        raise ValueError(f"bad host id {host!r} (printable, no NUL, at most 512 characters)")
    return host


class Layout:
    """The keys of one cluster."""

    def __init__(self, cluster: str) -> None:
        self.cluster = check_cluster_name(cluster)
        self.root = f"/{cluster}/".encode()

    def marker(self) -> bytes:
        return self.root + b"backing"

    def file(self, path: str) -> bytes:
        return self.root + b"f/" + path.encode()

    def files(self) -> bytes:
        return self.root + b"f/"

    def epoch(self, path: str) -> bytes:
        return self.root + b"e/" + path.encode()

    def holder(self, path: str) -> bytes:
        return self.root + b"x/" + path.encode()

    def held(self, path: str) -> bytes:
        return self.root + b"xh/" + path.encode()

    def claims(self, path: str | None = None) -> bytes:
        """The prefix of one file's claims, or of every claim."""
        return self.root + b"c/" + (path.encode() + b"\0" if path is not None else b"")

    def claim(self, path: str, host: str, claim_id: str) -> bytes:
        return self.claims(path) + host.encode() + b"\0" + claim_id.encode()

    def policy(self, path: str) -> bytes:
        return self.root + b"p/" + path.encode()

    def policies(self) -> bytes:
        return self.root + b"p/"

    def intents(self) -> bytes:
        return self.root + b"t/"

    def intent(self, txn: str) -> bytes:
        return self.intents() + txn.encode()

    def hosts(self) -> bytes:
        return self.root + b"h/"

    def host(self, host: str) -> bytes:
        return self.hosts() + host.encode()

    def path_of(self, key: bytes, kind: bytes) -> str:
        """The file path in a ``f/``, ``e/``, ``x/``, ``xh/`` or ``p/`` key."""
        head = self.root + kind + b"/"
        if not key.startswith(head):
            raise ValueError(f"{key!r} is not a {kind.decode()}/ key of {self.cluster}")
        return key[len(head):].decode()

    def parse_claim(self, key: bytes) -> tuple[str, str, str]:
        """(path, host, claim id) of a claim key."""
        rest = key[len(self.claims()):]
        path, host, claim_id = rest.split(b"\0")
        return path.decode(), host.decode(), claim_id.decode()


def _dump(d: dict[str, Any]) -> bytes:
    return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Record:
    """A file's decided state: the value of ``/<cluster>/f/PATH``."""

    version: int
    epoch: int
    policy: str | None = None
    content: str = ""       # the content id: the draft's name on the shared backing
    host: str = ""
    identity: str = ""
    txn: str = ""           # a multi-file commit's id: its intent is t/TXN

    def to_bytes(self) -> bytes:
        d: dict[str, Any] = {"v": self.version, "e": self.epoch, "c": self.content,
                             "h": self.host, "i": self.identity}
        if self.policy is not None:
            d["p"] = self.policy
        if self.txn:
            d["t"] = self.txn
        return _dump(d)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Record:
        d = json.loads(raw)
        if not isinstance(d, dict) or not isinstance(d.get("v"), int) \
                or not isinstance(d.get("e"), int):
            raise ValueError(f"not a file record: {raw[:80]!r}")
        policy = d.get("p")
        return cls(d["v"], d["e"], policy if isinstance(policy, str) else None,
                   str(d.get("c", "")), str(d.get("h", "")), str(d.get("i", "")),
                   str(d.get("t", "")))


@dataclass(frozen=True)
class Holder:
    """The exclusive holder of a file: ``/<cluster>/x/PATH`` (and ``xh/``)."""

    host: str
    identity: str
    claim_id: str

    def to_bytes(self) -> bytes:
        return _dump({"h": self.host, "i": self.identity, "id": self.claim_id})

    @classmethod
    def from_bytes(cls, raw: bytes) -> Holder:
        d = json.loads(raw)
        return cls(str(d["h"]), str(d["i"]), str(d["id"]))


@dataclass(frozen=True)
class ClaimRecord:
    """A write claim, visible to every host: ``/<cluster>/c/PATH\\0HOST\\0ID``."""

    identity: str
    pid: int
    version: int
    epoch: int
    revision: int
    expires: float = 0.0     # wall clock: the claim's lease ends (0: unknown)
    active: float = 0.0      # wall clock: its last write, fsync or renew

    def to_bytes(self) -> bytes:
        return _dump({"i": self.identity, "pid": self.pid, "v": self.version,
                      "e": self.epoch, "r": self.revision, "x": round(self.expires, 3),
                      "a": round(self.active, 3)})

    @classmethod
    def from_bytes(cls, raw: bytes) -> ClaimRecord:
        d = json.loads(raw)
        return cls(str(d["i"]), int(d["pid"]), int(d["v"]), int(d["e"]), int(d["r"]),
                   float(d.get("x", 0.0)), float(d.get("a", 0.0)))


@dataclass(frozen=True)
class Marker:
    """Which backing directory a cluster serves: in etcd and in BACKING/.fencefs/."""

    cluster: str
    backing_id: str

    def to_bytes(self) -> bytes:
        return _dump({"cluster": self.cluster, "id": self.backing_id})

    @classmethod
    def from_bytes(cls, raw: bytes) -> Marker:
        d = json.loads(raw)
        return cls(str(d["cluster"]), str(d["id"]))
