"""Multi-file commits in the backing directory: the intent record, the
installs, and the roll-forward or roll-back at the next mount (G9).

A transaction's drafts are ordinary drafts (``drafts.py``) whose draft
attribute also names the transaction (``txn``); a member that deletes its
file gets an empty *delete marker* draft (``delete: true``). Every draft is
prepared (state attribute with its new version, fsynced) before the decision.

``install`` runs inside the commit's one step, after every guard passed:

1. the **intent record**: one journal line (``txn-intent``) listing every
   member (file, draft name, the version and epoch it installs, and for a
   delete the version it removes), fsynced before anything is renamed
   (under ``--durability full``);
2. the renames of the drafts over their files, then the deletes (each
   followed by the removal of its marker);
3. a ``txn-commit`` line (made durable with the commit's journal fsync).

A daemon killed at any point leaves either no intent record (then no file
was touched: the drafts are put away as ``abandoned`` at the next mount:
**roll back**) or a durable intent record and some drafts or markers still in
``drafts/`` (then ``recover`` finishes the renames and deletes the intent
names: **roll forward**). Either way the journal gets a ``txn-recovered``
line saying which. Nothing else can commit in between: the crash ended the
step, and the next daemon recovers before it serves.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fencefs.store.backing import META_DIR, Backing
from fencefs.store.drafts import DRAFT_XATTR, Draft, Drafts
from fencefs.store.journal import Journal

log = logging.getLogger("fencefs.store")

# Test hook: the daemon kills itself with SIGKILL at this step of install
# (tests/test_txn_mount.py): before-intent, after-intent, after-rename-1,
# after-renames, after-deletes.
CRASH_ENV = "FENCEFS_TEST_TXN_CRASH"
# Staging directories: MOUNT/.fencefs/txn/NAME/PATH is a draft for PATH.
STAGING = f"{META_DIR}/txn"


def is_staged(rel: str) -> bool:
    """``rel`` is a staging directory or lies in one (not .fencefs/txn itself)."""
    return rel.startswith(STAGING + "/") and len(rel) > len(STAGING) + 1


STEPS = ("before-intent", "after-intent", "after-rename-1", "after-renames", "after-deletes")


@dataclass(slots=True)
class Item:
    """One member as the store installs it."""

    target: str
    draft: Draft  # the new content, or a delete marker
    version: int  # the version the draft carries; for a delete, the one removed
    epoch: int
    delete: bool = False


def new_id() -> str:
    return secrets.token_hex(6)


def mark(draft: Draft, txn: str, *, delete: bool = False) -> None:
    """Name the transaction in the draft's attribute (before it is prepared)."""
    meta = json.loads(os.getxattr(draft.fd, DRAFT_XATTR))
    meta["txn"] = txn
    if delete:
        meta["delete"] = True
    os.setxattr(draft.fd, DRAFT_XATTR, json.dumps(meta).encode())


def delete_marker(drafts: Drafts, target: str, identity: str, pid: int, txn: str) -> Draft:
    """An empty draft standing for a member that deletes ``target``."""
    draft = drafts.create(target, identity, pid, None)
    mark(draft, txn, delete=True)
    return draft


class TxnStore:
    def __init__(self, backing: Backing, drafts: Drafts, journal: Journal, *,
                 durable: bool = True) -> None:
        self.backing = backing
        self.drafts = drafts
        self.journal = journal
        self.durable = durable
        step = os.environ.get(CRASH_ENV, "")
        self._crash_at = step if step in STEPS else None

    def _step(self, name: str) -> None:
        if self._crash_at == name:
            os.kill(os.getpid(), signal.SIGKILL)

    def install(self, txn: str, identity: str, pid: int, items: Sequence[Item]) -> None:
        """Intent, renames, deletes: called inside the commit's one step.

        Raises only before the intent record is written (then nothing
        changed); after it, an I/O error is logged and left for ``recover``
        to roll forward at the next mount (the intent is durable).
        """
        for item in items:
            if not item.delete:
                parent = os.path.dirname(item.target)
                if parent:
                    os.makedirs(self.backing.abs(parent), exist_ok=True)
        self._step("before-intent")
        self.journal.record(
            "txn-intent", items[0].target, txn=txn, identity=identity, pid=pid,
            members=[{"file": i.target, "draft": i.draft.name, "version": i.version,
                      "epoch": i.epoch, "delete": i.delete} for i in items])
        if self.durable:
            self.journal.sync()
        self._step("after-intent")
        writes = [i for i in items if not i.delete]
        for n, item in enumerate(writes, 1):
            self.drafts.install(item.draft)
            if n == 1:
                self._step("after-rename-1")
        self._step("after-renames")
        for item in items:
            if item.delete:
                _remove(self.backing.abs(item.target))
                self.drafts.discard(item.draft)
        self._step("after-deletes")
        self.journal.record("txn-commit", items[0].target, txn=txn, identity=identity,
                            pid=pid, files=[i.target for i in items])

    def dirs_touched(self, items: Sequence[Item]) -> set[str]:
        """Directories whose entries changed: fsync them before acknowledging."""
        return {os.path.dirname(i.target) for i in items}

    # -- at mount ----------------------------------------------------------

    def recover(self) -> list[dict[str, Any]]:
        """Roll every interrupted transaction forward or back; returns the
        ``txn-recovered`` records. Run before the generic orphan recovery."""
        groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for path, meta in self.drafts.orphans():
            txn = meta.get("txn")
            if isinstance(txn, str):
                groups.setdefault(txn, []).append((path, meta))
        outcomes = []
        for txn, found in sorted(groups.items()):
            intent = find_intent(self.journal.path, txn)
            if intent is not None:
                outcomes.append(self._forward(txn, intent, found))
            else:
                outcomes.append(self._back(txn, found))
        if outcomes:
            self.journal.sync()
        return outcomes

    def _forward(self, txn: str, intent: dict[str, Any],
                 found: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        by_name = {os.path.basename(p): p for p, _ in found}
        finished = []
        for m in intent.get("members", []):
            target = str(m["file"])
            path = by_name.pop(str(m.get("draft")), None)
            if m.get("delete"):
                if path is not None:  # the marker is removed after its delete
                    _remove(self.backing.abs(target))
                    os.unlink(path)
                    finished.append(target)
            elif path is not None:  # still in drafts/: not renamed yet
                parent = os.path.dirname(target)
                if parent:
                    os.makedirs(self.backing.abs(parent), exist_ok=True)
                os.rename(path, self.backing.abs(target))
                finished.append(target)
        for path in by_name.values():  # a draft the intent does not name
            self.drafts.put_away(path, "?", "?", "abandoned")
        for d in {os.path.dirname(str(m["file"])) for m in intent.get("members", [])}:
            try:
                self.backing.sync_dir(d)
            except OSError:
                pass
        files = [str(m["file"]) for m in intent.get("members", [])]
        return self.journal.record("txn-recovered", files[0] if files else "?", txn=txn,
                                   rolled="forward", files=files, finished=finished,
                                   identity=intent.get("identity"))

    def _back(self, txn: str, found: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        files = []
        rejected = []
        for path, meta in found:
            target = str(meta.get("path", "?"))
            files.append(target)
            if meta.get("delete"):
                os.unlink(path)
            else:
                rejected.append(self.drafts.put_away(
                    path, target, str(meta.get("identity", "?")), "abandoned"))
        return self.journal.record("txn-recovered", files[0] if files else "?", txn=txn,
                                   rolled="back", files=sorted(files), rejected=rejected,
                                   identity=found[0][1].get("identity") if found else None)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def find_intent(journal_path: str, txn: str, *,
                chunk: int = 1 << 20) -> dict[str, Any] | None:
    """The ``txn-intent`` record of ``txn``, read backwards from the journal's
    end (an interrupted transaction is among the last lines written)."""
    needle = f'"txn":"{txn}"'.encode()
    try:
        fd = os.open(journal_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        end = os.fstat(fd).st_size
        tail = b""
        while end > 0:
            start = max(0, end - chunk)
            block = os.pread(fd, end - start, start) + tail
            lines = block.split(b"\n")
            tail = lines.pop(0) if start > 0 else b""
            for line in reversed(lines):
                found = _intent_in(line, needle)
                if found is not None:
                    return found
            end = start
        return _intent_in(tail, needle) if tail else None
    finally:
        os.close(fd)


def _intent_in(line: bytes, needle: bytes) -> dict[str, Any] | None:
    if needle not in line or b'"txn-intent"' not in line:
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None  # a torn last line: the intent never became durable
    return entry if isinstance(entry, dict) and entry.get("event") == "txn-intent" else None

