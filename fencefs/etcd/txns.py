"""Multi-file commits across hosts: one etcd transaction decides them all.

A staging directory's commit (``engine/txns.py``) reaches
``EtcdCoordination.commit_many``, which hands it to ``HostTxns.commit_many``
here. The decision is ONE etcd transaction (spec: ``specs/MultiHostTxn.tla``,
action ``Decide``)::

    compare  per member that exists:
               /<c>/e/PATH value == the epoch it rests on   (absent: epoch 0)
               /<c>/f/PATH mod_revision == the revision of the version it rests on
             per member that creates its file:
               /<c>/f/PATH mod_revision == the revision read when it was synced
             /<c>/t/TXN absent                      (nobody gave it up: ``abort``)
    success  put /<c>/f/PATH {v+1, e, p, draft name (or "" for a delete), host,
                              identity, t: TXN}   for every member
             put /<c>/t/TXN the intent: every member's file, draft, version,
                                        epoch, delete
    failure  get every member's f/, e/, x/, xh/ -> the refusal names the
             members that moved (ESTALE if one was fenced, else EAGAIN)

Then, with no await, the deciding host installs every draft (``TxnStore.install``:
the journal's intent line, the renames, the deletes) and advances its view;
only afterwards does it delete ``t/TXN``. A host that dies between the
decision and the end of the renames leaves ``t/TXN``: any host rolls it
forward (``roll``): from ``EtcdCoordination.refresh`` when it opens a member
(the member's record names the transaction), from the upkeep's ``sweep`` of
``t/`` (an intent seen for longer than ``ROLL_GRACE``), and the deciding
host itself at its restart (``recover``). Rolling forward renames every
draft still in ``drafts/`` and removes the files of delete members whose
marker is still there; it is idempotent (a rename that finds no draft did
nothing), so the deciding host and a rolling host may race.

A lost reply is resolved by reading ``t/TXN`` back: our intent means it
committed; absent, we put ``{"aborted"}`` there (compare: absent), after
which the transaction, if still in flight, can never apply.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import trio

from fencefs.core import Coordinator, FileState
from fencefs.core.errors import Conflict, Fenced
from fencefs.core.transaction import (
    Member,
    Planned,
    Refusal,
    TxnRefused,
    check_members,
    commit_many,
    decide_many,
    plan,
)
from fencefs.engine.atomic import atomic
from fencefs.etcd import coordination as co
from fencefs.etcd.client import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdUnreachable,
    Get,
    Op,
    Put,
    absent,
    mod_is,
    value_is,
)
from fencefs.etcd.keys import Layout, Record
from fencefs.store.drafts import Drafts

log = logging.getLogger("fencefs.etcd")

ABORTED = b'{"aborted":true}'


@dataclass(frozen=True)
class Entry:
    """One member as the decision compares and puts it."""

    path: str
    exists: bool
    epoch: int       # compared (existing files only)
    revision: int    # the f/ key's mod_revision compared (-1: known to be past)
    record: Record


def intent_bytes(host: str, identity: str, members: Sequence[Member],
                 planned: Sequence[Planned]) -> bytes:
    return json.dumps({"h": host, "i": identity, "m": [
        {"file": m.path, "draft": m.content, "version": p.version, "epoch": p.epoch,
         "delete": m.delete} for m, p in zip(members, planned, strict=True)]},
        separators=(",", ":"), sort_keys=True).encode()


def parse_intent(raw: bytes) -> dict[str, Any] | None:
    """The intent, or None for an aborted transaction (or garbage)."""
    try:
        d = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(d, dict) or d.get("aborted") or not isinstance(d.get("m"), list):
        return None
    return d


def many_txn(layout: Layout, txn: str, entries: Sequence[Entry], intent: bytes, *,
             first_only: bool = False) -> tuple[list[Compare], list[Op], list[Op]]:
    """The decision's transaction. ``first_only`` exists for the mutation
    test only: it compares the first member and no other (the spec's
    ``MultiHostTxn_FirstCompareOnly``)."""
    compares: list[Compare] = [absent(layout.intent(txn))]
    success: list[Op] = []
    failure: list[Op] = []
    for n, e in enumerate(entries):
        if not first_only or n == 0:
            if e.exists:
                compares.append(co.epoch_compare(layout, e.path, e.epoch))
            compares.append(mod_is(layout.file(e.path), e.revision))
        success.append(Put(layout.file(e.path), e.record.to_bytes()))
        failure += co.read_ops(layout, e.path)
    success.append(Put(layout.intent(txn), intent))
    failure.append(Get(layout.intent(txn)))
    return compares, success, failure


def refusals_of(entries: Sequence[Entry], members: Sequence[Member],
                views: Sequence[co.View]) -> list[Refusal]:
    """Which members moved, judged from the failure branch's reads (epoch first)."""
    out = []
    for e, m, view in zip(entries, members, views, strict=True):
        kind: type[Conflict] | type[Fenced] | None = None
        if e.exists and view.epoch != e.epoch:
            kind = Fenced
        elif view.revision != e.revision:
            kind = Conflict
        if kind is not None:
            out.append(Refusal(m.path, kind, m.version, m.epoch, view.version, view.epoch))
    if not out:   # nothing moved that we compared: someone gave the transaction up
        out = [Refusal(m.path, Conflict, m.version, m.epoch, None, None) for m in members]
    return out


class Hosts(Protocol):
    """What ``HostTxns`` uses of ``EtcdCoordination`` (fencefs/etcd/engine.py)."""

    core: Coordinator
    layout: Layout
    host: str
    drafts: Drafts
    client: EtcdClient | None
    _rev: dict[str, tuple[int, int]]

    def _client(self, path: str) -> EtcdClient: ...
    async def refresh(self, path: str) -> co.View: ...
    async def _roll_forward(self, view: co.View) -> None: ...
    def _sync(self, path: str, view: co.View) -> None: ...
    def _learn_epoch(self, path: str, view: co.View) -> None: ...
    def _draft_there(self, name: str) -> bool: ...
    def _install(self, name: str, target: str) -> None: ...


class HostTxns:
    """Multi-file commits and their roll-forward for one ``EtcdCoordination``."""

    def __init__(self, coord: Hosts, grace: float) -> None:
        self.coord = coord
        self.layout = coord.layout
        self.grace = grace   # how long the deciding host gets to install its drafts
        # journal records of roll-forwards (set by the upkeep: Journaling.record)
        self.record: Callable[..., object] = lambda event, path, **f: None
        self.first_seen: dict[str, float] = {}   # t/ keys seen by sweep: first time
        self.first_only = os.environ.get("FENCEFS_TEST_TXN_FIRST_COMPARE_ONLY") == "1"

    # -- before the decision -------------------------------------------------------

    async def sync(self, paths: Sequence[str]) -> None:
        """Bring this host's view of every member up to etcd (one read
        transaction for all), rolling any of them forward first."""
        client = self.coord._client(paths[0] if paths else "")
        ops: list[Op] = []
        for path in paths:
            ops += co.read_ops(self.layout, path)
        try:
            res = await client.txn([], ops)
            for n, path in enumerate(paths):
                view = co.view_from(path, co.slice_of(res.results, n), res.revision)
                file = self.coord.core.get(path)
                if view.record is None and file is not None and (file.version or file.epoch):
                    await self.coord.refresh(path)   # seeds the record, as for one file
                    continue
                await self.coord._roll_forward(view)
                self.coord._sync(path, view)
        except EtcdError as e:
            raise co.Unreachable(paths[0] if paths else "?") from e

    # -- the decision ---------------------------------------------------------------------

    def _floor(self, m: Member, file: FileState | None) -> Member:
        """A member that creates its file continues the path's numbering as
        etcd knows it (another host may have deleted it at a later version
        than this host's tombstone): versions never go down."""
        known = self.coord._rev.get(m.path)
        if file is None and known is not None and known[0] > m.version:
            return replace(m, version=known[0])
        return m

    def _entries(self, files: Mapping[str, FileState | None], members: Sequence[Member],
                 planned: Sequence[Planned], identity: str, txn: str) -> list[Entry]:
        out = []
        for m, p in zip(members, planned, strict=True):
            file = files.get(m.path)
            known = self.coord._rev.get(m.path)
            if file is not None:
                revision = known[1] if known is not None and known[0] == m.version else -1
            else:
                revision = known[1] if known is not None else -1
            policy = file.policy if file is not None else None
            record = Record(p.version, p.epoch, policy, "" if m.delete else m.content,
                            self.coord.host, identity, txn)
            out.append(Entry(m.path, file is not None, m.epoch, revision, record))
        return out

    async def commit_many(self, files: Mapping[str, FileState | None],
                          members: Sequence[Member], identity: str,
                          install_all: Callable[[list[Planned]], None],
                          txn: str) -> list[Planned]:
        check_members(members)
        if not txn:
            raise OSError(errno.EINVAL, "a transaction across hosts needs its id")
        refusals = decide_many(files, members)   # this host's view is fresh (sync)
        if refusals:
            raise TxnRefused(refusals)
        members = [self._floor(m, files.get(m.path)) for m in members]
        planned = plan(files, members)
        entries = self._entries(files, members, planned, identity, txn)
        intent = intent_bytes(self.coord.host, identity, members, planned)
        client = self.coord._client(members[0].path)
        key = self.layout.intent(txn)
        try:
            res = await client.txn(*many_txn(self.layout, txn, entries, intent,
                                             first_only=self.first_only))
            committed, revision = res.succeeded, res.revision
            if not committed:
                views = [co.view_from(e.path, co.slice_of(res.results, n), res.revision)
                         for n, e in enumerate(entries)]
                for view in views:
                    self.coord._learn_epoch(view.path, view)
                raise TxnRefused(refusals_of(entries, members, views))
        except EtcdUnreachable as e:
            if not e.ambiguous:
                raise co.Unreachable(members[0].path) from e
            revision = await self._resolve(client, key, intent, members[0].path)
        except EtcdError as e:
            raise co.Unreachable(members[0].path) from e
        pending: list[OSError] = []

        def install(plan_: list[Planned]) -> None:
            try:
                install_all(plan_)
            except OSError as err:   # decided: the intent stays, roll-forward finishes it
                log.error("transaction %s decided, its install failed (%s): left to the "
                          "roll-forward", txn, err)
                pending.append(err)

        with atomic():
            for m in members:
                file = files.get(m.path)
                if file is not None:
                    file.version, file.epoch = m.version, m.epoch
            done = commit_many(files, members, identity, install, self.coord.core.adopt,
                               self.coord.core.removed)
            for p in done:
                self.coord._rev[p.path] = (p.version, revision)
        if not pending:
            try:
                await client.txn([value_is(key, intent)], [Delete(key)])
            except EtcdError as e:
                log.warning("could not clear the intent of transaction %s: %s", txn, e)
        return done

    async def _resolve(self, client: EtcdClient, key: bytes, intent: bytes,
                       path: str) -> int:
        """The reply was lost: did the transaction apply? Its revision if it
        did; ``Unreachable`` (and it never will apply) if not."""
        try:
            kv = await client.get(key)
            if kv is None:
                res = await client.txn([absent(key)], [Put(key, ABORTED)], [Get(key)])
                if res.succeeded:
                    raise co.Unreachable(path)
                kv = res.results[0][0] if res.results and res.results[0] else None
        except EtcdError as e:
            raise co.Unreachable(path) from e
        if kv is not None and kv.value == intent:
            return kv.mod_revision
        raise co.Unreachable(path)

    # -- roll-forward -----------------------------------------------------------------------

    def pending_member(self, rec: Record | None, path: str) -> bool:
        """Does ``rec`` (a file's record) belong to a transaction that may
        not be installed yet? (A draft it names is still in drafts/, or it
        deletes a file that is still there.)"""
        if rec is None or not rec.txn:
            return False
        if rec.content:
            return self.coord._draft_there(rec.content)
        return self.coord.drafts.backing.exists(path)

    async def roll(self, txn: str, *, wait: bool = True) -> bool:
        """Finish ``txn`` if it is decided and not installed: after waiting up
        to ``ROLL_GRACE`` for its deciding host, rename what is left."""
        client = self.coord._client("")
        key = self.layout.intent(txn)
        kv = await client.get(key)
        intent = parse_intent(kv.value) if kv is not None else None
        if kv is None or intent is None:
            return False
        deadline = trio.current_time() + (self.grace if wait else 0)
        while self._left(intent) and trio.current_time() < deadline:
            await trio.sleep(0.005)
            if await client.get(key) is None:
                return False   # the deciding host finished it
        finished = self.install_intent(intent)
        self.record("txn-recovered", str(intent["m"][0]["file"]), txn=txn, rolled="forward",
                    files=[str(m["file"]) for m in intent["m"]], finished=finished,
                    identity=intent.get("i"), decided_by=intent.get("h"),
                    by=self.coord.host)
        if finished:
            log.warning("rolled transaction %s forward (decided by %s): %s", txn,
                        intent.get("h"), ", ".join(finished))
        await client.txn([value_is(key, kv.value)], [Delete(key)])
        return True

    def _left(self, intent: dict[str, Any]) -> bool:
        return any(self.coord._draft_there(str(m.get("draft", ""))) for m in intent["m"])

    def install_intent(self, intent: dict[str, Any]) -> list[str]:
        """Rename every draft of the intent still in drafts/, remove the files
        of delete members whose marker is still there: the files finished."""
        backing = self.coord.drafts.backing
        finished = []
        for m in intent["m"]:
            target, draft = str(m["file"]), str(m.get("draft", ""))
            if not self.coord._draft_there(draft):
                continue
            try:
                if m.get("delete"):
                    # claim the marker first (one rename: only one host does the delete)
                    claimed = draft + ".deleting"
                    os.rename(draft, claimed, src_dir_fd=self.coord.drafts.dir_fd,
                              dst_dir_fd=self.coord.drafts.dir_fd)
                    backing.remove(target)
                    os.unlink(claimed, dir_fd=self.coord.drafts.dir_fd)
                else:
                    parent = os.path.dirname(target)
                    if parent:
                        backing.makedirs(parent)
                    self.coord._install(draft, target)
                finished.append(target)
            except FileNotFoundError:
                continue   # another host got there first
        for d in sorted({os.path.dirname(str(m["file"])) for m in intent["m"]}):
            try:
                backing.sync_dir(d)
            except OSError:
                pass
        return finished

    async def sweep(self, now: float) -> int:
        """The upkeep's look at ``t/``: roll forward intents seen for longer
        than the grace (``ROLL_GRACE``: their deciding host died or froze after the
        decision)."""
        if self.coord.client is None:
            return 0
        try:
            kvs, _ = await self.coord.client.range(self.layout.intents(), prefix=True)
        except EtcdError:
            return 0
        here = {self.layout.path_of(kv.key, b"t"): kv for kv in kvs}
        for txn in list(self.first_seen):
            if txn not in here:
                del self.first_seen[txn]
        rolled = 0
        for txn, kv in here.items():
            if parse_intent(kv.value) is None:
                continue   # an aborted transaction's tombstone
            first = self.first_seen.setdefault(txn, now)
            if now - first >= self.grace:
                try:
                    rolled += await self.roll(txn, wait=False)
                except (EtcdError, OSError) as e:
                    log.warning("could not roll transaction %s forward: %s", txn, e)
        return rolled

    # -- at restart ------------------------------------------------------------------------

    async def recover(self, orphans: list[tuple[str, dict[str, object]]],
                      put_away: Callable[[str, str], None]) -> int:
        """This host's transaction drafts left by its previous life: a
        decided transaction (its intent in etcd) is rolled forward; any
        other is first given up in etcd (``aborted``: it can never apply
        late), then its drafts are put away."""
        client = self.coord._client("")
        groups: dict[str, list[tuple[str, dict[str, object]]]] = {}
        for path, meta in orphans:
            groups.setdefault(str(meta["txn"]), []).append((path, meta))
        count = 0
        for txn, found in sorted(groups.items()):
            key = self.layout.intent(txn)
            res = await client.txn([absent(key)], [Put(key, ABORTED)], [Get(key)])
            kv = None if res.succeeded else (res.results[0][0] if res.results[0] else None)
            intent = parse_intent(kv.value) if kv is not None else None
            if intent is not None:
                assert kv is not None
                finished = self.install_intent(intent)
                self.record("txn-recovered", str(intent["m"][0]["file"]), txn=txn,
                            rolled="forward", files=[str(m["file"]) for m in intent["m"]],
                            finished=finished, identity=intent.get("i"), by=self.coord.host)
                await client.txn([value_is(key, kv.value)], [Delete(key)])
                continue
            for path, meta in found:
                if meta.get("delete"):
                    os.unlink(path)
                else:
                    put_away(path, str(meta.get("path", "?")))
                    count += 1
            self.record("txn-recovered", str(found[0][1].get("path", "?")), txn=txn,
                        rolled="back", files=sorted(str(m.get("path")) for _, m in found),
                        by=self.coord.host)
        return count


def is_txn_draft(meta: Mapping[str, object]) -> bool:
    return isinstance(meta.get("txn"), str)

