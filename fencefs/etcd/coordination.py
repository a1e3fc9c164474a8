"""The multi-host protocol as etcd transactions (docs/multihost.md).

The plain functions build a transaction's parts or judge its outcome, with
no I/O: ``commit_txn``, ``reclaim_txn``, ``acquire_txn``, ``judge_commit``,
``judge_marker``, ``roll_forward_action``. The ``async`` functions make the
round trips with an ``EtcdClient``: ``read``, ``commit``, ``reclaim``,
``acquire_exclusive``, ``release_exclusive``, ``ensure_marker``.

A commit is decided by ONE transaction (spec: ``specs/MultiHost.tla``,
action ``Decide``)::

    compare  /<c>/e/PATH value == claim.epoch   (absent: epoch 0)   EpochGuard, G2
             /<c>/f/PATH mod_revision == claim.revision              VersionGuard, G1
             [exclusive] /<c>/x/PATH lease == the holder's lease
    success  put /<c>/f/PATH {v+1, e, p, content id, host, identity}
    failure  get f/, e/, x/, xh/ -> Fenced (epoch moved, checked first),
                                    Conflict (revision moved), lease lost

and only then is the draft named by the content id renamed into place
(``install``). A host that dies in between leaves the record ahead of the
installed file; ``roll_forward_action`` tells any host what to do about it.
"""

from __future__ import annotations

import enum
import errno
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import trio

from fencefs.core.errors import Busy, Conflict, Fenced, FenceError
from fencefs.etcd.client import (
    KV,
    Compare,
    Delete,
    EtcdClient,
    EtcdUnreachable,
    Get,
    Op,
    Put,
    TxnResult,
    absent,
    lease_is,
    mod_is,
    value_is,
)
from fencefs.etcd.keys import Holder, Layout, Marker, Record

UNREACHABLE_ERRNO = errno.EHOSTUNREACH


class Unreachable(FenceError):
    """etcd could not decide the commit (all members down, or partitioned).

    Distinct from conflict, fenced and busy: nothing was committed anywhere,
    the bytes go to ``rejected/``; retry once etcd is back.
    """

    errno = UNREACHABLE_ERRNO
    reason = "unreachable"


def new_content_id(host: str) -> str:
    """A content id unique across hosts: names the draft on the shared backing."""
    return f"{uuid.uuid4().hex}.draft"


# -- reading one file ----------------------------------------------------------

@dataclass(frozen=True)
class View:
    """What etcd holds about one file, read at one revision."""

    path: str
    record: Record | None
    revision: int            # the file key's mod_revision; 0: no record yet
    epoch: int
    holder: Holder | None = None
    holder_lease: int = 0
    held: Holder | None = None
    read_revision: int = 0
    policy: tuple[str | None, int] | None = None   # p/PATH: set by a host (fencefs/etcd/hosts.py)

    @property
    def version(self) -> int:
        return self.record.version if self.record else 0


READ_OPS = 5  # the operations of read_ops, one batch's unit (etcd/reads.py)


def read_ops(layout: Layout, path: str) -> list[Op]:
    return [Get(layout.file(path)), Get(layout.epoch(path)), Get(layout.holder(path)),
            Get(layout.held(path)), Get(layout.policy(path))]


def slice_of(results: list[list[KV]], n: int) -> list[list[KV]]:
    """The results of the ``n``-th path's ``read_ops`` in a batch of them."""
    return results[READ_OPS * n:READ_OPS * (n + 1)]


def view_from(path: str, results: list[list[KV]], revision: int) -> View:
    f, e, x, xh, p = (results + [[]] * READ_OPS)[:READ_OPS]
    record = Record.from_bytes(f[0].value) if f else None
    epoch = int(e[0].value) if e else 0
    holder = Holder.from_bytes(x[0].value) if x else None
    held = Holder.from_bytes(xh[0].value) if xh else None
    return View(path, record, f[0].mod_revision if f else 0, epoch, holder,
                x[0].lease if x else 0, held, revision, policy_of(p))


def policy_of(kvs: list[KV]) -> tuple[str | None, int] | None:
    from fencefs.etcd.hosts import parse_policy

    try:
        return parse_policy(kvs[0].value) if kvs else None
    except (ValueError, TypeError):
        return None


async def read(client: EtcdClient, layout: Layout, path: str) -> View:
    res = await client.txn([], read_ops(layout, path))
    return view_from(path, res.results, res.revision)


def epoch_compare(layout: Layout, path: str, epoch: int) -> Compare:
    """The epoch key holds ``epoch`` (epoch 0: the key does not exist)."""
    if epoch == 0:
        return absent(layout.epoch(path))
    return value_is(layout.epoch(path), str(epoch).encode())


# -- the commit ----------------------------------------------------------------

@dataclass(frozen=True)
class EtcdClaim:
    """What a writer's view rests on: version, epoch, and the file key's revision."""

    path: str
    identity: str
    version: int
    epoch: int
    revision: int
    lease: int = 0           # the exclusive holder's lease, 0 if not exclusive

    @classmethod
    def on(cls, view: View, identity: str, lease: int = 0) -> EtcdClaim:
        return cls(view.path, identity, view.version, view.epoch, view.revision, lease)


class Outcome(enum.Enum):
    COMMITTED = "committed"
    CONFLICT = "conflict"
    FENCED = "fenced"
    LEASE_LOST = "lease-lost"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    view: View               # the file after the decision (the failure branch's read)
    revision: int            # the commit's revision (COMMITTED), else the read's
    record: Record | None = None

    def error(self, claim: EtcdClaim) -> FenceError | None:
        """The error for the writer, or None when committed."""
        kind: type[FenceError]
        if self.outcome is Outcome.COMMITTED:
            return None
        kind = Conflict if self.outcome is Outcome.CONFLICT else Fenced
        return kind(claim.path, rested_version=claim.version, rested_epoch=claim.epoch,
                    current_version=self.view.version, current_epoch=self.view.epoch)


def commit_txn(layout: Layout, claim: EtcdClaim, record: Record, *,
               epoch_guard: bool = True, version_guard: bool = True
               ) -> tuple[list[Compare], list[Op], list[Op]]:
    """The commit transaction. The guard flags exist for the mutation tests only."""
    compares = []
    if epoch_guard:
        compares.append(epoch_compare(layout, claim.path, claim.epoch))
    if version_guard:
        compares.append(mod_is(layout.file(claim.path), claim.revision))
    if claim.lease:
        compares.append(lease_is(layout.holder(claim.path), claim.lease))
    return compares, [Put(layout.file(claim.path), record.to_bytes())], \
        read_ops(layout, claim.path)


def judge_commit(claim: EtcdClaim, content: str, res: TxnResult) -> Decision:
    """The outcome of a commit transaction."""
    if res.succeeded:
        # the read ops ran in the failure branch only; the record is the one put
        return Decision(Outcome.COMMITTED, View(claim.path, None, res.revision, claim.epoch),
                        res.revision)
    return judge_view(claim, content, view_from(claim.path, res.results, res.revision))


def judge_view(claim: EtcdClaim, content: str, view: View) -> Decision:
    """Why a commit resting on ``claim`` did not apply, seen from ``view``;
    or that it did, when the record names our content (an earlier attempt
    whose reply was lost). The epoch is judged first, as in ``decide``."""
    if view.record is not None and content and view.record.content == content:
        return Decision(Outcome.COMMITTED, view, view.revision, view.record)
    if view.epoch != claim.epoch:
        return Decision(Outcome.FENCED, view, view.read_revision)
    if view.revision != claim.revision:
        return Decision(Outcome.CONFLICT, view, view.read_revision)
    if claim.lease and view.holder_lease != claim.lease:
        return Decision(Outcome.LEASE_LOST, view, view.read_revision)
    return Decision(Outcome.CONFLICT, view, view.read_revision)


async def commit(client: EtcdClient, layout: Layout, claim: EtcdClaim, record: Record,
                 install: Callable[[Record, int], None], **guards: bool) -> Decision:
    """Decide ``record`` (resting on ``claim``) in one transaction, then ``install``.

    ``install(record, revision)`` runs once the decision is known to be a
    commit, with no await in between. ``Unreachable`` when etcd could not
    decide (the commit did not and will not happen); ``EtcdUnreachable``
    with ``ambiguous`` when not even a read-back could tell: then the draft
    must stay where roll-forward can find it.
    """
    compares, success, failure = commit_txn(layout, claim, record, **guards)
    try:
        res = await client.txn(compares, success, failure)
        decision = judge_commit(claim, record.content, res)
    except EtcdUnreachable as e:
        if not e.ambiguous:
            raise Unreachable(claim.path, rested_version=claim.version,
                              rested_epoch=claim.epoch) from e
        decision = await resolve(client, layout, claim, record)
    if decision.outcome is Outcome.COMMITTED:
        install(record, decision.revision)
    return decision


async def resolve(client: EtcdClient, layout: Layout, claim: EtcdClaim,
                  record: Record) -> Decision:
    """Settle a commit whose reply was lost: did it apply, and can it still?

    Read back: our content id in the record means it applied. Otherwise, if
    the file key still sits at the claim's revision, a proposal of ours
    could still be in flight; rewrite the key with its own value (an
    "abort") so that its revision moves and our compare can never pass.
    """
    view = await read(client, layout, claim.path)
    if view.revision == claim.revision and not (
            view.record is not None and view.record.content == record.content):
        current = view.record or Record(0, view.epoch)
        res = await client.txn([mod_is(layout.file(claim.path), claim.revision)],
                               [Put(layout.file(claim.path), current.to_bytes())],
                               read_ops(layout, claim.path))
        if res.succeeded:
            raise Unreachable(claim.path, rested_version=claim.version,
                              rested_epoch=claim.epoch)
        view = view_from(claim.path, res.results, res.revision)
    return judge_view(claim, record.content, view)


# -- reclaim and the exclusive holder -----------------------------------------

def reclaim_txn(layout: Layout, path: str, epoch: int) -> tuple[list[Compare], list[Op],
                                                                  list[Op]]:
    """Bump the epoch from ``epoch``; revokes the exclusive holder too."""
    return ([epoch_compare(layout, path, epoch)],
            [Put(layout.epoch(path), str(epoch + 1).encode()), Delete(layout.holder(path)),
             Delete(layout.held(path))],
            read_ops(layout, path))


async def reclaim(client: EtcdClient, layout: Layout, path: str,
                  tries: int = 16) -> tuple[int, int]:
    """Bump ``path``'s epoch, whatever it is now: (new epoch, revision)."""
    view = await read(client, layout, path)
    for _ in range(tries):
        res = await client.txn(*reclaim_txn(layout, path, view.epoch))
        if res.succeeded:
            return view.epoch + 1, res.revision
        view = view_from(path, res.results, res.revision)
    raise Conflict(path, current_epoch=view.epoch)


def acquire_txn(layout: Layout, view: View, holder: Holder, lease: int
                ) -> tuple[list[Compare], list[Op], list[Op]]:
    """Take the exclusive hold on ``view.path``; a hold never released (its
    holder's lease expired: ``xh/`` still there) is reclaimed in the same step."""
    path = view.path
    success: list[Op] = [Put(layout.holder(path), holder.to_bytes(), lease),
                         Put(layout.held(path), holder.to_bytes())]
    if view.held is not None and view.held.claim_id != holder.claim_id:
        success.append(Put(layout.epoch(path), str(view.epoch + 1).encode()))
    return ([absent(layout.holder(path)), epoch_compare(layout, path, view.epoch),
             mod_is(layout.held(path), 0) if view.held is None else
             value_is(layout.held(path), view.held.to_bytes())],
            success, read_ops(layout, path))


async def acquire_exclusive(client: EtcdClient, layout: Layout, path: str, holder: Holder,
                            lease: int, tries: int = 16) -> tuple[View, bool]:
    """The exclusive hold for ``holder``: (the view it rests on, whether a
    lease-expired holder was reclaimed). ``Busy`` while another identity's
    hold is live; the same identity (on any host) never blocks itself."""
    view = await read(client, layout, path)
    for _ in range(tries):
        if view.holder is not None:
            if view.holder.identity == holder.identity:
                return view, False
            raise Busy(path, current_version=view.version, current_epoch=view.epoch)
        res = await client.txn(*acquire_txn(layout, view, holder, lease))
        if res.succeeded:
            reclaimed = view.held is not None and view.held.claim_id != holder.claim_id
            epoch = view.epoch + 1 if reclaimed else view.epoch
            return View(path, view.record, view.revision, epoch, holder, lease, holder,
                        res.revision), reclaimed
        view = view_from(path, res.results, res.revision)
    raise Busy(path, current_version=view.version, current_epoch=view.epoch)


async def release_exclusive(client: EtcdClient, layout: Layout, path: str,
                            holder: Holder, lease: int) -> bool:
    """Give up the hold if it is still ours (its lease, its claim id)."""
    res = await client.txn([lease_is(layout.holder(path), lease),
                            value_is(layout.held(path), holder.to_bytes())],
                           [Delete(layout.holder(path)), Delete(layout.held(path))])
    return res.succeeded


# -- the backing marker --------------------------------------------------------

def judge_marker(cluster: str, on_disk: Marker | None, in_etcd: Marker | None) -> str | None:
    """None if the mount may go on (creating the markers if both are missing),
    else the one-line reason to refuse it."""
    if on_disk is not None and on_disk.cluster != cluster:
        return (f"the backing directory belongs to fencefs cluster {on_disk.cluster!r}, "
                f"not {cluster!r}")
    if in_etcd is not None and on_disk is None:
        return (f"cluster {cluster!r} already serves another backing directory "
                f"(id {in_etcd.backing_id}); this one has no marker")
    if in_etcd is not None and on_disk is not None and in_etcd.backing_id != on_disk.backing_id:
        return (f"cluster {cluster!r} serves backing directory {in_etcd.backing_id}, "
                f"this one is {on_disk.backing_id}")
    if in_etcd is None and on_disk is not None:
        return (f"the backing directory names cluster {cluster!r}, which etcd does not "
                f"know (a new or wiped etcd?): remove .fencefs/cluster.json to adopt it")
    return None


async def ensure_marker(client: EtcdClient, layout: Layout, read_disk: Callable[[], Marker |
                        None], write_disk: Callable[[Marker], None]) -> Marker:
    """Check the backing against etcd, claiming both for this cluster when new.

    Raises ``ValueError`` with a one-line reason when the mount must be
    refused; writes nothing in that case.
    """
    for _ in range(50):
        on_disk = read_disk()
        kv = await client.get(layout.marker())
        in_etcd = Marker.from_bytes(kv.value) if kv else None
        if on_disk is None and in_etcd is None:
            new = Marker(layout.cluster, uuid.uuid4().hex)
            res = await client.txn([absent(layout.marker())],
                                   [Put(layout.marker(), new.to_bytes())])
            if res.succeeded:
                write_disk(new)
                return new
            continue
        reason = judge_marker(layout.cluster, on_disk, in_etcd)
        if reason is None:
            assert on_disk is not None
            return on_disk
        if on_disk is None and in_etcd is not None:
            # another host may be between its etcd put and its disk write
            await trio.sleep(0.05)
            continue
        raise ValueError(reason)
    raise ValueError(judge_marker(layout.cluster, read_disk(),
                                  in_etcd) or "could not settle the backing marker")


# -- roll-forward --------------------------------------------------------------

class Roll(enum.Enum):
    NOTHING = "nothing"      # the installed content is the decided one
    INSTALL = "install"      # the decided draft is still in drafts/: rename it in
    MISSING = "missing"      # decided, not installed, and its draft is gone


def roll_forward_action(record: Record | None, installed: str, draft_exists: bool) -> Roll:
    """What a host that looks at a file must do so that readers see only
    decided versions: ``installed`` is the content id the backing file
    carries (its state attribute), ``draft_exists`` whether
    ``drafts/<record.content>`` is there. Idempotent: after the install the
    answer is NOTHING."""
    if record is None or not record.content or record.content == installed:
        return Roll.NOTHING
    return Roll.INSTALL if draft_exists else Roll.MISSING
