"""Unlinked files, deleted off the request path.

On ext4, unlinking a file that was fsynced a moment ago (every file a
durable commit made) takes from 0.1 to over 1 ms: the filesystem frees its
blocks in the same call. Renaming it into ``.fencefs/trash/`` takes a few
tens of microseconds and removes the name from the mount just as atomically;
a background thread then unlinks what is in the trash, so the space comes
back within moments and the event loop never waits for it. Whatever a crash
leaves in the trash is deleted at the next mount (``empty``).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading

from fencefs.store.paths import Tree

log = logging.getLogger("fencefs.store")


class Trash:
    def __init__(self, tree: Tree, path: str) -> None:
        self.tree = tree
        self.path = path
        os.makedirs(path, mode=0o700, exist_ok=True)
        self.dir_fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._seq = itertools.count(1)
        self._queue: list[str] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def put(self, rel: str) -> None:
        """Take ``rel`` out of the tree at once (one rename); delete it soon."""
        name = f"{os.getpid()}-{next(self._seq)}"
        with self.tree.parent(rel) as (fd, last):
            os.rename(last, name, src_dir_fd=fd, dst_dir_fd=self.dir_fd)
        self._queue_name(name)

    def keep(self, rel: str) -> None:
        """Before a rename replaces the file at ``rel``: a second link to it
        in the trash, so that the rename frees nothing (the blocks go with
        the trash's link, off the request path). Best effort: without the
        link the rename frees the file itself, as it would anyway."""
        name = f"{os.getpid()}-{next(self._seq)}"
        try:
            with self.tree.parent(rel) as (fd, last):
                os.link(last, name, src_dir_fd=fd, dst_dir_fd=self.dir_fd,
                        follow_symlinks=False)
        except OSError:
            return
        self._queue_name(name)

    def _queue_name(self, name: str) -> None:
        with self._wake:
            self._queue.append(name)
            self._wake.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fencefs-trash",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                batch, self._queue = self._queue, []
            for name in batch:
                self._delete(name)

    def _delete(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        except OSError as e:  # left for the next mount's empty()
            log.warning("could not delete %s from the trash: %s", name, e)

    def empty(self) -> int:
        """Delete everything in the trash (at mount: a crash's leftovers)."""
        names = os.listdir(self.path)
        for name in names:
            self._delete(name)
        return len(names)

    def drain(self) -> None:
        """Delete what is queued now, in the calling thread (tests, unmount)."""
        with self._wake:
            batch, self._queue = self._queue, []
        for name in batch:
            self._delete(name)
