"""What every host sees of the others: write claims, live hosts, policies.

Each host publishes its write claims under ``/<cluster>/c/PATH\\0HOST\\0ID``
(``ClaimRecord``: identity, pid, what the claim rests on, its lease's end
and its last activity on the wall clock) through a ``Board``: a queue of
puts and deletes sent in batches by one task, off the commit path (a
claim's publication never delays an open or a commit). The keys are not
bound to the host's lease, so the claims of a host whose lease expired (a
dead or frozen host) stay visible as a dead host's, and any host can
reclaim them (``reclaimable``) and delete them (``forget``).

Live hosts are the ``h/HOST`` keys, bound to each host's lease: a host is
alive while etcd keeps its lease. Policies set with ``user.fencefs.policy``
go to ``p/PATH`` with the file's inode, so a policy set for a file that
was since replaced at that path is not applied to the newcomer.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from fencefs.etcd.client import KV, Delete, EtcdClient, EtcdError, Get, Op, Put
from fencefs.etcd.keys import ClaimRecord, Layout, Record

log = logging.getLogger("fencefs.etcd")

BATCH = 64          # ops per transaction (etcd's default limit is 128)
GATHER = 0.05       # seconds a publication waits for others to join its batch


@dataclass(frozen=True)
class RemoteClaim:
    """A write claim as etcd holds it."""

    path: str
    host: str
    claim_id: str
    record: ClaimRecord
    key: bytes


@dataclass(frozen=True)
class HostInfo:
    host: str
    alive: bool
    pid: int | None = None


@dataclass(frozen=True)
class Cluster:
    """One read of the cluster: claims, hosts, and per claimed path (version, epoch)."""

    claims: list[RemoteClaim]
    live: dict[str, HostInfo]
    files: dict[str, tuple[int, int]]
    revision: int

    def hosts(self) -> list[HostInfo]:
        """Every host that is alive or still named by a claim (dead: not alive)."""
        named = {c.host for c in self.claims}
        return sorted([*self.live.values(),
                       *(HostInfo(h, False) for h in named if h not in self.live)],
                      key=lambda h: h.host)

    def current(self, claim: RemoteClaim) -> bool:
        """Does the claim rest on its file's current epoch (not revoked yet)?"""
        state = self.files.get(claim.path)
        return state is not None and claim.record.epoch == state[1]


def claim_key(layout: Layout, path: str, host: str, claim_id: int) -> bytes:
    return layout.claim(path, host, str(claim_id))


async def read_cluster(client: EtcdClient, layout: Layout) -> Cluster:
    """The published claims, the live hosts, and the claimed files' state."""
    res = await client.txn([], [Get(layout.claims(), prefix=True),
                                Get(layout.hosts(), prefix=True)])
    claims = []
    for kv in res.results[0]:
        try:
            path, host, cid = layout.parse_claim(kv.key)
            claims.append(RemoteClaim(path, host, cid, ClaimRecord.from_bytes(kv.value),
                                      kv.key))
        except (ValueError, KeyError, UnicodeDecodeError):
            log.warning("unreadable claim key %r", kv.key[:120])
    live = {}
    for kv in res.results[1]:
        host = kv.key[len(layout.hosts()):].decode("utf-8", "replace")
        live[host] = HostInfo(host, True, _pid_of(kv))
    files: dict[str, tuple[int, int]] = {}
    paths = sorted({c.path for c in claims})
    for i in range(0, len(paths), BATCH // 2):
        chunk = paths[i:i + BATCH // 2]
        ops: list[Op] = []
        for path in chunk:
            ops += [Get(layout.file(path)), Get(layout.epoch(path))]
        got = await client.txn([], ops)
        for n, path in enumerate(chunk):
            f, e = got.results[2 * n], got.results[2 * n + 1]
            version = Record.from_bytes(f[0].value).version if f else 0
            files[path] = (version, int(e[0].value) if e else 0)
    return Cluster(claims, live, files, res.revision)


def _pid_of(kv: KV) -> int | None:
    try:
        identity = Record.from_bytes(kv.value).identity
        return int(identity.split(":", 1)[1]) if identity.startswith("pid:") else None
    except (ValueError, IndexError):
        return None


def reclaimable(cluster: Cluster, me: str, now: float, *, expired: bool) -> list[RemoteClaim]:
    """Other hosts' claims that this host may reclaim, still resting on the
    current epoch: every claim of a dead host; with ``expired``, also a live
    host's claim whose lease ended (its own host reclaims it as well)."""
    found = []
    for c in cluster.claims:
        if c.host == me or not cluster.current(c):
            continue
        dead = c.host not in cluster.live
        if dead or (expired and 0 < c.record.expires <= now):
            found.append(c)
    return found


async def forget(client: EtcdClient, claims: Iterable[RemoteClaim]) -> None:
    """Delete claim keys (a dead host's, once reclaimed)."""
    ops: list[Op] = [Delete(c.key) for c in claims]
    for i in range(0, len(ops), BATCH):
        await client.txn([], ops[i:i + BATCH])


async def own_claims(client: EtcdClient, layout: Layout, host: str) -> list[bytes]:
    """Keys of the claims this host id published (in an earlier life, at start)."""
    kvs, _ = await client.range(layout.claims(), prefix=True)
    mine = []
    for kv in kvs:
        try:
            if layout.parse_claim(kv.key)[1] == host:
                mine.append(kv.key)
        except (ValueError, UnicodeDecodeError):
            continue
    return mine


# -- policies ------------------------------------------------------------------

def policy_value(policy: str | None, ino: int) -> bytes:
    return json.dumps({"p": policy or "", "ino": ino}, separators=(",", ":")).encode()


def parse_policy(raw: bytes) -> tuple[str | None, int]:
    d = json.loads(raw)
    return (str(d.get("p") or "") or None), int(d.get("ino", 0))


async def read_policies(client: EtcdClient, layout: Layout) -> dict[str, tuple[str | None, int]]:
    kvs, _ = await client.range(layout.policies(), prefix=True)
    found = {}
    for kv in kvs:
        try:
            found[layout.path_of(kv.key, b"p")] = parse_policy(kv.value)
        except (ValueError, KeyError, UnicodeDecodeError):
            log.warning("unreadable policy key %r", kv.key[:120])
    return found


# -- the board: this host's publications -------------------------------------------

class Board:
    """Puts and deletes sent in order by one task, batched (it gathers for
    ``GATHER`` seconds first); the last word on a key wins, and a key put and
    deleted before its put was sent is never sent: a claim made and released
    within a batch's gathering costs etcd nothing."""

    def __init__(self) -> None:
        self._pending: dict[bytes, bytes | None] = {}
        self._out: set[bytes] = set()   # keys etcd may hold (a put sent or in flight)
        self._sending = False
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()

    def put(self, key: bytes, value: bytes) -> None:
        self._pending[key] = value
        self._kick()

    def delete(self, key: bytes) -> None:
        if key not in self._out and self._pending.get(key) is not None:
            del self._pending[key]      # never sent: nothing to delete
            if not self._pending and not self._sending:
                self._idle.set()
            return
        self._pending[key] = None
        self._kick()

    def _kick(self) -> None:
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wake.set()

    async def flushed(self) -> None:
        """Wait until everything queued so far reached etcd."""
        await self._idle.wait()

    async def run(self, client: EtcdClient) -> None:
        backoff = 0.1
        while True:
            await self._wake.wait()
            await trio.sleep(GATHER)
            self._wake = trio.Event()
            batch, self._pending = self._pending, {}
            if not batch:
                self._idle.set()
                continue
            self._out.update(k for k, v in batch.items() if v is not None)
            ops: list[Op] = [Put(k, v) if v is not None else Delete(k)
                             for k, v in batch.items()]
            self._sending = True
            try:
                for i in range(0, len(ops), BATCH):
                    await client.txn([], ops[i:i + BATCH])
                backoff = 0.1
                self._out.difference_update(k for k, v in batch.items() if v is None)
            except EtcdError as e:
                log.warning("could not publish %d claim change(s): %s", len(ops), e)
                for k, v in batch.items():
                    self._pending.setdefault(k, v)
                self._wake.set()
                await trio.sleep(backoff)
                backoff = min(2.0, backoff * 2)
                continue
            finally:
                self._sending = False
            if not self._pending:
                self._idle.set()


def wall(deadline: float | None, now: float, clock: float) -> float:
    """A monotonic ``deadline`` (read at ``now``) as wall-clock time (``clock``)."""
    if deadline is None or math.isinf(deadline):
        return 0.0
    return clock + (deadline - now)
