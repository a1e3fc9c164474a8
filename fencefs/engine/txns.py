"""Multi-file commits through a staging directory (G9).

``mkdir MOUNT/.fencefs/txn/NAME`` starts a transaction owned by the caller's
identity. Files written under it are ordinary (fenced, but not fsynced)
files of the staging area: each ``.fencefs/txn/NAME/PATH`` is the draft for
``PATH``. A top-level ``.fencefs-delete`` file in the staging directory lists
paths to delete, one per line. ``setfattr -n user.fencefs.commit -v 1
MOUNT/.fencefs/txn/NAME`` (by the owner) commits them all or none:

1. collect and check the members (bad input: ``EINVAL``, nothing changed);
2. move every staged file into ``.fencefs/drafts/`` (one rename each, same
   filesystem) marked with the transaction's id, and prepare it (metadata,
   predicted state, fsync) on a worker thread;
3. one step, no checkpoint: load every member's state, build each member's
   base (the owner's observation of ``PATH``; a path it never read is written
   blind, resting on the current version), and ``Coordination.commit_many``:
   every guard decided, then ``TxnStore.install`` (intent record fsynced,
   renames, deletes) and every file advanced;
4. the directories and the journal reach the disk, then setxattr returns.

Refused (``EAGAIN``/``ESTALE``): every draft goes to ``rejected/`` and the
journal names the files that moved (``txn-refused``). A staging directory
one of whose writers was killed by a signal (G7) never commits: its commit
answers ``ECANCELED`` and its drafts go to ``rejected/`` as ``killed``.
Either way the staging directory is left empty.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections.abc import Callable

import trio

from fencefs.core import Caller, FileState, Persisted
from fencefs.core.errors import BadValue, FenceError
from fencefs.core.model import SHARED
from fencefs.core.transaction import Member, Planned, TxnRefused, check_members
from fencefs.engine.coordination import Coordination
from fencefs.engine.files import FileTable
from fencefs.engine.handles import HandleTable
from fencefs.engine.journaling import Journaling
from fencefs.store.backing import META_DIR, Fingerprint
from fencefs.store.drafts import DRAFT_XATTR, Draft, Drafts, close_quietly
from fencefs.store.txn import STAGING, Item, TxnStore, delete_marker, new_id
from fencefs.wire import DELETE_LIST, RESTS_LIST, parse_rests

log = logging.getLogger("fencefs.engine")

Rests = dict[str, tuple[int, int] | None]

OWNER_XATTR = "user.fencefs.txn-owner"
# The owner's processes at mkdir, [[pid, start time], ...] (fuse/identity.py
# anchors_of): once none of them lives, the upkeep puts the staged files away.
ANCHORS_XATTR = "user.fencefs.txn-anchors"


def staging_name(rel: str) -> str | None:
    """NAME when ``rel`` is ``.fencefs/txn/NAME`` or below it."""
    if not rel.startswith(STAGING + "/"):
        return None
    return rel[len(STAGING) + 1:].split("/", 1)[0] or None


def check_target(path: str) -> str:
    """A member's path: relative, inside the mount, not in .fencefs/."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise BadValue(f"bad transaction path {path!r}: must be relative, inside the mount")
    if parts[0] == META_DIR:
        raise BadValue(f"bad transaction path {path!r}: {META_DIR}/ cannot be written")
    return path


class Transactions:
    def __init__(self, coord: Coordination, files: FileTable, handles: HandleTable,
                 drafts: Drafts, journaling: Journaling, store: TxnStore, *,
                 durable: bool) -> None:
        self.coord = coord
        self.files = files
        self.handles = handles
        self.drafts = drafts
        self.journaling = journaling
        self.store = store
        self.backing = files.backing
        self.durable = durable
        self.poisoned: set[str] = set()
        # The answer of each staging directory's last commit, readable as
        # user.fencefs.result: the kernel may report a setxattr's EAGAIN as
        # EOPNOTSUPP, and retries it once after ESTALE (see docs/guide.md).
        self.results: dict[str, tuple[int, str]] = {}
        # staging directories whose owner was found gone: since when (monotonic)
        self.gone_since: dict[str, float] = {}
        self.backing.makedirs(STAGING)
        self.backing.tree.chmod(STAGING, 0o1777)  # like /tmp: anyone may start one

    # -- staging ---------------------------------------------------------------

    def begin(self, rel: str, caller: Caller,
              anchors: list[tuple[int, int]] | None = None) -> None:
        """``mkdir .fencefs/txn/NAME``: the caller's identity owns it; its
        process and that one's parent (``anchors``) are what keeps it alive."""
        if "/" in rel[len(STAGING) + 1:]:
            return  # a subdirectory of a staging directory
        self.backing.tree.setxattr(rel, OWNER_XATTR, caller.identity.encode())
        if anchors:   # with the host (--etcd: the backing is shared; pids are not)
            self.backing.tree.setxattr(rel, ANCHORS_XATTR, json.dumps(
                {"host": self.drafts.prefix, "anchors": anchors}).encode())
        self.poisoned.discard(rel)

    def killed(self, rel: str) -> None:
        """A staged file's writer died by a signal: the transaction never commits."""
        name = staging_name(rel)
        if name is not None:
            self.poisoned.add(f"{STAGING}/{name}")

    def _owner(self, root: str) -> str:
        try:
            return self.backing.tree.getxattr(root, OWNER_XATTR).decode()
        except OSError:
            return ""

    def _collect(self, root: str) -> tuple[list[tuple[str, str]], list[str], Rests]:
        """(target, staged path) of every staged file, the deletes, and what
        members rest on if the stager said so (RESTS_LIST; else the owner's
        observations)."""
        writes: list[tuple[str, str]] = []
        deletes: list[str] = []
        rests: Rests = {}
        stack = [""]
        tree = self.backing.tree
        while stack:
            sub = stack.pop()
            here = f"{root}/{sub}" if sub else root
            for name, st in sorted(tree.listdir(here), key=lambda e: e[0]):
                target = f"{sub}/{name}" if sub else name
                mode = st.st_mode if st is not None else 0
                if stat.S_ISDIR(mode):
                    stack.append(target)
                elif not sub and name in (DELETE_LIST, RESTS_LIST) and stat.S_ISREG(mode):
                    text = self._read_text(f"{here}/{name}")
                    if name == DELETE_LIST:
                        deletes += [line.strip() for line in text.splitlines() if line.strip()]
                    else:
                        try:
                            rests = parse_rests(text)
                        except ValueError as err:
                            raise BadValue(str(err)) from None
                elif stat.S_ISREG(mode):
                    writes.append((check_target(target), f"{root}/{target}"))
                else:
                    raise BadValue(f"{target!r} in a staging directory is not a regular "
                                   f"file (symlinks and devices cannot be members)")
        for path in deletes:
            check_target(path)
        return writes, deletes, rests

    def _read_text(self, rel: str) -> str:
        fd = self.backing.open(rel, os.O_RDONLY)
        with os.fdopen(fd, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()

    def _check(self, writes: list[tuple[str, str]], deletes: list[str],
               may_write: Callable[[str], bool]) -> None:
        members = [Member(t, 0, 0) for t, _ in writes] + [Member(d, 0, 0) for d in deletes]
        check_members(members)  # at least one, each path once
        for target, staged in writes:
            self._check_member(target, must_exist=False, may_write=may_write)
            if any(h.writable for h in self.handles.of_path(staged)):
                raise OSError(errno.EBUSY, f"{staged!r} is still open for writing")
        for target in deletes:
            self._check_member(target, must_exist=True, may_write=may_write)

    def _check_member(self, target: str, *, must_exist: bool,
                      may_write: Callable[[str], bool]) -> None:
        try:
            st = self.backing.lstat(target)
        except FileNotFoundError:
            if must_exist:
                raise BadValue(f"cannot delete {target!r}: no such file") from None
            self._check_parents(target)
            if not may_write(os.path.dirname(target)):
                raise OSError(errno.EACCES, f"cannot create {target!r}") from None
            return
        if not stat.S_ISREG(st.st_mode):
            raise BadValue(f"{target!r} is not a regular file (directories and symlinks "
                           f"cannot be members)")
        file = self.files.file(target, st)
        if self.coord.policy_of(file) == SHARED:
            raise BadValue(f"{target!r} has the shared policy: not fenced, not a member")
        parent = os.path.dirname(target)
        if not may_write(target) or (must_exist and not may_write(parent)):
            raise OSError(errno.EACCES, f"cannot write {target!r}")

    def _check_parents(self, target: str) -> None:
        parts = target.split("/")[:-1]
        for n in range(1, len(parts) + 1):
            try:
                st = self.backing.lstat("/".join(parts[:n]))
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(st.st_mode):
                raise BadValue(f"cannot create {target!r}: {'/'.join(parts[:n])!r} "
                               f"is not a directory")

    # -- abandoned staging directories --------------------------------------------

    def sweep_abandoned(self, owner_alive: Callable[[str, list[tuple[int, int]]], bool],
                        now: float, grace: float) -> list[str]:
        """The upkeep's look at ``.fencefs/txn/``: a staging directory whose
        owner is gone (``owner_alive(identity, anchors)`` says no: none of the
        processes recorded at its mkdir lives, nor any process that read as
        its identity) for ``grace`` seconds (``--keep-staging-for``; ``now``
        is monotonic) and that no handle has open is put away: its staged
        files go to ``rejected/`` (reason ``abandoned``), one ``txn-abandoned``
        journal line names them, and the directory is removed. It never
        committed and now never will (G7). Directories made without
        anchors (by an older daemon) or through another host's mount are
        left alone. Returns the roots."""
        swept = []
        seen = set()
        for name, st in self.backing.tree.listdir(STAGING):
            root = f"{STAGING}/{name}"
            seen.add(root)
            if st is None or not stat.S_ISDIR(st.st_mode):
                continue
            try:
                made = json.loads(self.backing.tree.getxattr(root, ANCHORS_XATTR))
                anchors = [(int(p), int(t)) for p, t in made["anchors"]]
            except (OSError, ValueError, TypeError, KeyError):
                continue
            if made.get("host") != self.drafts.prefix:
                continue   # made through another host's mount: its processes are there
            owner = self._owner(root)
            if owner_alive(owner, anchors) or self._open_under(root):
                self.gone_since.pop(root, None)
                continue
            if now - self.gone_since.setdefault(root, now) < grace:
                continue
            del self.gone_since[root]
            self._put_away(root, owner)
            swept.append(root)
        for root in [r for r in self.gone_since if r not in seen]:
            del self.gone_since[root]   # committed, or removed by its owner
        return swept

    def _open_under(self, root: str) -> bool:
        return any(h.path.startswith(root + "/") for h in self.handles.handles.values())

    def _put_away(self, root: str, owner: str) -> None:
        tree = self.backing.tree
        files: list[str] = []
        rejected: list[str] = []

        def walk(rel: str, sub: str) -> None:
            for name, st in tree.listdir(rel):
                path, target = f"{rel}/{name}", f"{sub}/{name}" if sub else name
                mode = st.st_mode if st is not None else 0
                if stat.S_ISDIR(mode):
                    walk(path, target)
                    tree.rmdir(path)
                    continue
                if stat.S_ISREG(mode) and name not in (DELETE_LIST, RESTS_LIST):
                    # by descriptor into drafts/ (no symlink followed), then away
                    moved = os.path.join(self.drafts.dir,
                                         f"{self.drafts.prefix}{os.getpid()}-gone-{new_id()}")
                    with tree.parent(path) as (dir_fd, leaf):
                        os.rename(leaf, moved, src_dir_fd=dir_fd)
                    files.append(target)
                    rejected.append(self.drafts.put_away(moved, target, owner or "?",
                                                         "abandoned"))
                else:
                    tree.unlink(path)
                self.coord.removed(path)
                self.files.fingerprints.pop(path, None)

        try:
            walk(root, "")
            tree.rmdir(root)
        except OSError as e:   # something new appeared meanwhile: the next sweep
            log.warning("could not put away the staging directory %s: %s", root, e)
        self.poisoned.discard(root)
        self.results.pop(root, None)
        self.journaling.record("txn-abandoned", root, identity=owner, files=sorted(files),
                               rejected=rejected, reason="owner-gone")

    # -- the commit --------------------------------------------------------------

    def result(self, root: str) -> bytes:
        """``user.fencefs.result``: the last commit's answer, one line."""
        code, text = self.results.get(root, (0, "none"))
        return f"{errno.errorcode.get(code, 'ok') if code else 'ok'} {text}".encode()

    async def commit(self, root: str, caller: Caller,
                     may_write: Callable[[str], bool]) -> list[str]:
        """Commit the staging directory ``root``; returns the files it
        committed. Every answer is also kept for ``result``."""
        last = self.results.get(root)
        if (last is not None and last[0] in (errno.EAGAIN, errno.ESTALE, errno.ECANCELED)
                and self._nothing_staged(root)):
            # The same request again (the kernel retries a setxattr that got
            # ESTALE), or a caller asking twice: the same answer.
            raise OSError(last[0], last[1])
        try:
            files = await self._commit(root, caller, may_write)
        except TxnRefused as e:
            moved = ",".join(e.paths)
            self.results[root] = (e.errno, f"{e.reason} moved={moved}")
            raise
        except (OSError, BadValue, FenceError) as e:
            code = e.errno if isinstance(e, (OSError, FenceError)) and e.errno else errno.EINVAL
            self.results[root] = (code, str(e).replace("\n", " "))
            raise
        self.results[root] = (0, "committed files=" + ",".join(files))
        return files

    def _nothing_staged(self, root: str) -> bool:
        try:
            return not self.backing.tree.listdir(root, stats=False)
        except OSError:
            return True

    async def _commit(self, root: str, caller: Caller,
                      may_write: Callable[[str], bool]) -> list[str]:
        owner = self._owner(root)
        if owner != caller.identity:
            raise OSError(errno.EPERM, f"{root!r} belongs to {owner or 'nobody'}")
        try:
            writes, deletes, rests = self._collect(root)
            self._check(writes, deletes, may_write)
        except (BadValue, OSError) as e:
            self.journaling.record("txn-invalid", root, identity=caller.identity,
                                   pid=caller.pid, reason=str(e))
            raise
        txn = new_id()
        items = [self._adopt(staged, target, caller, txn) for target, staged in writes]
        items += [Item(d, delete_marker(self.drafts, d, caller.identity, caller.pid, txn),
                       0, 0, delete=True) for d in deletes]
        for _, staged in writes:
            self.coord.removed(staged)
            self.files.fingerprints.pop(staged, None)
        if root in self.poisoned:
            self.poisoned.discard(root)
            self._reject(items, caller, "killed", txn)
            self._empty(root)
            raise OSError(errno.ECANCELED, "a writer of this transaction was killed")
        try:
            await self.coord.sync_many([i.target for i in items])  # across hosts: etcd's view
            await self._prepare(items)
            self.journaling.room()
        except FenceError as e:   # etcd unreachable
            self._reject(items, caller, e.reason, txn)
            self._empty(root)
            raise
        except OSError:
            self._reject(items, caller, "failed", txn)
            self._empty(root)
            raise
        # ---- no checkpoint from here to the end of the decision ----
        states: dict[str, FileState | None] = {}
        members = []
        for item in items:
            try:
                st = self.backing.lstat(item.target)
                file = self.files.file(item.target, st) if stat.S_ISREG(st.st_mode) else None
            except FileNotFoundError:
                file = None
            states[item.target] = file
            members.append(self._member(item, file, caller.identity, rests))
        try:
            planned = await self.coord.commit_many(
                states, members, caller.identity,
                lambda plan: self._install(txn, caller, items, states, plan), txn=txn)
        except TxnRefused as e:
            self._reject(items, caller, e.reason, txn, refused=e.paths)
            self._empty(root)
            raise
        except FenceError as e:   # across hosts: etcd could not decide (EHOSTUNREACH)
            self._reject(items, caller, e.reason, txn)
            self._empty(root)
            raise
        except OSError:
            self._reject(items, caller, "failed", txn)
            self._empty(root)
            raise
        for p in planned:
            if p.delete:
                self.files.tombstones[p.path] = (p.version, p.epoch, [])
                self.files.fingerprints.pop(p.path, None)
        for item in items:
            close_quietly(item.draft.fd)
        self._empty(root)
        await self._durable({os.path.dirname(i.target) for i in items})
        return [i.target for i in items]

    def _adopt(self, staged: str, target: str, caller: Caller, txn: str) -> Item:
        """Move a staged file into drafts/ (one rename): it becomes the draft."""
        name = f"{self.drafts.prefix}{os.getpid()}-txn-{txn}-{new_id()}.draft"
        path = os.path.join(self.drafts.dir, name)
        with self.backing.tree.parent(staged) as (dir_fd, name):
            os.rename(name, path, src_dir_fd=dir_fd)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        os.setxattr(fd, DRAFT_XATTR, json.dumps(
            {"path": target, "identity": caller.identity, "pid": caller.pid,
             "txn": txn}).encode())
        return Item(target, Draft(path, fd, target), 0, 0)

    async def _prepare(self, items: list[Item]) -> None:
        """Metadata and predicted state onto every draft, fsynced (off the loop)."""
        for item in items:
            if item.delete:
                continue
            file = self.coord.get(item.target)
            if file is None:
                persisted = Persisted(self._absent_version(item.target) + 1, 0)
            else:
                persisted = Persisted(file.version + 1, file.epoch, file.policy)
            item.version, item.epoch = persisted.version, persisted.epoch
        work = [(i.draft, Persisted(i.version, i.epoch, self._policy(i.target)))
                for i in items if not i.delete]

        def prepare_all() -> None:
            for draft, persisted in work:
                self.drafts.prepare(draft, persisted, durable=self.durable)
            if self.durable:
                # Their names in drafts/ too: the intent (synced next) names
                # them, and a roll forward finds them there after a crash.
                self.drafts.sync_dir()

        if self.durable:
            await trio.to_thread.run_sync(prepare_all)
        else:
            prepare_all()

    def _policy(self, target: str) -> str | None:
        file = self.coord.get(target)
        return file.policy if file is not None else None

    def _absent_version(self, target: str) -> int:
        tomb = self.files.tombstones.get(target)
        return tomb[0] if tomb is not None else 0

    def _member(self, item: Item, file: FileState | None, identity: str,
                rests: Rests) -> Member:
        name = item.draft.name  # recorded across hosts, for roll-forward
        if item.target in rests:  # the stager said what it read
            said = rests[item.target]
            if said is not None:
                return Member(item.target, said[0], said[1], delete=item.delete, content=name)
            if file is not None:  # read as missing, exists now: conflicts
                return Member(item.target, -1, file.epoch, exists=False, delete=item.delete,
                              content=name)
        if file is None:
            tomb = self.files.tombstones.get(item.target)
            version, epoch = (tomb[0], tomb[1]) if tomb is not None else (0, 0)
            return Member(item.target, version, epoch, exists=False, delete=item.delete,
                          content=name)
        seen = file.readers.get(identity)
        if seen is not None:  # what the identity read
            return Member(item.target, seen.version, seen.epoch, delete=item.delete,
                          content=name)
        return Member(item.target, file.version, file.epoch, delete=item.delete,
                      content=name)  # blind

    def _install(self, txn: str, caller: Caller, items: list[Item],
                 states: dict[str, FileState | None], plan: list[Planned]) -> None:
        """Inside the decision's step: intent, renames, deletes, fingerprints."""
        by_path = {p.path: p for p in plan}
        for item in items:
            p = by_path[item.target]
            if item.delete:
                item.version = p.version - 1
                continue
            file = states[item.target]
            policy = file.policy if file is not None else None
            if (item.version, item.epoch) != (p.version, p.epoch):
                self.drafts.prepare(item.draft, Persisted(p.version, p.epoch, policy),
                                    durable=self.durable)
                item.version, item.epoch = p.version, p.epoch
        self.store.install(txn, caller.identity, caller.pid, items)
        for item in items:
            if not item.delete:
                self.files.fingerprints[item.target] = Fingerprint.of(os.fstat(item.draft.fd))
            self.files.content_changed(item.target, None)
            self.files.entry_changed(item.target)  # created or deleted: no cached entry

    def _reject(self, items: list[Item], caller: Caller, reason: str, txn: str,
                refused: list[str] | None = None) -> None:
        rejected = []
        for item in items:
            if item.delete:
                self.drafts.discard(item.draft)
                continue
            try:
                rejected.append(self.drafts.reject(item.draft, caller.identity, reason))
            except OSError as e:
                log.error("could not keep rejected draft of %s: %s", item.target, e)
                self.drafts.discard(item.draft)
        self.journaling.record("txn-refused", items[0].target if items else "?", txn=txn,
                               identity=caller.identity, pid=caller.pid, reason=reason,
                               files=[i.target for i in items], moved=refused,
                               rejected=rejected)

    def _empty(self, root: str) -> None:
        """The staging directory holds nothing afterwards (its subdirectories
        and the delete list go too)."""
        tree = self.backing.tree
        for name in (DELETE_LIST, RESTS_LIST):
            self.backing.remove(f"{root}/{name}")

        def empty_dirs(rel: str) -> None:
            for name, st in tree.listdir(rel):
                if st is not None and stat.S_ISDIR(st.st_mode):
                    empty_dirs(f"{rel}/{name}")
                    try:
                        tree.rmdir(f"{rel}/{name}")
                    except OSError:
                        pass  # something new was staged meanwhile: left for the next commit

        try:
            empty_dirs(root)
        except OSError:
            pass

    async def _durable(self, dirs: set[str]) -> None:
        if not self.durable:
            return

        def sync_all(_: object) -> None:
            for d in sorted(dirs):
                self.backing.sync_dir(d)

        await self.journaling.durable_with(sync_all, None)
