"""One journal per host, and their merge into one history (``fencefs log``).

Under ``--etcd`` every host appends to a journal of its own on the shared
backing, ``.fencefs/hosts/TAG/journal.jsonl`` (``TAG``: the host id made
safe as a file name, plus a hash of it), beside a ``host`` file naming the
host id. No two hosts append to one file, so the shared storage need not
make ``O_APPEND`` atomic across clients.

Every line that records a decision etcd made carries ``rev``: the etcd
revision of that decision (the commit's or reclaim's transaction: the
``mod_revision`` it wrote; a refusal: the revision the file's state was
read at). etcd revisions are one order across the cluster, so they order
the hosts' decisions exactly. ``merge`` sorts the lines that carry a
revision by it (at one revision the write, a commit or reclaim, before the
refusals read at it), and places each line without one (host-local
events: a foreign write, a killed writer, an abandoned draft) between the
neighbours it has in its own journal, by time among the other hosts'
lines there. ``fencefs log`` and ``scripts/check-trace`` use it.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import trio

from fencefs.core.errors import FenceError
from fencefs.etcd.coordination import Decision
from fencefs.etcd.keys import Record

HOSTS_DIR = "hosts"        # under .fencefs/
HOST_FILE = "host"         # in each host's directory: the host id
JOURNAL = "journal.jsonl"
WRITES = ("commit", "reclaim")  # the events whose revision is their own write

Event = dict[str, Any]


def host_tag(host: str) -> str:
    """A file name for ``host``: its safe characters, then a hash of the whole id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", host)[:48].lstrip(".") or "host"
    return f"{safe}-{hashlib.sha256(host.encode()).hexdigest()[:8]}"


def host_dir(meta: str, host: str) -> str:
    return os.path.join(meta, HOSTS_DIR, host_tag(host))


def prepare(meta: str, host: str) -> str:
    """This host's journal directory, made if missing (with the ``host``
    file naming it); the journal's path."""
    d = host_dir(meta, host)
    os.makedirs(d, mode=0o700, exist_ok=True)
    named = os.path.join(d, HOST_FILE)
    if not os.path.exists(named):
        tmp = named + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(host + "\n")
        os.rename(tmp, named)
    return os.path.join(d, JOURNAL)


def journal_path(meta: str, etcd: Any) -> str:
    """The journal this daemon appends to: ``.fencefs/journal.jsonl`` on one
    host, its own under ``.fencefs/hosts/`` with ``--etcd`` (``etcd``: the
    ``EtcdSettings``, or None)."""
    if etcd is None:
        return os.path.join(meta, "journal.jsonl")
    os.makedirs(meta, mode=0o700, exist_ok=True)
    return prepare(meta, etcd.host)


def journals(meta: str) -> list[tuple[str, str]]:
    """(host id, journal path) of every host that journaled here, by host id."""
    base = os.path.join(meta, HOSTS_DIR)
    try:
        names = sorted(os.listdir(base))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        path = os.path.join(base, name, JOURNAL)
        if not os.path.isfile(path):
            continue
        try:
            with open(os.path.join(base, name, HOST_FILE), encoding="utf-8") as f:
                host = f.read().strip() or name
        except OSError:
            host = name
        found.append((host, path))
    return sorted(found)


def _rev(event: Event) -> int | None:
    rev = event.get("rev")
    return rev if isinstance(rev, int) and not isinstance(rev, bool) and rev > 0 else None


def _ts(event: Event) -> float:
    ts = event.get("ts")
    return float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else 0.0


def merge(sources: list[tuple[str, list[Event]]]) -> list[tuple[str, int, Event]]:
    """One history of several hosts' journals: ``(host, index in its own
    journal, event)``, ordered as the module docstring says."""
    anchored: list[tuple[tuple[int, int, float, int, int], str, int, Event]] = []
    for k, (host, events) in enumerate(sources):
        for i, e in enumerate(events):
            rev = _rev(e)
            if rev is not None:
                kind = 0 if e.get("event") in WRITES else 1
                anchored.append(((rev, kind, _ts(e), k, i), host, i, e))
    anchored.sort(key=lambda a: a[0])
    where = {(a[0][3], a[0][4]): n for n, a in enumerate(anchored)}
    times = [_ts(a[3]) for a in anchored]
    placed: list[tuple[tuple[float, int, float, int, int], str, int, Event]] = [
        ((float(n), 1, 0.0, 0, 0), host, i, e) for n, (_, host, i, e) in enumerate(anchored)]
    for k, (host, events) in enumerate(sources):
        # neighbours in its own journal: the last anchored line before, the next after
        before = [-1] * len(events)
        after = [len(anchored)] * len(events)
        last = -1
        for i in range(len(events)):
            if (k, i) in where:
                last = where[(k, i)]
            before[i] = last
        nxt = len(anchored)
        for i in range(len(events) - 1, -1, -1):
            if (k, i) in where:
                nxt = where[(k, i)]
            after[i] = nxt
        for i, e in enumerate(events):
            if (k, i) in where:
                continue
            lo, hi = before[i] + 1, max(after[i], before[i] + 1)
            # the first anchored line in [lo, hi) later than this one goes after it
            pos = bisect.bisect_right(times, _ts(e), lo, hi) if lo < hi else lo
            placed.append(((pos - 0.5, 0, _ts(e), k, i), host, i, e))
    placed.sort(key=lambda p: p[0])
    return [(host, i, e) for _, host, i, e in placed]


def read_events(path: str) -> list[Event]:
    """The events of one journal (its rotated segments first), skipping torn lines."""
    from fencefs.store.journal import read_journal

    return [e for e in read_journal(path) if isinstance(e, dict) and "event" in e]


def merged(meta: str) -> list[Event]:
    """Every host's journal under ``meta``, merged; each event gets ``host``."""
    sources = [(host, read_events(path)) for host, path in journals(meta)]
    return [{**e, "host": host} for host, _, e in merge(sources)]


def dumps(event: Event) -> str:
    return json.dumps(event, separators=(",", ":"))


class Revisions:
    """Which etcd revision each journal line of this host records
    (``Journaling.revision_of`` is ``revision_of``): a commit's, from its
    install inside ``decided``; a reclaim's, stamped just before the engine
    journals it (``stamp_next``: no await in between); a refusal's, carried
    by the error (``refused_at``: the revision the file was read at; a
    refusal decided from this host's view: ``local_refusal``, the revision
    that view was last known to hold at, ``seen``)."""

    def __init__(self) -> None:
        # path -> (revision, version, epoch): this host's view of the file
        # was (version, epoch), as etcd had it at that revision
        self.seen: dict[str, tuple[int, int, int]] = {}
        self._stamp: tuple[str, int, object] | None = None

    def revision_of(self, event: str, path: str, refusal: FenceError | None) -> int | None:
        if refusal is not None:
            rev = getattr(refusal, "revision", None)
            return rev if isinstance(rev, int) and rev > 0 else None
        stamp = self._stamp
        if stamp is None or event not in WRITES:
            return None
        where, rev, task = stamp
        if task is None:        # inside a decided commit's install
            return rev if event == "commit" else None
        if where == path and task is trio.lowlevel.current_task():
            self._stamp = None
            return rev
        return None

    @contextlib.contextmanager
    def decided(self, path: str, revision: int, record: Record) -> Iterator[None]:
        """The install of a commit etcd decided at ``revision`` (``record``)."""
        self._stamp = (path, revision, None)
        try:
            yield
        finally:
            self._stamp = None
        self.seen[path] = (revision, record.version, record.epoch)

    def stamp_next(self, path: str, revision: int) -> None:
        """The next ``reclaim`` line of ``path`` by this task records ``revision``."""
        self._stamp = (path, revision, trio.lowlevel.current_task())

    @contextlib.contextmanager
    def local_refusal(self, path: str) -> Iterator[None]:
        try:
            yield
        except FenceError as e:
            seen = self.seen.get(path)
            if seen is not None and seen[1:] == (e.current_version, e.current_epoch):
                e.revision = seen[0]  # type: ignore[attr-defined]
            raise

    @staticmethod
    def refused_at(error: FenceError, decision: Decision) -> FenceError:
        error.revision = decision.view.read_revision  # type: ignore[attr-defined]
        return error
