"""FenceOperations: the pyfuse3 handlers.

Thin by design: each handler resolves inode numbers to paths, asks the core
(``fencefs.core``) to decide and the store (``fencefs.store``) to act, and
lets ``fuse.boundary`` turn errors into errnos.

The one rule that matters under trio: code between two awaits is atomic.
Every check-and-install (``_commit``, ``_commit_path``, ``_reclaim``) runs the
core's check and the store's rename with no await in between. Slow work
(copying, fsync of a draft) happens before the check, on a worker thread, and
the check is made afresh after it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import resource
import stat
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import pyfuse3
import trio

from fencefs.core import Busy, Claim, Coordinator, FenceError, FileState, Persisted
from fencefs.fuse import control
from fencefs.fuse.access import READ, WRITE, Access
from fencefs.fuse.boundary import error_boundary
from fencefs.fuse.identity import (
    Caller,
    IdentityResolver,
    alive,
    dying_by_signal,
    holds_for_writing,
    signal_pending,
    tgid_of,
)
from fencefs.fuse.inodes import ROOT, InodeTable
from fencefs.fuse.shared import SharedFiles
from fencefs.store.backing import META_DIR, Backing, Fingerprint
from fencefs.store.drafts import Draft, Drafts, close_quietly
from fencefs.store.journal import Journal

log = logging.getLogger("fencefs.fuse")

# Shown through the mount, read-only; the rest of .fencefs/ is hidden.
_META_VISIBLE = {"journal.jsonl", "rejected"}
_META_OPEN_DIRS = {META_DIR, f"{META_DIR}/rejected"}
# Copies bigger than this run on a worker thread.
_BIG = 1 << 20
# Unlinked paths remembered (see unlink).
_TOMBSTONES = 10_000
# Descriptors kept free for commits whatever the number of open handles.
FD_RESERVE = 256
# The kernel may answer stat() from its cache for this long. Every content
# change made through the mount invalidates the inode's attributes at once
# (``_content_changed``); only a write made straight into the backing
# directory can stay unseen by stat() for up to this long (open() always asks).
_ATTR_TIMEOUT = 1.0
_ENTRY_TIMEOUT = 1.0


def file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


@dataclass(slots=True)
class Handle:
    fh: int
    path: str
    ino: int
    caller: Caller
    tid: int
    # Read side: the committed content this handle serves (an immutable inode).
    base_fd: int | None = None
    # Write side.
    claim: Claim | None = None
    draft: Draft | None = None
    dirty: bool = False
    append_at: int = 0
    error: int | None = None
    meta: bool = False
    served: tuple[int, int] | None = None  # (version, epoch) of base_fd
    observed: tuple[int, int] | None = None  # what read() last recorded
    booked: tuple[int, int] = (0, 0)  # (process, descriptors) booked at open

    @property
    def writable(self) -> bool:
        return self.claim is not None


@error_boundary
class FenceOperations(SharedFiles, pyfuse3.Operations):
    enable_writeback_cache = False  # writes must never arrive after flush

    def __init__(
        self,
        backing_root: str,
        *,
        durable: bool = True,
        scope: str = "agent",
        max_observations: int = 100_000,
        default_policy: str = "optimistic",
        lease_ttl: float = 60.0,
        wait: float = 0.0,
        sweep_after: float | None = None,
        warm_files: int = 8192,
        shared_globs: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.backing = Backing(backing_root)
        self.drafts = Drafts(self.backing)
        self.journal = Journal(os.path.join(self.backing.meta, "journal.jsonl"))
        self.core = Coordinator(max_observations=max_observations,
                                default_policy=default_policy, lease_ttl=lease_ttl,
                                shared_globs=shared_globs)
        self.wait = wait
        self.sweep_after = sweep_after
        self.inodes = InodeTable()
        self.ids = IdentityResolver(scope)
        self.durable = durable
        # Set once mounted: lets flush tell the opener's last close from others.
        self.mount_id: int | None = None
        self.handles: dict[int, Handle] = {}
        # Open write handles per inode (fh numbers): whose draft a getattr sees.
        self._writers: dict[int, set[int]] = {}
        # Descriptors booked by open handles, in all and per process.
        self._booked = 0
        self._booked_by: dict[int, int] = {}
        self._fh = itertools.count(1)
        # Open directory handles: the directory's inode and a sorted snapshot.
        self._dirs: dict[int, tuple[int, list[str]]] = {}
        # Last content fingerprint fencefs itself produced or adopted, per path.
        self._fingerprints: dict[str, Fingerprint] = {}
        # Reading processes per identity (named agents excepted): an identity
        # whose processes all exited loses its observation claims (maintain).
        self._identity_pids: dict[str, set[int]] = {}
        # Versions and epochs of unlinked paths: a recreated file continues them.
        # Observations survive too: claims belong to the path, not the inode.
        self._tombstones: dict[str, tuple[int, int, list[Claim]]] = {}
        # Recently used paths, least recent first (see _keep_warm).
        self._warm: OrderedDict[str, None] = OrderedDict()
        self._warm_files = max(1, warm_files)
        # Per path: the turn to prepare and install a commit (see _commit).
        self._turns: dict[str, trio.Lock] = {}
        # The journal fsync in flight, if any (see _sync_journal).
        self._journal_syncing: trio.Event | None = None
        self._init_shared()  # handles of shared-policy files (fuse/shared.py)

    # -- start-up ------------------------------------------------------------

    def recover(self) -> int:
        """Put drafts orphaned by a crash away as abandoned writes."""
        count = 0
        for path, meta in self.drafts.orphans():
            target = str(meta.get("path", "?"))
            identity = str(meta.get("identity", "?"))
            name = self.drafts.put_away(path, target, identity, "abandoned")
            # A commit journaled with this draft (write-ahead, see _commit)
            # never happened: the draft names it.
            self.journal.record("abandoned", target, identity=identity,
                                pid=meta.get("pid"), rejected=name, reason="daemon-restart",
                                draft=os.path.basename(path))
            count += 1
        if count:
            self.journal.sync()
        return count

    async def maintain(self, interval: float = 2.0) -> None:
        """Background upkeep: drop claims of identities that have exited."""
        while True:
            await trio.sleep(interval)
            self.prune_identities()
            if self.sweep_after is not None:
                await self.sweep(time.monotonic())

    async def sweep(self, now: float) -> None:
        """Reclaim files whose write claims sat idle past --sweep-after."""
        assert self.sweep_after is not None
        idle = {c.path for c in self.core.idle_writers(now, self.sweep_after)}
        for path in sorted(idle):
            file = self.core.get(path)
            if file is not None:
                await self._reclaim(file, Caller("fencefs-sweep", os.getpid()), reason="idle")

    def prune_identities(self) -> int:
        dropped = 0
        for identity, pids in list(self._identity_pids.items()):
            live = {pid for pid in pids if alive(pid)}
            if live:
                self._identity_pids[identity] = live
            else:
                del self._identity_pids[identity]
                dropped += self.core.drop_identity(identity)
        return dropped

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _is_meta(rel: str) -> bool:
        return rel == META_DIR or rel.startswith(META_DIR + "/")

    @staticmethod
    def _is_hidden(rel: str) -> bool:
        if not rel.startswith(META_DIR + "/"):
            return False
        return rel[len(META_DIR) + 1:].split("/", 1)[0] not in _META_VISIBLE

    def _refuse_meta(self, rel: str) -> None:
        if self._is_meta(rel):
            raise pyfuse3.FUSEError(errno.EROFS)

    def _attrs(self, ino: int, st: os.stat_result, rel: str | None = None
               ) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                     "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(a, name, getattr(st, name))
        if rel in _META_OPEN_DIRS:
            # Everyone may look in (read-only): what is inside keeps the modes
            # of the files it came from, and listings are filtered (opendir).
            a.st_mode = stat.S_IFDIR | 0o755
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = _ENTRY_TIMEOUT
        # While a write handle is open the answer depends on who asks (a
        # writer sees its own draft's size, see getattr): nothing is cached.
        # Otherwise a draft's size never sticks in the kernel's cache: a
        # direct write or an O_TRUNC open makes the kernel drop the size it
        # holds and ask getattr, which answers with the committed file.
        a.attr_timeout = 0 if ino in self._writers else _ATTR_TIMEOUT
        return a

    def _content_changed(self, path: str, ino: int | None = None) -> None:
        """A commit or a foreign write changed ``path``: the kernel must not
        answer stat() from the attributes it cached. (Cached pages need no
        invalidation: every handle of a fenced file is direct_io, and the
        kernel drops the page cache whenever such a file is mmapped.)"""
        ino = self.inodes.ino_of(path) if ino is None else ino
        if ino is None:
            return
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError:
            pass  # the kernel no longer knows it: nothing cached

    def _lstat(self, rel: str) -> os.stat_result:
        try:
            return self.backing.lstat(rel)
        except FileNotFoundError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _file(self, rel: str, st: os.stat_result) -> FileState:
        """The coordination state of a regular file, noticing foreign writes."""
        fp = Fingerprint.of(st)
        file = self.core.get(rel)
        if file is None:
            persisted, saved = self.backing.read_state(rel)
            tomb = self._tombstones.pop(rel, None)
            if tomb is not None and saved is None:
                persisted = Persisted(tomb[0], tomb[1])
            file = self.core.adopt(rel, persisted)
            if tomb is not None and saved is None:
                for seen in tomb[2]:
                    self.core.observe(rel, seen.identity, seen.pid, seen.version, seen.epoch)
            if saved is not None and saved != fp:
                self._adopt_foreign(file, fp)
            self._fingerprints[rel] = fp
        elif self._fingerprints.get(rel) != fp and not self._writing_in_place(file):
            self._adopt_foreign(file, fp)
            self._fingerprints[rel] = fp
        self._keep_warm(rel)
        return file

    def _keep_warm(self, rel: str) -> None:
        """Memory follows the working set, not the number of files: the
        state of a file nothing rests on is persisted with the file, so only
        the most recently used are kept; the others are re-read (one xattr)
        when next used."""
        warm = self._warm
        warm[rel] = None
        warm.move_to_end(rel)
        if len(warm) > self._warm_files:
            coldest, _ = warm.popitem(last=False)
            file = self.core.get(coldest)
            if file is not None and any(h.file is file for h in self._shared.values()):
                return  # a shared handle holds this very state object
            if self.core.forget(coldest):
                self._fingerprints.pop(coldest, None)

    def _persist_state(self, file: FileState, *, version: int | None = None,
                       epoch: int | None = None, policy: str | None = None,
                       keep_policy: bool = True, durable: bool) -> None:
        """Write a file's state onto its backing file (content unchanged) and
        remember the fingerprint that goes with it."""
        state = Persisted(file.version if version is None else version,
                          file.epoch if epoch is None else epoch,
                          file.policy if keep_policy else policy)
        self._fingerprints[file.path] = self.backing.write_state(
            file.path, state, durable=durable)

    def _adopt_foreign(self, file: FileState, fp: Fingerprint) -> None:
        old = file.version

        def persist(version: int, epoch: int) -> None:
            try:
                self._persist_state(file, version=version, durable=False)
            except OSError as e:  # e.g. the file vanished again: adopt in memory
                log.warning("could not persist foreign write on %s: %s", file.path, e)

        new = self.core.adopt_foreign(file.path, persist)
        self.journal.record("foreign", file.path, version=old, new_version=new,
                            epoch=file.epoch, size=fp.size)
        self._content_changed(file.path)

    def _child(self, parent: int, name: bytes) -> str:
        text = os.fsdecode(name)
        if "/" in text or text in (".", ".."):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return self.inodes.child_path(parent, text)

    def _journal(self, event: str, claim: Claim | None, file: FileState | None,
                 **fields: object) -> None:
        info: dict[str, object] = {}
        if claim is not None:
            info.update(identity=claim.identity, pid=claim.pid,
                        version=claim.version, epoch=claim.epoch)
        if file is not None:
            info.update(current_version=file.version, current_epoch=file.epoch)
        info.update(fields)
        path = claim.path if claim is not None else (file.path if file else "?")
        self.journal.record(event, path, **info)

    def _access(self, ctx: pyfuse3.RequestContext) -> Access:
        return Access(ctx.uid, ctx.gid, ctx.pid, self._lstat_any)

    def _lstat_any(self, rel: str) -> os.stat_result:
        return self.backing.lstat(rel)

    def _room_to_journal(self) -> None:
        """Refuse (ENOSPC) a commit or reclaim the journal has no room for."""
        if not self.journal.reserve():
            raise OSError(errno.ENOSPC, "no room left to journal the change")

    async def _sync_journal(self) -> None:
        """Make every journal line written so far durable. Group commit:
        a caller whose lines an fsync already in flight will cover waits for
        that one; one fsync then serves all who arrived while it ran."""
        if not self.durable:
            return
        wanted = self.journal.written
        while self.journal.synced < wanted:
            running = self._journal_syncing
            if running is not None:
                await running.wait()
                continue
            running = self._journal_syncing = trio.Event()
            try:
                await trio.to_thread.run_sync(self.journal.sync)  # advances .synced
            finally:
                self._journal_syncing = None
                running.set()

    # -- lookups and attributes ---------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if name in (b".", b".."):
            ino = parent_inode if name == b"." else self.inodes.node(parent_inode).parent
            rel = self.inodes.path(ino)
            st = self._lstat(rel)
            self.inodes.node(ino).nlookup += 1
            return self._attrs(ino, st, rel)
        rel = self._child(parent_inode, name)
        if self._is_hidden(rel):
            raise pyfuse3.FUSEError(errno.ENOENT)
        st = self._lstat(rel)
        if stat.S_ISREG(st.st_mode) and not self._is_meta(rel):
            self._file(rel, st)
        node = self.inodes.remember(parent_inode, os.fsdecode(name))
        return self._attrs(node.ino, st, rel)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            gone = self.inodes.forget(ino, count)
            if gone is not None and self.core.forget(gone):
                # Everything it held is persisted with the file: re-read on
                # the next lookup, so memory follows the kernel's working set.
                self._fingerprints.pop(gone, None)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext
                      ) -> pyfuse3.EntryAttributes:
        if self.inodes.detached(inode):
            # Unlinked or replaced while open: fstat of a descriptor still
            # open on it works, as on any filesystem.
            return self._attrs(inode, self._stat_open(inode))
        rel = self.inodes.path(inode)
        st = self._lstat(rel)
        if stat.S_ISREG(st.st_mode) and not self._is_meta(rel):
            self._file(rel, st)
        attrs = self._attrs(inode, st, rel)
        size = self._own_draft_size(inode, ctx.pid)
        if size is not None:
            attrs.st_size = size
        return attrs

    def _stat_open(self, inode: int) -> os.stat_result:
        for handle in self.handles.values():
            if handle.ino == inode:
                fd = handle.draft.fd if handle.draft is not None else handle.base_fd
                if fd is not None:
                    return os.fstat(fd)
        raise pyfuse3.FUSEError(errno.ESTALE)

    def _own_draft_size(self, inode: int, tid: int) -> int | None:
        """The size of the caller's own uncommitted draft of ``inode``, if it
        has one: a writer's fstat and lseek(SEEK_END) see what it wrote, as on
        any filesystem; everyone else sees the committed size (G4)."""
        fhs = self._writers.get(inode)
        if not fhs:
            return None
        mine = [h for h in (self.handles[fh] for fh in fhs)
                if h.dirty and h.draft is not None and h.error is None]
        if not mine:
            return None
        pid = self.ids.resolve(tid).pid  # cached per thread: getattr is frequent
        mine = [h for h in mine if h.caller.pid == pid]
        if not mine:
            return None
        handle = mine[-1]
        assert handle.draft is not None
        if handle.claim is not None and handle.claim.append:
            base = os.fstat(handle.base_fd).st_size if handle.base_fd is not None else 0
            return base + handle.append_at
        return os.fstat(handle.draft.fd).st_size

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        rel = self.inodes.path(inode)
        self._refuse_meta(rel)
        path = self.backing.abs(rel)
        if fields.update_size:
            handle = self.handles.get(fh) if fh is not None else None
            if handle is not None and handle.writable:
                await self._truncate_draft(handle, attr.st_size)
            elif not await self._truncate_shared(rel, attr.st_size, fh,
                                                 self.ids.resolve(ctx.pid)):  # shared: in place
                await self._truncate_path(rel, attr.st_size, ctx)
        if fields.update_mode:
            os.chmod(path, stat.S_IMODE(attr.st_mode), follow_symlinks=False)
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            os.chown(path, uid, gid, follow_symlinks=False)
        if fields.update_atime or fields.update_mtime:
            st = self._lstat(rel)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(path, ns=(atime, mtime), follow_symlinks=False)
            self._utime_drafts(rel, atime, mtime)
            self._refresh_fingerprint(rel)
        return self._attrs(inode, self._lstat(rel))

    def _utime_drafts(self, rel: str, atime: int, mtime: int) -> None:
        """futimens() reaches us without its descriptor: the times go to the
        pending drafts of the path too, or the commit that follows (tar, cp -p
        set the times before they close) would install the draft's own."""
        for handle in self.handles.values():
            if handle.path == rel and handle.draft is not None and handle.claim is not None \
                    and not handle.claim.append:
                os.utime(handle.draft.fd, ns=(atime, mtime))

    def _refresh_fingerprint(self, rel: str) -> None:
        """Our own metadata change moved the mtime: not a foreign write."""
        file = self.core.get(rel)
        if file is not None and self.backing.is_regular(rel):
            self._persist_state(file, durable=False)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        rel = self.inodes.path(inode)
        target = os.readlink(self.backing.abs(rel))
        if not self._stays_inside(rel, target) or not self._resolves_inside(rel, target):
            raise pyfuse3.FUSEError(errno.EPERM)
        return os.fsencode(target)

    def _resolves_inside(self, link_rel: str, target: str) -> bool:
        """True if ``target``, read from a symlink at ``link_rel`` and
        followed through the symlinks it passes on the way, stays in BACKING.

        Counting '..' is not enough: a link that climbs back from deep down
        ('a/b/up' -> '../..') lets a path through it ('a/b/up/../x') climb
        out while every link, taken alone, stays inside. Checked whenever a
        link is read, so a link made harmless at creation and turned by a
        later rename or a later link is refused when followed.
        """
        stack = link_rel.split("/")[:-1]
        return self._walk(stack, target, [0]) is not None

    def _walk(self, stack: list[str], target: str, hops: list[int]) -> list[str] | None:
        if not target or target.startswith("/"):
            return None
        stack = list(stack)
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    return None
                stack.pop()
                continue
            stack.append(part)
            try:
                st = os.lstat(self.backing.abs("/".join(stack)))
            except OSError:
                continue  # not there (yet): the kernel stops here, or counts on
            if stat.S_ISLNK(st.st_mode):
                hops[0] += 1
                if hops[0] > 40:  # the kernel's own limit (ELOOP)
                    return None
                inner = os.readlink(self.backing.abs("/".join(stack)))
                resolved = self._walk(stack[:-1], inner, hops)
                if resolved is None:
                    return None
                stack = resolved
        return stack

    @staticmethod
    def _stays_inside(link_rel: str, target: str) -> bool:
        """True if a symlink at ``link_rel`` to ``target`` stays in BACKING."""
        if target.startswith("/") or not target:
            return False
        depth = link_rel.count("/")  # directories above the link
        for part in target.split("/"):
            if part in ("", "."):
                continue
            depth += -1 if part == ".." else 1
            if depth < 0:
                return False
        return True

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.backing.root)
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                     "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(data, name, getattr(sv, name))
        return data

    # -- directories ---------------------------------------------------------

    def _own(self, path: str, ctx: pyfuse3.RequestContext) -> None:
        if os.geteuid() == 0:
            os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        rel = self._child(parent_inode, name)
        self._refuse_meta(rel)
        path = self.backing.abs(rel)
        os.mkdir(path, stat.S_IMODE(mode) & ~ctx.umask)
        self._own(path, ctx)
        node = self.inodes.remember(parent_inode, os.fsdecode(name))
        return self._attrs(node.ino, self._lstat(rel))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        rel = self._child(parent_inode, name)
        self._refuse_meta(rel)
        os.rmdir(self.backing.abs(rel))
        self.inodes.unlinked(parent_inode, os.fsdecode(name))

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        rel = self._child(parent_inode, name)
        self._refuse_meta(rel)
        text = os.fsdecode(target)
        if not self._stays_inside(rel, text) or not self._resolves_inside(rel, text):
            raise pyfuse3.FUSEError(errno.EPERM)
        path = self.backing.abs(rel)
        os.symlink(text, path)
        self._own(path, ctx)
        node = self.inodes.remember(parent_inode, os.fsdecode(name))
        return self._attrs(node.ino, self._lstat(rel))

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        # Regular files (tar --xattrs makes them so), FIFOs and sockets, as on
        # the backing filesystem; device nodes have no place in a shared tree.
        rel = self._child(parent_inode, name)
        self._refuse_meta(rel)
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK):
            raise pyfuse3.FUSEError(errno.EPERM)
        path = self.backing.abs(rel)
        os.mknod(path, kind | (stat.S_IMODE(mode) & ~ctx.umask))
        self._own(path, ctx)
        st = self._lstat(rel)
        if stat.S_ISREG(st.st_mode):
            self._file(rel, st)
        node = self.inodes.remember(parent_inode, os.fsdecode(name))
        return self._attrs(node.ino, st)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        # Two paths sharing one content would share one version under two
        # claims tables: refused, with the errno link(2) uses for "not here".
        raise pyfuse3.FUSEError(errno.EPERM)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        rel = self.inodes.path(inode)
        names = []
        # Rejected writes are listed only to those who may read them.
        access = self._access(ctx) if rel == f"{META_DIR}/rejected" else None
        with os.scandir(self.backing.abs(rel)) as it:
            for entry in it:
                child = f"{rel}/{entry.name}" if rel else entry.name
                if self._is_hidden(child):
                    continue
                if access is not None:
                    try:
                        if not access.may_entry(entry.stat(follow_symlinks=False), READ):
                            continue
                    except FileNotFoundError:
                        continue
                names.append(entry.name)
        names.sort()
        fh = next(self._fh)
        self._dirs[fh] = (inode, names)
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        inode, names = self._dirs[fh]
        base = self.inodes.path(inode)
        # Offsets are indexes into the names listed at opendir: stable. The
        # attributes are read now, not at opendir: the kernel caches them.
        for index in range(start_id, len(names)):
            name = names[index]
            try:
                st = self.backing.lstat(f"{base}/{name}" if base else name)
            except FileNotFoundError:
                continue  # gone since opendir
            node = self.inodes.remember(inode, name)
            rel = f"{base}/{name}" if base else name
            if not pyfuse3.readdir_reply(token, os.fsencode(name),
                                         self._attrs(node.ino, st, rel), index + 1):
                self.inodes.forget(node.ino, 1)
                break

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        inode, _ = self._dirs[fh]
        if self.durable:  # off the event loop: an fsync can take milliseconds
            await trio.to_thread.run_sync(self.backing.sync_dir, self.inodes.path(inode))

    # -- unlink and rename: path commits -------------------------------------

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        rel = self._child(parent_inode, name)
        self._refuse_meta(rel)
        st = self._lstat(rel)
        if not stat.S_ISREG(st.st_mode):
            os.unlink(self.backing.abs(rel))
            self.inodes.unlinked(parent_inode, os.fsdecode(name))
            return
        file = self._file(rel, st)
        caller = self.ids.resolve(ctx.pid)

        def install(version: int, epoch: int) -> None:
            os.unlink(self.backing.abs(rel))

        self._commit_path(file, caller, install, "unlink")
        gone = self.core.removed(rel)
        if gone is not None:
            self._tombstones[rel] = (gone.version, gone.epoch, list(gone.readers.values()))
            if len(self._tombstones) > _TOMBSTONES:
                del self._tombstones[next(iter(self._tombstones))]  # the oldest
        self._fingerprints.pop(rel, None)
        self.inodes.unlinked(parent_inode, os.fsdecode(name))
        await self._durable_dir(os.path.dirname(rel))

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        self._refuse_meta(old)
        self._refuse_meta(new)
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_EXCHANGE: see docs
        src_st = self._lstat(old)
        try:
            dst_st: os.stat_result | None = self.backing.lstat(new)
        except FileNotFoundError:
            dst_st = None
        if dst_st is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EEXIST)
        moving = self._check_rename_shared(old, new, src_st, dst_st)  # shared policy: EBUSY
        old_abs, new_abs = self.backing.abs(old), self.backing.abs(new)
        if (dst_st is not None and stat.S_ISREG(dst_st.st_mode)
                and stat.S_ISREG(src_st.st_mode)):
            # Renaming over a file is a commit of that file.
            target = self._file(new, dst_st)
            caller = self.ids.resolve(ctx.pid)
            installed: list[Fingerprint] = []

            def install(version: int, epoch: int) -> None:
                fp = self.backing.write_state(
                    old, Persisted(version, epoch, target.policy), durable=False)
                os.rename(old_abs, new_abs)
                installed.append(fp)

            self._commit_path(target, caller, install, "rename", source=old)
            self._fingerprints[new] = installed[0]
            self._fingerprints.pop(old, None)
            self.core.removed(old)
        else:
            os.rename(old_abs, new_abs)
            if dst_st is not None:
                self.core.removed(new)
            self.core.moved(old, new)
            for path in [p for p in self._fingerprints if p == old or p.startswith(old + "/")]:
                self._fingerprints[new + path[len(old):]] = self._fingerprints.pop(path)
        self.inodes.moved(parent_inode_old, os.fsdecode(name_old),
                          parent_inode_new, os.fsdecode(name_new))
        self._content_changed(new)
        for handle in self.handles.values():
            if handle.path == old or handle.path.startswith(old + "/"):
                handle.path = new + handle.path[len(old):]
                if handle.draft is not None:
                    handle.draft.target = handle.path
        self._moved_shared(moving, old, new)  # in-place handles follow (fuse/shared.py)
        await self._durable_dir(os.path.dirname(new))
        if os.path.dirname(old) != os.path.dirname(new):
            await self._durable_dir(os.path.dirname(old))

    def _commit_path(self, file: FileState, caller: Caller,
                     install: Callable[[int, int], None], event: str,
                     draft: Draft | None = None, **fields: object) -> int:
        """Check-and-install of a path operation. No await in here (G3).
        A refused ``draft`` is kept under rejected/."""
        self._room_to_journal()

        def journaled(version: int, epoch: int) -> None:
            # Journaled ahead of the install (see _commit).
            self.journal.record("commit", file.path, identity=caller.identity, pid=caller.pid,
                                op=event, new_version=version, epoch=epoch,
                                draft=draft.name if draft is not None else None, **fields)
            try:
                install(version, epoch)
            except OSError as e:
                self.journal.record("failed", file.path, identity=caller.identity,
                                    pid=caller.pid, op=event, new_version=version,
                                    errno=errno.errorcode.get(e.errno or 0, str(e.errno)))
                raise

        try:
            version = self.core.commit_path(file.path, caller.identity, caller.pid, journaled,
                                            now=time.monotonic())
        except FenceError as e:
            name = (self.drafts.reject(draft, caller.identity, e.reason)
                    if draft is not None else None)
            self._journal_refusal(e, file.path, caller, event, rejected=name)
            raise
        return version

    async def _durable_dir(self, rel_dir: str) -> None:
        """The directory entry and the journal line of a commit reach the disk."""
        await self._durable(self.backing.sync_dir, rel_dir)

    async def _durable(self, sync: Callable[[Any], None], what: Any) -> None:
        """``sync(what)`` on a worker thread and the journal's group commit,
        at once (one filesystem commit can carry both); nothing under
        --durability none."""
        if not self.durable:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sync_journal)
            await trio.to_thread.run_sync(sync, what)

    # -- truncate --------------------------------------------------------------

    async def _truncate_draft(self, handle: Handle, size: int) -> None:
        self._check_live(handle)
        with self._failing_on_io(handle, "truncate"):
            if handle.draft is None:
                await self._make_draft(handle, copy=size > 0)
            assert handle.draft is not None
            os.ftruncate(handle.draft.fd, size)
        handle.dirty = True

    async def _truncate_path(self, rel: str, size: int, ctx: pyfuse3.RequestContext) -> None:
        st = self._lstat(rel)
        if not stat.S_ISREG(st.st_mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        file = self._file(rel, st)
        caller = self.ids.resolve(ctx.pid)
        src = os.open(self.backing.abs(rel), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            draft = self.drafts.create(rel, caller.identity, caller.pid,
                                       src if size > 0 else None)
        finally:
            os.close(src)
        os.ftruncate(draft.fd, size)

        def install(version: int, epoch: int) -> None:
            self.drafts.prepare(draft, Persisted(version, epoch, file.policy),
                                durable=self.durable)
            self.drafts.install(draft)

        try:
            self._commit_path(file, caller, install, "truncate", draft=draft, size=size)
        except FenceError:
            raise
        except BaseException:
            self.drafts.discard(draft)
            raise
        self._fingerprints[rel] = Fingerprint.of(os.fstat(draft.fd))
        close_quietly(draft.fd)
        await self._durable_dir(os.path.dirname(rel))

    # -- open, create, read, write ---------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        rel = self.inodes.path(inode)
        writing = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        if self._is_meta(rel):
            if writing or flags & os.O_TRUNC:
                raise pyfuse3.FUSEError(errno.EROFS)
            pid = tgid_of(ctx.pid)
            self._room_for_handle(pid, 1)
            fd = os.open(self.backing.abs(rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            handle = Handle(next(self._fh), rel, inode, Caller("meta", ctx.pid), ctx.pid,
                            base_fd=fd, meta=True)
            self.handles[handle.fh] = handle
            self._book(handle, pid, 1)
            return pyfuse3.FileInfo(fh=handle.fh, direct_io=True, keep_cache=False)
        caller = self.ids.resolve(ctx.pid)
        # ---- shared policy: the backing file itself, in place (fuse/shared.py) ----
        shared = self._shared_open_or_none(inode, rel, flags, caller)
        if shared is not None:
            return shared
        # ---- end shared policy ----
        self._room_for_handle(caller.pid, 2 if writing else 1)
        truncating = bool(flags & os.O_TRUNC)
        # O_TRUNC|O_APPEND replaces the content: a rewrite, not an append.
        append = bool(flags & os.O_APPEND) and not truncating
        claim = None
        if writing:
            claim, rel, file = await self._acquire(inode, caller, ctx.pid,
                                                   rewrite=truncating, append=append)
        else:
            st = self._lstat(rel)
            if not stat.S_ISREG(st.st_mode):
                raise pyfuse3.FUSEError(errno.EINVAL)
            file = self._file(rel, st)
        # ---- no await from here: the claim and the content it rests on ----
        handle = Handle(next(self._fh), rel, inode, caller, ctx.pid, claim=claim)
        try:
            if not truncating:
                handle.base_fd = os.open(self.backing.abs(rel),
                                         os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                handle.served = (file.version, file.epoch)
            if writing and truncating:
                handle.draft = self.drafts.create(rel, caller.identity, caller.pid, None)
                handle.dirty = True  # O_TRUNC alone changes the content
        except BaseException:
            if claim is not None:
                self.core.release(claim)
            if handle.base_fd is not None:
                close_quietly(handle.base_fd)
            raise
        self.handles[handle.fh] = handle
        self._book(handle, caller.pid, 2 if writing else 1)
        if writing:
            self._writers.setdefault(inode, set()).add(handle.fh)
        # direct_io: no page cache, so a draft's bytes never reach other readers
        # and every reader gets the committed version its handle opened.
        return pyfuse3.FileInfo(fh=handle.fh, direct_io=True, keep_cache=False)

    def _room_for_handle(self, pid: int, units: int) -> None:
        """ENFILE when a new handle of process ``pid`` needing ``units``
        descriptors does not fit. A read handle holds one descriptor, a write
        handle up to two (its committed content and its draft). FD_RESERVE
        stay free for commits (drafts of path commits and appends, directory
        syncs), and one process may book at most half of the rest, so a
        client hoarding handles gets ENFILE while others can still open and
        commit. Without this, a hoarder made everyone's commits fail half-way
        with EMFILE."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # can change (prlimit)
        if limit == resource.RLIM_INFINITY:
            return
        budget = limit - FD_RESERVE
        if (self._booked + units > budget
                or self._booked_by.get(pid, 0) + units > budget // 2):
            raise pyfuse3.FUSEError(errno.ENFILE)

    def _book(self, handle: Handle, pid: int, units: int) -> None:
        handle.booked = (pid, units)
        self._booked += units
        self._booked_by[pid] = self._booked_by.get(pid, 0) + units

    def _unbook(self, handle: Handle) -> None:
        pid, units = handle.booked
        self._booked -= units
        left = self._booked_by.get(pid, 0) - units
        if left > 0:
            self._booked_by[pid] = left
        else:
            self._booked_by.pop(pid, None)

    async def _acquire(self, inode: int, caller: Caller, tid: int, *, rewrite: bool,
                       append: bool) -> tuple[Claim, str, FileState]:
        """A write claim for the file at ``inode``, waiting out an exclusive
        holder for up to --wait seconds (EBUSY after that, EINTR if the
        caller is signalled meanwhile)."""
        deadline = time.monotonic() + self.wait
        while True:
            rel = self.inodes.path(inode)
            st = self._lstat(rel)
            if not stat.S_ISREG(st.st_mode):
                raise pyfuse3.FUSEError(errno.EINVAL)
            file = self._file(rel, st)
            now = time.monotonic()
            before = file.epoch
            try:
                claim = self.core.open_write(
                    rel, caller.identity, caller.pid, rewrite=rewrite, append=append,
                    now=now, persist_epoch=self._epoch_persister(file))
            except Busy as e:
                if now < deadline:
                    if signal_pending(tid):
                        raise pyfuse3.FUSEError(errno.EINTR) from None
                    await trio.sleep(min(0.02, deadline - now))
                    continue  # re-validate everything after the checkpoint
                self._journal_refusal(e, rel, caller, "open")
                raise
            except FenceError as e:
                self._journal_refusal(e, rel, caller, "open")
                raise
            if file.epoch != before:
                self.journal.record("reclaim", rel, identity=caller.identity, pid=caller.pid,
                                    version=file.version, epoch=before, new_epoch=file.epoch,
                                    reason="lease-expired")
            return claim, rel, file

    def _journal_refusal(self, e: FenceError, rel: str, caller: Caller, op: str,
                         **fields: object) -> None:
        self.journal.record(e.reason, rel, identity=caller.identity, pid=caller.pid, op=op,
                            version=e.rested_version, epoch=e.rested_epoch,
                            current_version=e.current_version, current_epoch=e.current_epoch,
                            **fields)

    def _epoch_persister(self, file: FileState) -> Callable[[int], None]:
        # Always fsynced, whatever --durability says: epochs never go down.
        return lambda epoch: self._persist_state(file, epoch=epoch, durable=True)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        rel = self._child(parent_inode, name)
        self._refuse_meta(rel)
        caller = self.ids.resolve(ctx.pid)
        self._room_for_handle(caller.pid, 2)
        path = self.backing.abs(rel)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     stat.S_IMODE(mode) & ~ctx.umask)
        os.close(fd)
        self._own(path, ctx)
        st = self._lstat(rel)
        file = self._file(rel, st)
        if self._in_place(file):  # shared policy (fuse/shared.py): a glob's file
            node = self.inodes.remember(parent_inode, os.fsdecode(name))
            return self._open_shared(node.ino, rel, file, flags, caller), self._attrs(node.ino, st)
        handle = Handle(next(self._fh), rel, 0, caller, ctx.pid)
        handle.claim = self.core.open_write(rel, caller.identity, caller.pid, rewrite=False,
                                            append=bool(flags & os.O_APPEND),
                                            now=time.monotonic(),
                                            persist_epoch=self._epoch_persister(file))
        handle.base_fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        handle.served = (file.version, file.epoch)
        node = self.inodes.remember(parent_inode, os.fsdecode(name))
        handle.ino = node.ino
        self.handles[handle.fh] = handle
        self._book(handle, caller.pid, 2)
        self._writers.setdefault(node.ino, set()).add(handle.fh)
        info = pyfuse3.FileInfo(fh=handle.fh, direct_io=True, keep_cache=False)
        return info, self._attrs(node.ino, st)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if (shared := self._shared.get(fh)) is not None:  # shared policy
            return self._read_shared(shared, off, size)
        handle = self.handles[fh]
        if handle.error is not None:
            raise pyfuse3.FUSEError(handle.error)
        if handle.draft is not None and not (handle.claim and handle.claim.append):
            return os.pread(handle.draft.fd, size, off)
        if handle.draft is not None:
            return self._read_appending(handle, off, size)
        if handle.base_fd is None:
            return b""
        data = os.pread(handle.base_fd, size, off)
        if handle.served != handle.observed and not handle.meta and not handle.dirty:
            self._observe(handle)
        return data

    @staticmethod
    def _read_appending(handle: Handle, off: int, size: int) -> bytes:
        """An appending handle reads its own appends after the content it
        opened (where they would land if it committed now)."""
        assert handle.draft is not None
        base = os.fstat(handle.base_fd).st_size if handle.base_fd is not None else 0
        data = b""
        if off < base:
            assert handle.base_fd is not None
            data = os.pread(handle.base_fd, min(size, base - off), off)
            if off + len(data) < base:
                return data
        if len(data) < size:
            data += os.pread(handle.draft.fd, size - len(data), max(off - base, 0))
        return data

    def _observe(self, handle: Handle) -> None:
        """Record what this handle serves, once per version (reads are hot)."""
        assert handle.served is not None
        if self.core.get(handle.path) is None:  # gone cold meanwhile: warm it up
            try:
                st = self.backing.lstat(handle.path)
            except FileNotFoundError:
                return  # unlinked: nothing to judge a later write against
            if not stat.S_ISREG(st.st_mode):
                return
            self._file(handle.path, st)
        version, epoch = handle.served
        caller = handle.caller
        self.core.observe(handle.path, caller.identity, caller.pid, version, epoch)
        handle.observed = handle.served
        if not caller.identity.startswith("agent:"):
            # A named agent outlives the tools that read for it (a `cat`
            # exits at once): its reads are dropped only by the table's cap.
            self._identity_pids.setdefault(caller.identity, set()).add(caller.pid)

    def _check_live(self, handle: Handle, op: str = "write",
                    refused_write: tuple[int, bytes] | None = None) -> None:
        """The earliest error: a handle that can no longer commit. A refused
        write's own bytes go to rejected/ with the draft."""
        if handle.error is not None:
            raise pyfuse3.FUSEError(handle.error)
        if handle.claim is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        try:
            self.core.check(handle.claim)
        except FenceError as e:
            if refused_write is not None and handle.draft is not None:
                self._write_draft(handle, *refused_write)
            self._reject(handle, e, op=op)
            raise

    async def _make_draft(self, handle: Handle, *, copy: bool) -> None:
        source = handle.base_fd if copy and not (handle.claim and handle.claim.append) else None
        caller = handle.caller
        if source is not None and os.fstat(source).st_size > _BIG:
            draft = await trio.to_thread.run_sync(
                self.drafts.create, handle.path, caller.identity, caller.pid, source)
        else:
            draft = self.drafts.create(handle.path, caller.identity, caller.pid, source)
        if handle.draft is not None:  # another request of this handle made one meanwhile
            self.drafts.discard(draft)
            return
        handle.draft = draft

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if (shared := self._shared.get(fh)) is not None:  # shared policy
            return self._write_shared(shared, off, buf)
        handle = self.handles[fh]
        with self._failing_on_io(handle, "write"):
            if handle.draft is None and handle.error is None and handle.claim is not None:
                await self._make_draft(handle, copy=True)
        # Checked after the draft exists (its copy may have awaited), so a
        # refusal keeps what the handle wrote, this write included.
        self._check_live(handle, refused_write=(off, buf))
        with self._failing_on_io(handle, "write"):
            written = self._write_draft(handle, off, buf)
        handle.dirty = True
        assert handle.claim is not None
        self.core.renew(handle.claim, time.monotonic())
        return written

    @staticmethod
    def _write_draft(handle: Handle, off: int, buf: bytes) -> int:
        assert handle.draft is not None and handle.claim is not None
        if handle.claim.append:
            # Appends land after whatever is current at commit: keep them in order.
            written = os.pwrite(handle.draft.fd, buf, handle.append_at)
            handle.append_at += written
            return written
        return os.pwrite(handle.draft.fd, buf, off)

    # -- commit ----------------------------------------------------------------

    async def flush(self, fh: int) -> None:
        if (shared := self._shared.get(fh)) is not None:  # shared policy
            return await self._flush_shared(shared)
        handle = self.handles.get(fh)
        if handle is None or handle.meta:
            return
        if handle.error is not None:
            raise pyfuse3.FUSEError(handle.error)
        if not handle.writable or not handle.dirty:
            return
        signal = dying_by_signal(handle.tid)
        if signal is None and handle.caller.pid != handle.tid:
            signal = dying_by_signal(handle.caller.pid)
        if signal is not None:
            # G7: the kernel flushes a killed process's files; that is no commit.
            self._reject(handle, None, op="flush", reason="killed", signal=signal)
            raise pyfuse3.FUSEError(errno.EINTR)
        self._check_live(handle, "close")  # a known refusal is reported by any close
        if self._opener_still_holds(handle):
            # A dup or a forked child closed its copy (a shell's dup2 dance,
            # subprocess closing inherited descriptors); the opener still
            # writes through its own. Its last close (or fsync) commits.
            return
        await self._commit(handle)

    def _epoch_of(self, handle: Handle) -> int | None:
        file = self.core.get(handle.path)
        return file.epoch if file is not None else None

    def _opener_still_holds(self, handle: Handle) -> bool:
        if self.mount_id is None:
            return False
        held = holds_for_writing(handle.caller.pid, self.mount_id, handle.ino)
        # The opener's other write handles on this file account for some of
        # its descriptors; only a surplus can be a copy of this handle.
        others = sum(1 for fh in self._writers.get(handle.ino, ())
                     if fh != handle.fh and self.handles[fh].caller.pid == handle.caller.pid)
        return held > others

    async def fsync(self, fh: int, datasync: bool) -> None:
        if (shared := self._shared.get(fh)) is not None:  # shared policy
            return await self._fsync_shared(shared)
        handle = self.handles.get(fh)
        if handle is None or handle.meta:
            return
        if handle.error is not None:
            raise pyfuse3.FUSEError(handle.error)
        if handle.claim is None:
            return
        if handle.dirty:
            await self._commit(handle)
        if handle.claim.epoch == self._epoch_of(handle):
            # fsync renews a live claim's lease; a clean handle has nothing to
            # commit, so a revoked one only learns it when it writes.
            self.core.renew(handle.claim, time.monotonic())

    async def _commit(self, handle: Handle) -> None:
        assert handle.claim is not None
        self._check_live(handle, "commit")
        # One commit per file at a time gets past this point: a writer whose
        # claim went stale while it waited is refused here, before it pays
        # for an fsync that could only end in a conflict.
        async with self._commit_turn(handle.path):
            self._check_live(handle, "commit")
            if handle.draft is None:
                with self._failing_on_io(handle, "commit"):
                    await self._make_draft(handle, copy=False)
                self._check_live(handle, "commit")
            if handle.claim.append:
                await self._commit_append(handle)
            else:
                await self._commit_rewrite(handle)
        await self._durable_dir(os.path.dirname(handle.path))

    @contextlib.asynccontextmanager
    async def _commit_turn(self, path: str) -> AsyncIterator[None]:
        lock = self._turns.get(path)
        if lock is None:
            lock = self._turns[path] = trio.Lock()
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._turns.get(path) is lock:
                del self._turns[path]

    async def _commit_rewrite(self, handle: Handle) -> None:
        claim = handle.claim
        draft = handle.draft
        assert claim is not None and draft is not None
        file = self.core.get(handle.path)
        assert file is not None
        predicted = Persisted(claim.version + 1, claim.epoch, file.policy)
        # Slow part first, off the event loop: the draft gets the state it
        # will commit as, and reaches the disk.
        with self._failing_on_io(handle, "commit"):
            if self.durable:
                await trio.to_thread.run_sync(
                    lambda: self.drafts.prepare(draft, predicted, durable=True))
            else:  # no fsync: cheaper here than a trip to a worker thread
                self.drafts.prepare(draft, predicted, durable=False)
            self._room_to_journal()

        # ---- atomic: from the check to the rename, no await (G3) ----
        before = (claim.version, claim.epoch)

        def install(version: int, epoch: int) -> None:
            if (version, epoch, file.policy) != (predicted.version, predicted.epoch,
                                                 predicted.policy):
                self.drafts.prepare(draft, Persisted(version, epoch, file.policy),
                                    durable=self.durable)
            # The record goes to the journal ahead of the rename: a daemon
            # killed in between leaves a journaled commit whose draft the
            # next mount puts away as abandoned, with the same version (never
            # a content in place that the journal does not account for).
            self.journal.record("commit", handle.path, identity=claim.identity, pid=claim.pid,
                                version=before[0], epoch=before[1], new_version=version,
                                draft=draft.name)
            self.drafts.install(draft)
        try:
            with self._failing_on_io(handle, "commit"):
                version = self.core.commit(claim, install)
        except FenceError as e:
            self._reject(handle, e, op="commit")
            raise
        self._fingerprints[handle.path] = Fingerprint.of(os.fstat(draft.fd))
        self._content_changed(handle.path, handle.ino)
        # ---- end of the atomic step ----
        # The draft is now the committed content this handle reads.
        if handle.base_fd is not None:
            close_quietly(handle.base_fd)
        handle.base_fd, handle.draft, handle.dirty = draft.fd, None, False
        handle.served = (version, file.epoch)

    async def _commit_append(self, handle: Handle) -> None:
        """Append: the draft's bytes go after whatever content is current.

        The combined content is built against the version seen before, on a
        worker thread unless it is small and needs no fsync; if another
        commit landed meanwhile it is rebuilt. After a few lost races the
        build runs inline, inside the atomic step, so an append always lands
        (only a reclaim can refuse it).
        """
        claim = handle.claim
        appended = handle.draft
        assert claim is not None and appended is not None
        rel = handle.path
        for attempt in range(4):
            file = self.core.get(rel)
            if file is None:  # unlinked meanwhile: the claim conflicts
                self._check_live(handle, "append")
            assert file is not None
            seen = file.version
            persisted = Persisted(seen + 1, claim.epoch, file.policy)
            with self._failing_on_io(handle, "append"):
                if attempt < 3 and (self.durable or file_size(self.backing.abs(rel)) > _BIG):
                    combined = await trio.to_thread.run_sync(
                        self._build_append, rel, appended, handle.caller, persisted)
                # ---- atomic: from here to the rename, no await (G3) ----
                else:
                    combined = self._build_append(rel, appended, handle.caller, persisted)
            if file.version != seen or self.core.get(rel) is not file:
                self.drafts.discard(combined)  # someone committed meanwhile: rebuild
                continue
            try:
                self._room_to_journal()
                def install(version: int, epoch: int) -> None:
                    self.journal.record("commit", rel, identity=claim.identity, pid=claim.pid,
                                        version=seen, epoch=epoch, new_version=version,
                                        op="append", size=handle.append_at,
                                        draft=combined.name)
                    self.drafts.install(combined)

                version = self.core.commit(claim, install)
            except FenceError as e:
                self.drafts.discard(combined)
                self._reject(handle, e, op="append")
                raise
            except OSError as e:
                self.drafts.discard(combined)
                self._fail(handle, e, "append")
            self._fingerprints[rel] = Fingerprint.of(os.fstat(combined.fd))
            self._content_changed(rel, handle.ino)
            # ---- end of the atomic step ----
            # The handle now reads the content it installed, appends included.
            if handle.base_fd is not None:
                close_quietly(handle.base_fd)
            handle.base_fd, handle.served = combined.fd, (version, claim.epoch)
            self.drafts.discard(appended)
            handle.draft, handle.dirty, handle.append_at = None, False, 0
            return
        raise AssertionError("an inline append build cannot lose a race")

    def _build_append(self, rel: str, appended: Draft, caller: Caller,
                      persisted: Persisted) -> Draft:
        src = os.open(self.backing.abs(rel), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            combined = self.drafts.create(rel, caller.identity, caller.pid, src)
        finally:
            os.close(src)
        try:
            end = os.fstat(combined.fd).st_size
            offset = 0
            while True:
                chunk = os.pread(appended.fd, 1 << 20, offset)
                if not chunk:
                    break
                os.pwrite(combined.fd, chunk, end + offset)
                offset += len(chunk)
            self.drafts.prepare(combined, persisted, durable=self.durable)
        except BaseException:
            self.drafts.discard(combined)  # never leave a half-built draft behind
            raise
        return combined

    @contextlib.contextmanager
    def _failing_on_io(self, handle: Handle, op: str) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            self._fail(handle, e, op)

    def _fail(self, handle: Handle, exc: OSError, op: str) -> NoReturn:
        """An I/O error on a handle's draft (a full disk, a backing store
        gone read-only or failing) ends the handle: the draft no longer holds
        what the program wrote, so it must never commit. Every later write,
        fsync and close repeats the errno. The draft is discarded, not kept:
        on a full disk, keeping it would keep the disk full."""
        code = exc.errno or errno.EIO
        handle.error, handle.dirty = code, False
        if handle.draft is not None:
            self.drafts.discard(handle.draft)
            handle.draft = None
        log.warning("%s of %s failed: %s", op, handle.path, exc)
        self._journal("failed", handle.claim, self.core.get(handle.path), op=op,
                      errno=errno.errorcode.get(code, str(code)))
        raise pyfuse3.FUSEError(code) from None

    def _reject(self, handle: Handle, error: FenceError | None, *, op: str,
                reason: str | None = None, **fields: object) -> None:
        """Keep a refused handle's bytes under rejected/ and journal why."""
        reason = reason or (error.reason if error else "rejected")
        name = None
        if handle.draft is not None:
            try:
                name = self.drafts.reject(handle.draft, handle.caller.identity, reason)
            except OSError as e:
                log.error("could not keep rejected draft of %s: %s", handle.path, e)
                self.drafts.discard(handle.draft)
            handle.draft = None
        handle.dirty = False
        handle.error = error.errno if error else errno.EINTR
        file = self.core.get(handle.path)
        self._journal(reason, handle.claim, file, op=op, rejected=name, **fields)

    async def release(self, fh: int) -> None:
        if (shared := self._shared.get(fh)) is not None:  # shared policy
            return await self._release_shared(shared)
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        self._unbook(handle)
        writers = self._writers.get(handle.ino)
        if writers is not None:
            writers.discard(fh)
            if not writers:
                del self._writers[handle.ino]
        if handle.dirty and handle.error is None and handle.claim is not None:
            # Left dirty by a deferred flush (see flush): commit now. Errors
            # cannot reach the caller from release: a refusal is journaled
            # and the bytes kept, as always.
            try:
                await self._commit(handle)
            except (FenceError, pyfuse3.FUSEError, OSError) as e:
                log.info("commit of %s at release refused: %s", handle.path, e)
        if handle.dirty and handle.draft is not None:
            self._reject(handle, None, op="release", reason="abandoned")
        if handle.claim is not None:
            self.core.release(handle.claim)
        if handle.draft is not None:
            self.drafts.discard(handle.draft)
        if handle.base_fd is not None:
            close_quietly(handle.base_fd)

    # -- extended attributes: claim state and control ----------------------------

    def _regular_state(self, inode: int) -> tuple[str, FileState | None]:
        rel = self.inodes.path(inode)
        st = self._lstat(rel)
        if not stat.S_ISREG(st.st_mode) or self._is_meta(rel):
            return rel, None
        return rel, self._file(rel, st)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        text = os.fsdecode(name)
        if inode == ROOT and text == control.STATUS:
            # Only files the caller could read: the status names files and
            # who holds them, in directories the caller may not enter.
            access = self._access(ctx)
            files = [f for f in self.core.files() if access.may(f.path, READ)]
            return control.status_of(files, time.monotonic(), self.core.policy_of)
        if not control.is_control(text):  # e.g. security.capability, asked at every write
            return os.getxattr(self.backing.abs(self.inodes.path(inode)), name,
                              follow_symlinks=False)
        _, file = self._regular_state(inode)
        if file is None or text not in control.READABLE:
            raise pyfuse3.FUSEError(errno.ENODATA)
        caller = self.ids.resolve(ctx.pid)
        return control.value_of(text, file, caller.identity, time.monotonic(),
                                self.core.policy_of(file))

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        rel, file = self._regular_state(inode)
        names = [os.fsencode(n) for n in os.listxattr(self.backing.abs(rel),
                                                       follow_symlinks=False)
                 if not control.is_control(n)]
        if file is not None:
            names += [n.encode() for n in control.READABLE]
        return names

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        text = os.fsdecode(name)
        rel, file = self._regular_state(inode)
        if not control.is_control(text):
            self._refuse_meta(rel)
            os.setxattr(self.backing.abs(rel), name, value, follow_symlinks=False)
            return
        caller = self.ids.resolve(ctx.pid)
        if inode == ROOT and text in (control.RECLAIM_EXPIRED, control.RECLAIM_AGENT):
            await self._reclaim_many(text, value, caller, self._access(ctx))
            return
        if file is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if text == control.RECLAIM:
            control.parse_one(value)
            await self._reclaim(file, caller, reason="operator")
        elif text == control.RENEW:
            control.parse_one(value, control.RENEW)
            now = time.monotonic()
            mine = [c for c in file.writers.values() if c.identity == caller.identity]
            if not mine:
                raise pyfuse3.FUSEError(errno.ENOENT)  # no write claim of yours to renew
            for claim in mine:
                self.core.renew(claim, now)
        elif text == control.POLICY:
            self._set_policy(file, control.parse_policy(value), caller)
        else:
            raise pyfuse3.FUSEError(errno.EINVAL)

    async def _reclaim_many(self, name: str, value: bytes, caller: Caller,
                            access: Access) -> None:
        """Root-level control: reclaim every file whose write claim expired,
        or every file on which one identity holds a claim; of those, only
        the files the caller could write (as setxattr on the file requires)."""
        now = time.monotonic()
        if name == control.RECLAIM_EXPIRED:
            control.parse_one(value, name)
            paths = {c.path for c in self.core.expired_writers(now)}
            reason = "lease-expired"
        else:
            wanted = control.parse_identity(value)
            paths = {c.path for c in self.core.claims_of(wanted)}
            reason = f"identity={wanted}"
        for path in sorted(p for p in paths if access.may(p, WRITE)):
            file = self.core.get(path)
            if file is not None:
                await self._reclaim(file, caller, reason=reason)

    def _set_policy(self, file: FileState, policy: str | None, caller: Caller) -> None:
        """The file's own policy (None: back to the mount's globs and default)."""
        if policy == file.policy:
            return
        self._check_policy_switch(file, policy)  # shared <-> fenced: EBUSY while open
        self.core.set_policy(file.path, policy, lambda p: self._persist_state(
            file, policy=p, keep_policy=False, durable=self.durable))
        self.journal.record("policy", file.path, identity=caller.identity, pid=caller.pid,
                            policy=policy if policy is not None else "-",
                            effective=self.core.policy_of(file))

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        text = os.fsdecode(name)
        rel = self.inodes.path(inode)
        if text == control.POLICY:  # the file's own policy goes: the mount's rules apply
            rel, file = self._regular_state(inode)
            if file is None:
                raise pyfuse3.FUSEError(errno.EINVAL)
            self._set_policy(file, None, self.ids.resolve(ctx.pid))
            return
        if control.is_control(text):
            raise pyfuse3.FUSEError(errno.EINVAL)
        self._refuse_meta(rel)
        os.removexattr(self.backing.abs(rel), name, follow_symlinks=False)

    async def _reclaim(self, file: FileState, caller: Caller, *, reason: str) -> int:
        """Reclaim: the new epoch is on disk before anyone can observe it."""
        before = file.epoch
        self._room_to_journal()
        epoch = self.core.reclaim(file.path, self._epoch_persister(file))
        self.journal.record("reclaim", file.path, identity=caller.identity, pid=caller.pid,
                            version=file.version, epoch=before, new_epoch=epoch,
                            reason=reason, revoked=len(file.writers))
        await self._sync_journal()
        return epoch
