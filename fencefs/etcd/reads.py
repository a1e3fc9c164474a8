"""Concurrent reads of one host, gathered into one etcd transaction.

Every write open reads its file from etcd (``EtcdCoordination.refresh``):
under contention (several writers of one host opening at once, each retry
an open) these reads were most of a host's etcd requests, and each costs a
round trip and CPU in the daemon and in every etcd member. ``Reads`` sends
at most one read transaction at a time per host; the opens that arrive
while it is in flight wait together for the next one, which reads all their
paths (each path once) in one transaction.

Still linearizable for each caller: a caller's read is sent only after the
caller arrived (a batch is closed the moment it is sent; later arrivals go
to the next), so it reflects every commit acknowledged before the open
began, exactly as a read of its own would. One transaction is one etcd
revision: the views of one batch are mutually consistent too.
"""

from __future__ import annotations

import trio

from fencefs.etcd import coordination as co
from fencefs.etcd.client import EtcdClient, Op
from fencefs.etcd.keys import Layout

# etcd refuses a transaction of more than --max-txn-ops operations (default
# 128); a read is co.READ_OPS operations (read_ops)
MAX_PATHS = 128 // co.READ_OPS


class _Abandoned(Exception):
    """The batch's leader was cancelled before it had an answer."""


class _Batch:
    def __init__(self, path: str) -> None:
        self.paths = [path]
        self.views: dict[str, co.View] = {}
        self.error: BaseException | None = None
        self.done = trio.Event()

    def room_for(self, path: str) -> bool:
        return path in self.paths or len(self.paths) < MAX_PATHS


class Reads:
    """``read(path)`` as ``coordination.read``, batched (module docstring)."""

    def __init__(self, client: EtcdClient, layout: Layout) -> None:
        self.client = client
        self.layout = layout
        self._flying: _Batch | None = None    # sent, not answered yet
        self._next: _Batch | None = None      # gathering, sent once _flying is answered
        self.sent = 0                         # read transactions sent
        self.served = 0                       # reads answered

    async def read(self, path: str) -> co.View:
        while True:
            nxt = self._next
            if nxt is not None and nxt.room_for(path):
                if path not in nxt.paths:
                    nxt.paths.append(path)
                await nxt.done.wait()
                batch = nxt
            elif nxt is not None:     # the gathering batch is full: a read of its own
                return await co.read(self.client, self.layout, path)
            else:
                batch = _Batch(path)
                if self._flying is not None:
                    self._next = batch
                await self._lead(batch)
            if batch.error is None:
                self.served += 1
                return batch.views[path]
            if not isinstance(batch.error, _Abandoned):
                raise batch.error
            # its leader was interrupted: read again

    async def _lead(self, batch: _Batch) -> None:
        """Send ``batch`` once no other is in flight; answer its readers."""
        try:
            while self._flying is not None:
                await self._flying.done.wait()
            if self._next is batch:
                self._next = None     # closed: later arrivals gather the next one
            self._flying = batch
            ops: list[Op] = []
            for p in batch.paths:
                ops.extend(co.read_ops(self.layout, p))
            self.sent += 1
            res = await self.client.txn([], ops)
            for i, p in enumerate(batch.paths):
                batch.views[p] = co.view_from(p, co.slice_of(res.results, i), res.revision)
        except Exception as e:
            batch.error = e
        except BaseException:
            batch.error = _Abandoned()
            raise
        finally:
            if self._next is batch:
                self._next = None
            if self._flying is batch:
                self._flying = None
            batch.done.set()
