"""FenceOperations: the pyfuse3 handlers.

Each handler translates one request: inode numbers to paths, the request's
thread to a caller, flags to what the commit engine (``fencefs.engine``)
should do, and its answers to pyfuse3's types. The engine decides and
commits; ``fuse.boundary`` turns its errors (``FenceError``, ``OSError``)
into errnos in one place.

Nothing here holds coordination state: claims, versions and epochs live
behind ``fencefs.engine.coordination``; the commit protocol in
``fencefs.engine.commits``; the ``user.fencefs.*`` attributes in
``fencefs.fuse.attributes``; which paths may be named in ``fencefs.fuse.paths``.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Sequence

import pyfuse3

from fencefs.core import Caller, Coordinator, FileState
from fencefs.engine.commits import CommitEngine
from fencefs.engine.coordination import LocalCoordination
from fencefs.engine.files import FileTable
from fencefs.engine.handles import Handle, HandleTable
from fencefs.engine.history import History
from fencefs.engine.journaling import Journaling
from fencefs.engine.readers import Readers
from fencefs.engine.shared import SharedFiles
from fencefs.engine.txns import Transactions
from fencefs.engine.writers import Writers
from fencefs.etcd.engine import EtcdCoordination, EtcdSettings, host_prefix
from fencefs.etcd.journals import journal_path
from fencefs.fuse import paths
from fencefs.fuse.attributes import ControlAttributes
from fencefs.fuse.boundary import error_boundary
from fencefs.fuse.directories import Directories
from fencefs.fuse.hosts import Hosts
from fencefs.fuse.identity import (
    IdentityResolver,
    anchors_of,
    dying_by_signal,
    holds_for_writing,
    signal_pending,
    tgid_of,
)
from fencefs.fuse.inodes import InodeTable
from fencefs.fuse.kernel import ENTRY_TIMEOUT, KernelView
from fencefs.fuse.upkeep import Upkeep
from fencefs.store.backing import Backing
from fencefs.store.drafts import Drafts
from fencefs.store.journal import Journal
from fencefs.store.retention import Retention
from fencefs.store.snapshots import Snapshots
from fencefs.store.txn import TxnStore
from fencefs.store.versions import VersionStore


@error_boundary
class FenceOperations(pyfuse3.Operations):
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
        retention: Retention | None = None,
        etcd: EtcdSettings | None = None,
    ) -> None:
        super().__init__()
        self.backing = Backing(backing_root)
        self.drafts = Drafts(self.backing)
        keep = self.retention = retention or Retention()
        self.journal = Journal(journal_path(self.backing.meta, etcd),
                               segment_bytes=keep.segment_bytes, max_bytes=keep.journal_max,
                               durable=durable)
        self.durable = durable
        self.sweep_after = sweep_after
        core = Coordinator(max_observations=max_observations, default_policy=default_policy,
                           lease_ttl=lease_ttl, shared_globs=shared_globs)
        self.etcd: EtcdCoordination | None = None
        if etcd is None:
            self.coord: LocalCoordination = LocalCoordination(core)
        else:  # across hosts: etcd decides (docs/multihost.md)
            self.coord = self.etcd = EtcdCoordination(core, etcd, self.drafts)
            self.drafts.prefix = host_prefix(etcd.host)
        self.journaling = Journaling(self.journal, self.backing, durable=durable)
        if self.etcd is not None:  # each decision's line carries its etcd revision
            self.journaling.revision_of = self.etcd.revs.revision_of
        self.handles = HandleTable()
        self.inodes = InodeTable()
        self.kernel = KernelView(self.inodes, self.handles)
        self.files = FileTable(self.coord, self.backing, self.journaling, self.handles,
                               warm_files=warm_files)
        self.files.content_changed = self.kernel.content_changed
        self.files.entry_changed = self.kernel.entry_changed
        self.files.peers = etcd is not None
        self.writers = Writers(self.coord, self.drafts, self.journaling)
        self.readers = Readers(self.coord, self.files)
        self.commits = CommitEngine(self.coord, self.files, self.writers, self.drafts,
                                    self.journaling, durable=durable, wait=wait)
        self.shared = SharedFiles(self.coord, self.files, self.handles, self.journaling,
                                  self.commits)
        # History, restore, retention, metrics (engine/history.py).
        self.metrics = self.journaling.metrics
        self.journaling.policy_for = lambda p: (self.coord.policy_of(f) if (
            f := self.coord.get(p)) is not None else self.coord.policy_for(p, None))
        self.history = History(VersionStore(self.backing.meta, keep), self.drafts, self.coord,
                               self.files, self.journaling, self.metrics, keep,
                               durable=durable)
        self.commits.keep = self.history.keep
        self.commits.unkeep = self.history.unkeep
        self.files.floor = self.history.floor
        self.ids = IdentityResolver(scope)
        self.txns = Transactions(self.coord, self.files, self.handles, self.drafts,
                                 self.journaling, TxnStore(self.backing, self.drafts,
                                                           self.journal, durable=durable),
                                 durable=durable)
        self.snapshots = Snapshots(self.backing)
        self.attributes = ControlAttributes(self.backing, self.inodes, self.ids, self.coord,
                                            self.files, self.commits, self.shared,
                                            self.journaling, self.history, durable=durable,
                                            txns=self.txns, snapshots=self.snapshots)
        self.kernel.history_dir_owner = self.attributes.history_dir_owner
        self.directories = Directories(self.backing, self.inodes, self.handles,
                                       self.attributes, self.journaling, self.kernel.attrs)
        self.upkeep = Upkeep(self.coord, self.readers, self.commits, self.history,
                             self.journaling, self.txns, self.snapshots, self.drafts,
                             self.etcd, sweep_after=sweep_after)
        if self.etcd is not None:  # status, reclaims, sweep and policies across hosts
            self.attributes.hosts = self.upkeep.hosts = Hosts(self.etcd, self.files,
                                                              self.backing, self.commits)
        # Set once mounted: lets flush tell the opener's last close from others.
        self.mount_id: int | None = None

    # -- start-up and upkeep (fuse/upkeep.py) -----------------------------------

    def recover(self) -> int:
        return self.upkeep.recover()

    async def recover_across_hosts(self) -> int:
        return await self.upkeep.recover_across_hosts()

    async def maintain(self, interval: float = 2.0) -> None:
        await self.upkeep.maintain(interval)

    # -- helpers shared by the handlers ------------------------------------------

    def _lstat(self, rel: str) -> os.stat_result:
        try:
            return self.backing.lstat(rel)
        except FileNotFoundError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _regular(self, rel: str) -> FileState:
        """The state of the regular file at ``rel`` (EINVAL for anything else)."""
        st = self._lstat(rel)
        if not stat.S_ISREG(st.st_mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return self.files.file(rel, st)

    # -- lookups and attributes ---------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if name in (b".", b".."):
            ino = parent_inode if name == b"." else self.inodes.node(parent_inode).parent
            rel = self.inodes.path(ino)
            st = self._lstat(rel)
            self.inodes.node(ino).nlookup += 1
            return self.kernel.attrs(ino, st, rel)
        rel = paths.child(self.inodes, parent_inode, name)
        if paths.is_hidden(rel):
            raise pyfuse3.FUSEError(errno.ENOENT)
        try:
            st = self.backing.lstat(rel)
        except FileNotFoundError:
            # A negative entry the kernel may keep as long as a positive one
            # (a create, mkdir or rename through the mount replaces it at
            # once): programs probe for many names that are not there (git,
            # Python's imports, shells searching PATH).
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = ENTRY_TIMEOUT
            return negative
        if stat.S_ISREG(st.st_mode) and not paths.is_meta(rel):
            self.files.file(rel, st)
        node = self.inodes.remember(parent_inode, os.fsdecode(name))
        return self.kernel.attrs(node.ino, st, rel)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            gone = self.inodes.forget(ino, count)
            if gone is not None:
                # Everything it held is persisted with the file: re-read on
                # the next lookup, so memory follows the kernel's working set.
                self.files.forget(gone)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext
                      ) -> pyfuse3.EntryAttributes:
        if self.inodes.detached(inode):
            # Unlinked or replaced while open: fstat of a descriptor still
            # open on it works, as on any filesystem.
            st = self.handles.stat_open(inode)
            if st is None:
                raise pyfuse3.FUSEError(errno.ESTALE)
            return self.kernel.attrs(inode, st)
        rel = self.inodes.path(inode)
        st = self._lstat(rel)
        if stat.S_ISREG(st.st_mode) and not paths.is_meta(rel):
            self.files.file(rel, st)
        attrs = self.kernel.attrs(inode, st, rel)
        # A writer's fstat and lseek(SEEK_END) see its own draft, as on any
        # filesystem; everyone else sees the committed size (G4). The
        # caller's process is cached per thread: getattr is frequent.
        own = self.handles.own_draft(inode, lambda: self.ids.resolve(ctx.pid).pid)
        if own is not None:
            attrs.st_size = self.writers.draft_size(own)
        return attrs

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        rel = self.inodes.path(inode)
        paths.refuse_meta(rel)
        tree = self.backing.tree
        if fields.update_size:
            handle = self.handles.handles.get(fh) if fh is not None else None
            caller = self.ids.resolve(ctx.pid)
            if handle is not None and handle.writable:
                await self.writers.truncate(handle, attr.st_size)
            elif not await self.shared.truncate(rel, attr.st_size, fh, caller):
                # shared policy: in place; otherwise a path commit
                await self.commits.truncate_path(self._regular(rel), attr.st_size, caller)
        if fields.update_mode:
            tree.chmod(rel, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            tree.chown(rel, uid, gid)
        if fields.update_atime or fields.update_mtime:
            st = self._lstat(rel)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            tree.utime(rel, (atime, mtime))
            self._utime_drafts(rel, atime, mtime)
            self.files.refresh_fingerprint(rel)
        return self.kernel.attrs(inode, self._lstat(rel))

    def _utime_drafts(self, rel: str, atime: int, mtime: int) -> None:
        """futimens() reaches us without its descriptor: the times go to the
        pending drafts of the path too, or the commit that follows (tar, cp -p
        set the times before they close) would install the draft's own."""
        for handle in self.handles.of_path(rel):
            if handle.draft is not None and handle.claim is not None \
                    and not handle.claim.append:
                os.utime(handle.draft.fd, ns=(atime, mtime))

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = self.backing.tree.statvfs()
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                     "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(data, name, getattr(sv, name))
        return data

    # -- open, create, read, write ---------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        rel = self.inodes.path(inode)
        writing = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        if paths.is_meta(rel):
            return self._open_meta(inode, rel, flags, ctx)
        caller = self.ids.resolve(ctx.pid)
        # ---- shared policy: the backing file itself, in place (engine/shared.py) ----
        shared = self.shared.open_or_none(inode, rel, flags, caller)
        if shared is not None:
            return pyfuse3.FileInfo(fh=shared.fh, direct_io=False, keep_cache=False)
        self.handles.room_for(caller.pid, 2 if writing else 1)
        truncating = bool(flags & os.O_TRUNC)
        # O_TRUNC|O_APPEND replaces the content: a rewrite, not an append.
        append = bool(flags & os.O_APPEND) and not truncating
        claim = None
        if writing:
            def locate() -> tuple[str, FileState]:  # afresh after each wait
                here = self.inodes.path(inode)
                return here, self._regular(here)

            claim, rel, file = await self.commits.acquire(
                locate, caller, rewrite=truncating, append=append,
                interrupted=lambda: signal_pending(ctx.pid))
        else:
            file = self._regular(rel)
        # ---- no await from here: the claim and the content it rests on ----
        handle = Handle(self.handles.next_fh(), rel, inode, caller, ctx.pid, claim=claim)
        try:
            if not truncating:
                handle.base_fd = self.backing.open(rel, os.O_RDONLY)
                handle.served = (file.version, file.epoch)
            if writing and truncating:
                handle.draft = self.drafts.create(rel, caller.identity, caller.pid, None)
                handle.dirty = True  # O_TRUNC alone changes the content
        except BaseException:
            if claim is not None:
                self.coord.release(claim)
            if handle.base_fd is not None:
                os.close(handle.base_fd)
            raise
        self.handles.add(handle, caller.pid, 2 if writing else 1, writing=bool(writing))
        # direct_io: no page cache, so a draft's bytes never reach other readers
        # and every reader gets the committed version its handle opened.
        return pyfuse3.FileInfo(fh=handle.fh, direct_io=True, keep_cache=False)

    def _open_meta(self, inode: int, rel: str, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """The journal and rejected writes: read-only."""
        if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR) or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        pid = tgid_of(ctx.pid)
        self.handles.room_for(pid, 1)
        fd = self.backing.open(rel, os.O_RDONLY)
        handle = Handle(self.handles.next_fh(), rel, inode, Caller("meta", ctx.pid), ctx.pid,
                        base_fd=fd, meta=True)
        self.handles.add(handle, pid, 1, writing=False)
        return pyfuse3.FileInfo(fh=handle.fh, direct_io=True, keep_cache=False)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        rel = paths.child(self.inodes, parent_inode, name)
        paths.refuse_meta(rel)
        caller = self.ids.resolve(ctx.pid)
        self.handles.room_for(caller.pid, 2)
        # Read-only: the descriptor a fenced handle reads the committed
        # (empty) content through. The mode is exactly the one asked for.
        fd = self.backing.open(rel, os.O_RDONLY | os.O_CREAT | os.O_EXCL,
                               stat.S_IMODE(mode) & ~ctx.umask)
        self.journaling.namespace_changed(paths.parent_of(rel))
        try:
            self._own(rel, ctx, stat.S_IMODE(mode) & ~ctx.umask, fd)
            st = os.fstat(fd)
            file = self.files.file(rel, st)
        except BaseException:
            os.close(fd)
            raise
        if self.shared.in_place(file):  # shared policy (engine/shared.py): a glob's file
            os.close(fd)
            node = self.inodes.remember(parent_inode, os.fsdecode(name))
            shared = self.shared.open(node.ino, rel, file, flags, caller)
            info = pyfuse3.FileInfo(fh=shared.fh, direct_io=False, keep_cache=False)
            return info, self.kernel.attrs(node.ino, st)
        handle = Handle(self.handles.next_fh(), rel, 0, caller, ctx.pid)
        try:
            handle.claim = await self.coord.open_write(
                rel, caller.identity, caller.pid, rewrite=False,
                append=bool(flags & os.O_APPEND), now=time.monotonic(),
                persist_epoch=self.files.epoch_persister(file))
        except BaseException:
            os.close(fd)
            raise
        handle.base_fd = fd
        handle.served = (file.version, file.epoch)
        node = self.inodes.remember(parent_inode, os.fsdecode(name))
        handle.ino = node.ino
        self.handles.add(handle, caller.pid, 2, writing=True)
        info = pyfuse3.FileInfo(fh=handle.fh, direct_io=True, keep_cache=False)
        return info, self.kernel.attrs(node.ino, st)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if (shared := self.shared.get(fh)) is not None:  # shared policy
            return self.shared.read(shared, off, size)
        return self.readers.read(self.handles.handles[fh], off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if (shared := self.shared.get(fh)) is not None:  # shared policy
            return self.shared.write(shared, off, buf)
        return await self.writers.write(self.handles.handles[fh], off, buf, time.monotonic())

    # -- close, fsync: the commits ---------------------------------------------

    async def flush(self, fh: int) -> None:
        if (shared := self.shared.get(fh)) is not None:  # shared policy
            return await self.shared.flush(shared)
        handle = self.handles.handles.get(fh)
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
            self.writers.reject(handle, None, op="flush", reason="killed", signal=signal)
            self.txns.killed(handle.path)  # a staged draft: its transaction never commits
            raise pyfuse3.FUSEError(errno.EINTR)
        self.writers.check_live(handle, "close")  # a known refusal is reported by any close
        if self._opener_still_holds(handle):
            # A dup or a forked child closed its copy (a shell's dup2 dance,
            # subprocess closing inherited descriptors); the opener still
            # writes through its own. Its last close (or fsync) commits.
            return
        await self.commits.commit(handle)

    def _opener_still_holds(self, handle: Handle) -> bool:
        if self.mount_id is None:
            return False
        held = holds_for_writing(handle.caller.pid, self.mount_id, handle.ino)
        # The opener's other write handles on this file account for some of
        # its descriptors; only a surplus can be a copy of this handle.
        return held > self.handles.other_writers_of(handle)

    async def fsync(self, fh: int, datasync: bool) -> None:
        if (shared := self.shared.get(fh)) is not None:  # shared policy
            return await self.shared.fsync(shared)
        handle = self.handles.handles.get(fh)
        if handle is None or handle.meta:
            return
        if handle.error is not None:
            raise pyfuse3.FUSEError(handle.error)
        if handle.claim is None:
            return
        if handle.dirty:
            await self.commits.commit(handle)
        file = self.coord.get(handle.path)
        if file is not None and handle.claim.epoch == file.epoch:
            # fsync renews a live claim's lease; a clean handle has nothing to
            # commit, so a revoked one only learns it when it writes.
            self.coord.renew(handle.claim, time.monotonic())

    async def release(self, fh: int) -> None:
        if (shared := self.shared.get(fh)) is not None:  # shared policy
            return await self.shared.release(shared)
        handle = self.handles.remove(fh)
        if handle is not None:
            await self.commits.release(handle)

    # -- directories, links, nodes ---------------------------------------------

    def _own(self, rel: str, ctx: pyfuse3.RequestContext, mode: int,
             fd: int | None = None) -> None:
        """A new node belongs to its caller, with exactly ``mode``."""
        paths.give(self.backing, rel, ctx.uid, ctx.gid, mode, fd)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        rel = paths.child(self.inodes, parent_inode, name)
        paths.refuse_meta(rel)
        wanted = stat.S_IMODE(mode) & ~ctx.umask
        self.backing.tree.mkdir(rel, wanted)
        self._own(rel, ctx, wanted)
        self.journaling.namespace_changed(paths.parent_of(rel))
        if paths.is_txn_dir(rel):  # a transaction's staging directory: whose it is
            caller = self.ids.resolve(ctx.pid)
            self.txns.begin(rel, caller, anchors_of(caller.pid))
        node = self.inodes.remember(parent_inode, os.fsdecode(name))
        return self.kernel.attrs(node.ino, self._lstat(rel))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        rel = paths.child(self.inodes, parent_inode, name)
        paths.refuse_meta(rel)
        self.backing.tree.rmdir(rel)
        self.journaling.namespace_changed(paths.parent_of(rel))
        self.inodes.unlinked(parent_inode, os.fsdecode(name))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        rel = self.inodes.path(inode)
        # Any target, as on any filesystem: the caller's kernel follows it,
        # with the caller's rights; the daemon itself never does.
        return self.backing.tree.readlink(rel)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        rel = paths.child(self.inodes, parent_inode, name)
        paths.refuse_meta(rel)
        self.backing.tree.symlink(target, rel)
        self._own(rel, ctx, 0)
        self.journaling.namespace_changed(paths.parent_of(rel))
        node = self.inodes.remember(parent_inode, os.fsdecode(name))
        return self.kernel.attrs(node.ino, self._lstat(rel))

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        # Every kind, as on the backing filesystem: regular files (tar
        # --xattrs makes them so), FIFOs, sockets, and device nodes (the
        # kernel checked the caller's CAP_MKNOD before asking us).
        rel = paths.child(self.inodes, parent_inode, name)
        paths.refuse_meta(rel)
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        wanted = stat.S_IMODE(mode) & ~ctx.umask
        self.backing.tree.mknod(rel, kind | wanted, rdev)
        self._own(rel, ctx, wanted)
        self.journaling.namespace_changed(paths.parent_of(rel))
        st = self._lstat(rel)
        if stat.S_ISREG(st.st_mode):
            self.files.file(rel, st)
        node = self.inodes.remember(parent_inode, os.fsdecode(name))
        return self.kernel.attrs(node.ino, st)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        # Two paths sharing one content would share one version under two
        # claims tables: refused, with the errno link(2) uses for "not here".
        raise pyfuse3.FUSEError(errno.EPERM)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return self.directories.open(inode, lambda: self.attributes.access(ctx))

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self.directories.read(fh, start_id, token)

    async def releasedir(self, fh: int) -> None:
        self.directories.release(fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.directories.fsync(fh)

    # -- unlink and rename: path commits -------------------------------------

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        rel = paths.child(self.inodes, parent_inode, name)
        paths.refuse_meta(rel)
        st = self._lstat(rel)
        if not stat.S_ISREG(st.st_mode):
            self.backing.tree.unlink(rel)
        else:
            await self.commits.unlink(self.files.file(rel, st), self.ids.resolve(ctx.pid))
        self.inodes.unlinked(parent_inode, os.fsdecode(name))
        # A namespace change, not a close or fsync: synced with the next one.
        self.journaling.namespace_changed(paths.parent_of(rel))

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        old = paths.child(self.inodes, parent_inode_old, name_old)
        new = paths.child(self.inodes, parent_inode_new, name_new)
        paths.refuse_meta(old)
        paths.refuse_meta(new)
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_EXCHANGE: see docs
        src_st = self._lstat(old)
        try:
            dst_st: os.stat_result | None = self.backing.lstat(new)
        except FileNotFoundError:
            dst_st = None
        if dst_st is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EEXIST)
        moving = self.shared.check_rename(old, new, src_st, dst_st)  # shared policy: EBUSY
        if (dst_st is not None and stat.S_ISREG(dst_st.st_mode)
                and stat.S_ISREG(src_st.st_mode)):
            # Renaming over a file is a commit of that file.
            await self.commits.rename_over(old, self.files.file(new, dst_st),
                                           self.ids.resolve(ctx.pid))
        else:
            moving_file = self.coord.get(old) if stat.S_ISREG(src_st.st_mode) else None
            self.backing.tree.rename(old, new)
            if dst_st is not None:
                self.coord.removed(new)
            self.files.moved(old, new)
            self.history.moved(old, new, is_dir=stat.S_ISDIR(src_st.st_mode))
            # Journaled (a namespace change: no fsync), so the journal follows it.
            self.journaling.moved(old, new, src_st.st_mode, moving_file,
                                  lambda: self.ids.resolve(ctx.pid))
        self.inodes.moved(parent_inode_old, os.fsdecode(name_old),
                          parent_inode_new, os.fsdecode(name_new))
        self.kernel.content_changed(new)
        self.handles.moved(old, new)
        self.shared.moved(moving, old, new)  # in-place handles follow (engine/shared.py)
        # Namespace changes, synced with the next close, fsync or upkeep round.
        if stat.S_ISDIR(src_st.st_mode):
            self.journaling.namespace_moved(old, new)
        self.journaling.namespace_changed(paths.parent_of(old), paths.parent_of(new))

    # -- extended attributes: claim state and control (fuse/attributes.py) -------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.attributes.get(inode, name, ctx)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return await self.attributes.list(inode, ctx)

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        await self.attributes.set(inode, name, value, ctx)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.attributes.remove(inode, name, ctx)
