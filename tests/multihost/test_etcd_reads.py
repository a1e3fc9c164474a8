"""fencefs.etcd.reads: the write opens' reads of one host, batched, against
a real etcd. A read gathered into a batch must still reflect every commit
acknowledged before it began (it is sent after its caller arrived)."""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.testing

from fencefs.etcd.client import Compare, EtcdClient, Op, TxnResult
from fencefs.etcd.keys import Layout, Record
from fencefs.etcd.localcluster import LocalCluster
from fencefs.etcd.reads import Reads


class HeldClient(EtcdClient):
    """Holds the answer of its first transaction until ``release`` is set:
    that read stays in flight after etcd answered it."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(urls)
        self.answered = trio.Event()
        self.release = trio.Event()
        self.calls = 0

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op] = (),
                  failure: Sequence[Op] = ()) -> TxnResult:
        self.calls += 1
        res = await super().txn(compares, success, failure)
        if self.calls == 1:
            self.answered.set()
            await self.release.wait()
        return res


async def test_read_that_arrives_during_a_flight_sees_what_was_committed_before_it(
        etcd: LocalCluster, prefix: bytes) -> None:
    layout = Layout(prefix.strip(b"/").decode())
    async with HeldClient(etcd.urls) as client:
        await client.put(layout.file("f"), Record(1, 0, content="one").to_bytes())
        reads = Reads(client, layout)
        got: dict[str, Record | None] = {}

        async def read(name: str) -> None:
            got[name] = (await reads.read("f")).record

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, "before")
            await client.answered.wait()             # in flight, answered v1
            await client.put(layout.file("f"), Record(2, 0, content="two").to_bytes())
            nursery.start_soon(read, "after")        # began after v2 was acknowledged
            await trio.testing.wait_all_tasks_blocked()
            client.release.set()
        assert got["before"] is not None and got["before"].content == "one"
        assert got["after"] is not None and got["after"].content == "two"
        assert reads.sent == 2


async def test_concurrent_reads_share_transactions(etcd: LocalCluster, prefix: bytes) -> None:
    layout = Layout(prefix.strip(b"/").decode())
    async with EtcdClient(etcd.urls) as client:
        for i in range(5):
            await client.put(layout.file(f"f{i}"), Record(i + 1, 0, content=f"c{i}").to_bytes())
            await client.put(layout.epoch(f"f{i}"), str(i).encode())
        reads = Reads(client, layout)
        views: list[tuple[int, int, int, str]] = []

        async def read(i: int) -> None:
            v = await reads.read(f"f{i}")
            assert v.record is not None
            views.append((i, v.version, v.epoch, v.record.content))

        async with trio.open_nursery() as nursery:
            for k in range(40):
                nursery.start_soon(read, k % 5)
        assert sorted(views) == sorted((k % 5, k % 5 + 1, k % 5, f"c{k % 5}")
                                       for k in range(40))
        assert reads.served == 40 and reads.sent < 40
