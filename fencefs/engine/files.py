"""The life of a file's coordination state on this host.

``FileTable.file`` is how every request gets a regular file's state: from
coordination if it is known, else adopted from what the store persisted with
the file (or from a tombstone, for a path unlinked and created again). On
the way it notices foreign writes (content changed behind fencefs's back)
and adopts them as a new version (journaled as ``foreign``).

What this table keeps besides coordination state is host-local cache, which
a distributed coordination may drop without losing a guarantee:

- fingerprints: the (inode, size, mtime) fencefs itself last produced per
  path, so that a change it did not make is seen as foreign;
- tombstones: version, epoch and observations of recently unlinked paths,
  so a recreated file continues them (capped: beyond the cap a recreated
  file starts over from what its backing file says);
- the warm set: the most recently used paths; the state of a colder file
  that nothing rests on is forgotten (it is persisted with the file and
  re-read, one xattr, when next used).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable

from fencefs.core import Claim, FileState, Persisted
from fencefs.engine.coordination import Coordination
from fencefs.engine.handles import HandleTable
from fencefs.engine.journaling import Journaling
from fencefs.store.backing import Backing, Fingerprint

log = logging.getLogger("fencefs.engine")

# Unlinked paths remembered (see bury).
TOMBSTONES = 10_000

# Tells the kernel a path's content changed (drop cached attributes); the
# FUSE layer provides it, the engine never imports pyfuse3.
ContentChanged = Callable[[str, int | None], None]


class FileTable:
    def __init__(self, coord: Coordination, backing: Backing, journaling: Journaling,
                 handles: HandleTable, *, warm_files: int = 8192) -> None:
        self.coord = coord
        self.backing = backing
        self.journaling = journaling
        self.handles = handles
        self.fingerprints: dict[str, Fingerprint] = {}
        self.tombstones: dict[str, tuple[int, int, list[Claim]]] = {}
        self.warm: OrderedDict[str, None] = OrderedDict()
        self.warm_files = max(1, warm_files)
        self.content_changed: ContentChanged = lambda path, ino: None
        # Tells the kernel a name appeared or went away behind its back (a
        # multi-file commit's install): it must drop a cached (negative) entry.
        self.entry_changed: Callable[[str], None] = lambda path: None
        # The version a path with no state and no tombstone continues from
        # (its history's, see engine/history.py).
        self.floor: Callable[[str], int] = lambda path: 0
        # Across hosts (--etcd): a new content whose state attribute matches
        # it was installed by fencefs on another host, not written foreign.
        self.peers = False

    def file(self, rel: str, st: os.stat_result) -> FileState:
        """The coordination state of a regular file, noticing foreign writes."""
        fp = Fingerprint.of(st)
        coord = self.coord
        file = coord.get(rel)
        if file is None:
            persisted, saved = self.backing.read_state(rel)
            tomb = self.tombstones.pop(rel, None)
            if tomb is not None and saved is None:
                persisted = Persisted(tomb[0], tomb[1])
            elif saved is None and persisted.version == 0:
                persisted = Persisted(self.floor(rel), persisted.epoch, persisted.policy)
            file = coord.adopt(rel, persisted)
            if tomb is not None and saved is None:
                for seen in tomb[2]:
                    coord.observe(rel, seen.identity, seen.pid, seen.version, seen.epoch)
                # The tombstone is in memory only: the new file carries the
                # path's version and epoch, so a restart does not lose them.
                try:
                    self.persist_state(file, durable=False)
                    fp = self.fingerprints[rel]
                except OSError as e:
                    log.warning("could not persist the state of re-created %s: %s", rel, e)
            if saved is not None and saved != fp:
                self._adopt_foreign(file, fp)
            self.fingerprints[rel] = fp
        elif self.fingerprints.get(rel) != fp and not self.handles.writing_in_place(file):
            if not (self.peers and self._adopt_peer(file, fp)):
                self._adopt_foreign(file, fp)
            self.fingerprints[rel] = fp
        self._keep_warm(rel)
        return file

    def _keep_warm(self, rel: str) -> None:
        """Memory follows the working set, not the number of files."""
        warm = self.warm
        warm[rel] = None
        warm.move_to_end(rel)
        if len(warm) > self.warm_files:
            coldest, _ = warm.popitem(last=False)
            file = self.coord.get(coldest)
            if file is not None and self.handles.pins(file):
                return  # a shared handle holds this very state object
            self.forget(coldest)

    def forget(self, path: str) -> None:
        """Drop a path's state if nothing rests on it (the kernel forgot it,
        or it went cold): everything it held is persisted with the file."""
        if self.coord.forget(path):
            self.fingerprints.pop(path, None)

    def persist_state(self, file: FileState, *, version: int | None = None,
                      epoch: int | None = None, policy: str | None = None,
                      keep_policy: bool = True, durable: bool) -> None:
        """Write a file's state onto its backing file (content unchanged) and
        remember the fingerprint that goes with it."""
        state = Persisted(file.version if version is None else version,
                          file.epoch if epoch is None else epoch,
                          file.policy if keep_policy else policy)
        self.fingerprints[file.path] = self.backing.write_state(
            file.path, state, durable=durable)

    def epoch_persister(self, file: FileState) -> Callable[[int], None]:
        # Always fsynced, whatever --durability says: epochs never go down.
        return lambda epoch: self.persist_state(file, epoch=epoch, durable=True)

    def _adopt_foreign(self, file: FileState, fp: Fingerprint) -> None:
        old = file.version

        def persist(version: int, epoch: int) -> None:
            try:
                self.persist_state(file, version=version, durable=False)
            except OSError as e:  # e.g. the file vanished again: adopt in memory
                log.warning("could not persist foreign write on %s: %s", file.path, e)

        new = self.coord.adopt_foreign(file.path, persist)
        self.journaling.record("foreign", file.path, version=old, new_version=new,
                               epoch=file.epoch, size=fp.size)
        self.content_changed(file.path, None)

    def _adopt_peer(self, file: FileState, fp: Fingerprint) -> bool:
        """Another host committed this content (its state attribute names
        this very content, at a version not older than ours): take its
        version and epoch, journal nothing (that host journaled it)."""
        try:
            persisted, saved = self.backing.read_state(file.path)
        except OSError:
            return False
        if saved != fp or persisted.version < file.version:
            return False
        file.version = persisted.version
        file.epoch = max(file.epoch, persisted.epoch)
        self.content_changed(file.path, None)
        return True

    def refresh_fingerprint(self, rel: str) -> None:
        """Our own metadata change moved the mtime: not a foreign write."""
        file = self.coord.get(rel)
        if file is not None and self.backing.is_regular(rel):
            self.persist_state(file, durable=False)

    def bury(self, rel: str) -> None:
        """``rel`` was unlinked: remember its version, epoch and observations
        (claims belong to the path: a recreated file continues them)."""
        gone = self.coord.removed(rel)
        if gone is not None:
            self.tombstones[rel] = (gone.version, gone.epoch, list(gone.readers.values()))
            if len(self.tombstones) > TOMBSTONES:
                del self.tombstones[next(iter(self.tombstones))]  # the oldest
        self.fingerprints.pop(rel, None)

    def moved(self, old: str, new: str) -> None:
        """A rename not over a regular file: state and fingerprints follow."""
        self.coord.moved(old, new)
        for path in [p for p in self.fingerprints if p == old or p.startswith(old + "/")]:
            self.fingerprints[new + path[len(old):]] = self.fingerprints.pop(path)
