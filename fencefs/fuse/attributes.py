"""The extended attributes: claim state to read, controls to set.

``user.fencefs.*`` names are fencefs's own (see ``fuse.control`` for their
names and values): reading them shows a file's version, epoch, claims and
policy; setting them reclaims, renews or changes the policy. Every other
attribute passes through to the backing file. ``FenceOperations`` hands its
xattr requests to one ``ControlAttributes``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from typing import TYPE_CHECKING

import pyfuse3
import trio

from fencefs import history as wire
from fencefs.core import Caller, FileState
from fencefs.core.errors import BadValue
from fencefs.core.model import SHARED
from fencefs.engine.atomic import atomic
from fencefs.engine.commits import CommitEngine
from fencefs.engine.coordination import Coordination
from fencefs.engine.files import FileTable
from fencefs.engine.history import History
from fencefs.engine.journaling import Journaling
from fencefs.engine.shared import SharedFiles
from fencefs.engine.txns import Transactions
from fencefs.fuse import control, paths
from fencefs.fuse.access import READ, WRITE, Access
from fencefs.fuse.identity import IdentityResolver
from fencefs.fuse.inodes import ROOT, InodeTable
from fencefs.store.backing import Backing
from fencefs.store.snapshots import Snapshots
from fencefs.wire import HOSTS

if TYPE_CHECKING:
    from fencefs.fuse.hosts import Hosts


class ControlAttributes:
    def __init__(self, backing: Backing, inodes: InodeTable, ids: IdentityResolver,
                 coord: Coordination, files: FileTable, commits: CommitEngine,
                 shared: SharedFiles, journaling: Journaling, history: History, *,
                 durable: bool, txns: Transactions, snapshots: Snapshots) -> None:
        self.backing = backing
        self.inodes = inodes
        self.ids = ids
        self.coord = coord
        self.files = files
        self.commits = commits
        self.shared = shared
        self.journaling = journaling
        self.history = history
        self.durable = durable
        self.txns = txns
        self.snapshots = snapshots
        self.hosts: Hosts | None = None  # with --etcd: the cluster-wide side

    def access(self, ctx: pyfuse3.RequestContext) -> Access:
        return Access(ctx.uid, ctx.gid, ctx.pid, self.backing.lstat)

    def _regular_state(self, inode: int) -> tuple[str, FileState | None]:
        rel = self.inodes.path(inode)
        try:
            st = self.backing.lstat(rel)
        except FileNotFoundError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if not stat.S_ISREG(st.st_mode) or paths.is_meta(rel):
            return rel, None
        return rel, self.files.file(rel, st)

    async def get(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        text = os.fsdecode(name)
        if inode == ROOT and text == control.STATUS:
            # Only files the caller could read: the status names files and
            # who holds them, in directories the caller may not enter.
            access = self.access(ctx)
            files = [f for f in self.coord.files() if access.may(f.path, READ)]
            if self.hosts is not None:  # every host's claims (fuse/hosts.py)
                return await self.hosts.status(files, lambda p: access.may(p, READ),
                                               time.monotonic())
            return control.status_of(files, time.monotonic(), self.coord.policy_of)
        if inode == ROOT and text == HOSTS and self.hosts is not None:
            return await self.hosts.hosts()
        if inode == ROOT and text == wire.STATS:
            return self.history.stats()
        if inode == ROOT and text == wire.GC:
            return json.dumps(self.history.last_gc).encode()
        if text == wire.HISTORY:
            return self._history(self.inodes.path(inode), ctx)
        if inode == ROOT and text == control.SNAPSHOTS:
            return json.dumps([s.to_json() for s in self.snapshots.list()]).encode()
        if text == control.RESULT and paths.is_txn_dir(self.inodes.path(inode)):
            return self.txns.result(self.inodes.path(inode))
        if not control.is_control(text):  # e.g. security.capability, asked at every write
            return self.backing.tree.getxattr(self.inodes.path(inode), name)
        _, file = self._regular_state(inode)
        if file is None or text not in control.READABLE:
            raise pyfuse3.FUSEError(errno.ENODATA)
        caller = self.ids.resolve(ctx.pid)
        return control.value_of(text, file, caller.identity, time.monotonic(),
                                self.coord.policy_of(file))

    async def list(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        rel, file = self._regular_state(inode)
        names = [os.fsencode(n) for n in self.backing.tree.listxattr(rel)
                 if not control.is_control(n)]
        if file is not None:
            names += [n.encode() for n in control.READABLE]
        return names

    async def set(self, inode: int, name: bytes, value: bytes,
                  ctx: pyfuse3.RequestContext) -> None:
        text = os.fsdecode(name)
        rel, file = self._regular_state(inode)
        if not control.is_control(text):
            paths.refuse_meta(rel)
            self.backing.tree.setxattr(rel, name, value)
            return
        caller = self.ids.resolve(ctx.pid)
        if inode == ROOT and text in (control.RECLAIM_EXPIRED, control.RECLAIM_AGENT):
            await self._reclaim_many(text, value, caller, self.access(ctx))
            return
        if inode == ROOT and text == wire.GC:
            if value.strip() not in (b"1", b"dry-run"):
                raise BadValue(f"{wire.GC} takes 1 or dry-run")
            if not self.access(ctx).everything:
                raise pyfuse3.FUSEError(errno.EPERM)  # gc touches everyone's files
            await self.history.gc(time.time(), dry_run=value.strip() == b"dry-run")
            return
        if text == control.COMMIT and paths.is_txn_dir(rel):
            await self._commit_txn(inode, rel, value, caller, ctx)
            return
        if inode == ROOT and text in (control.SNAPSHOT_CREATE, control.SNAPSHOT_DELETE):
            await self._snapshot(text, value, caller, ctx)
            return
        if file is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if text == wire.RESTORE_FROM:
            self._restore_from(rel, value, caller)
        elif text == control.RECLAIM:
            control.parse_one(value)
            await self.commits.reclaim(file, caller, reason="operator")
        elif text == control.RENEW:
            control.parse_one(value, control.RENEW)
            now = time.monotonic()
            mine = [c for c in file.writers.values() if c.identity == caller.identity]
            if not mine:
                raise pyfuse3.FUSEError(errno.ENOENT)  # no write claim of yours to renew
            for claim in mine:
                self.coord.renew(claim, now)
        elif text == control.POLICY:
            self._set_policy(file, control.parse_policy(value), caller)
            if self.hosts is not None:  # stored in etcd: every host applies it
                await self.hosts.etcd.share_policy(rel, file.policy,
                                                   self.backing.lstat(rel).st_ino)
        else:
            raise pyfuse3.FUSEError(errno.EINVAL)

    def _history(self, rel: str, ctx: pyfuse3.RequestContext) -> bytes:
        """``user.fencefs.history`` of a history directory (the file's path
        under ``.fencefs/versions/``): what a reader of the file may see."""
        if not paths.in_versions(rel) or rel == paths.VERSIONS_DIR:
            raise pyfuse3.FUSEError(errno.ENODATA)
        path = wire.decode_path(rel[len(paths.VERSIONS_DIR) + 1:])
        access = self.access(ctx)
        if self.backing.is_regular(path) and not access.may(path, READ):
            raise pyfuse3.FUSEError(errno.EACCES)
        return self.history.history_of(path)

    def history_dir_owner(self, rel: str) -> tuple[int, int, int]:
        """Owner, group and mode shown for a directory of the history tree:
        those of the path it mirrors (a file's read bits become search bits
        too), or for a deleted path those of its nearest existing directory,
        so that the history is guarded as the files were."""
        path = wire.decode_path(rel[len(paths.VERSIONS_DIR) + 1:])
        while True:
            try:
                st = self.backing.lstat(path)
                break
            except OSError:
                if not path:
                    return 0, 0, stat.S_IFDIR | 0o700
                path = os.path.dirname(path)
        perms = stat.S_IMODE(st.st_mode) & 0o777
        if not stat.S_ISDIR(st.st_mode):
            perms |= (perms & 0o444) >> 2  # r -> r-x
        return st.st_uid, st.st_gid, stat.S_IFDIR | (perms & 0o755)

    def may_see_history(self, access: Access, rel: str) -> bool:
        """Whether a directory of the history tree (a file's history, or a
        directory of files) may be listed: if its path exists, as the caller
        may read it; else (deleted) as the caller may read its parent."""
        path = wire.decode_path(rel[len(paths.VERSIONS_DIR) + 1:])
        while path and not self.backing.exists(path):
            path = os.path.dirname(path)
        return access.may(path, READ)

    def _restore_from(self, rel: str, value: bytes, caller: Caller) -> None:
        """Mark the caller's open write handles of the file: their next
        commit restores a retained version (journaled ``restored_from``)."""
        try:
            version = wire.parse_restore_from(value)
        except ValueError as e:
            raise BadValue(str(e)) from None
        mine = [h for h in self.files.handles.of_path(rel)
                if h.writable and h.caller.pid == caller.pid]
        if not mine:
            raise pyfuse3.FUSEError(errno.ENOENT)  # no write handle of yours to mark
        for handle in mine:
            self.history.mark_restore(handle, version)

    async def _reclaim_many(self, name: str, value: bytes, caller: Caller,
                            access: Access) -> None:
        """Root-level control: reclaim every file whose write claim expired,
        or every file on which one identity holds a claim; of those, only
        the files the caller could write (as setxattr on the file requires)."""
        now = time.monotonic()
        if name == control.RECLAIM_EXPIRED:
            control.parse_one(value, name)
            paths_ = {c.path for c in self.coord.expired_writers(now)}
            reason = "lease-expired"
        else:
            wanted = control.parse_identity(value)
            paths_ = {c.path for c in self.coord.claims_of(wanted)}
            reason = f"identity={wanted}"
        await self.commits.reclaim_paths({p for p in paths_ if access.may(p, WRITE)},
                                         caller, reason)
        if self.hosts is not None:  # other hosts' claims too (fuse/hosts.py)
            await self.hosts.reclaim_remote(
                caller, lambda p: access.may(p, WRITE), expired=name == control.RECLAIM_EXPIRED,
                identity=None if name == control.RECLAIM_EXPIRED else wanted)

    async def _commit_txn(self, inode: int, rel: str, value: bytes, caller: Caller,
                          ctx: pyfuse3.RequestContext) -> None:
        """All or nothing (engine/txns.py); the staged files that left the
        staging directory are forgotten by the kernel and by the inode table."""
        control.parse_one(value, control.COMMIT)
        access = self.access(ctx)
        try:
            await self.txns.commit(rel, caller, lambda p: access.may(p, WRITE))
        finally:
            self._forget_staged(rel)

    def _forget_staged(self, root: str) -> None:
        """Entries under the staging directory that no longer exist."""
        for path in self.inodes.paths_under(root):
            if self.backing.exists(path):
                continue
            parent = self.inodes.ino_of(os.path.dirname(path))
            if parent is None:
                continue
            name = os.path.basename(path)
            self.inodes.unlinked(parent, name)
            try:
                pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
            except Exception:  # noqa: BLE001 - a cache hint only
                pass

    async def _snapshot(self, name: str, value: bytes, caller: Caller,
                        ctx: pyfuse3.RequestContext) -> None:
        """Snapshots are the mount's: the caller must be able to write its root."""
        if not self.access(ctx).may("", WRITE):
            raise pyfuse3.FUSEError(errno.EACCES)
        try:
            snap, under = control.parse_snapshot(value)
        except ValueError as e:
            raise BadValue(str(e)) from None
        if name == control.SNAPSHOT_DELETE:
            self.snapshots.delete(snap)
            parent = self.inodes.ino_of(paths.SNAPSHOTS_DIR)
            if parent is not None:  # the kernel may hold the entry for a second
                self.inodes.unlinked(parent, snap)
                pyfuse3.invalidate_entry_async(parent, os.fsencode(snap), ignore_enoent=True)
            self.journaling.record("snapshot-delete", snap, identity=caller.identity,
                                   pid=caller.pid)
            return
        coord = self.coord

        def copied(rel: str) -> bool:  # in-place files: a copy, not a link
            file = coord.get(rel)
            own = file.policy if file is not None else None
            return coord.policy_for(rel, own) == SHARED

        with atomic():  # the cut: one step between commits (G8)
            cut = self.snapshots.cut(snap, under, copy_instead=copied)
        info = await trio.to_thread.run_sync(
            lambda: self.snapshots.finish(cut, durable=self.durable))
        self.journaling.record("snapshot", snap, identity=caller.identity, pid=caller.pid,
                               under=info.under, files=info.files, seconds=round(info.seconds, 4))
        await self.journaling.sync_journal()

    def _set_policy(self, file: FileState, policy: str | None, caller: Caller) -> None:
        """The file's own policy (None: back to the mount's globs and default)."""
        if policy == file.policy:
            return
        self.shared.check_policy_switch(file, policy)  # shared <-> fenced: EBUSY while open
        self.coord.set_policy(file.path, policy, lambda p: self.files.persist_state(
            file, policy=p, keep_policy=False, durable=self.durable))
        self.journaling.record("policy", file.path, identity=caller.identity, pid=caller.pid,
                               policy=policy if policy is not None else "-",
                               effective=self.coord.policy_of(file))

    async def remove(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
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
        paths.refuse_meta(rel)
        self.backing.tree.removexattr(rel, name)
