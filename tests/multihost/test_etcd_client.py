"""fencefs.etcd.client against a real 3-member etcd (tests/multihost/conftest.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio

from fencefs.etcd.client import (
    EtcdClient,
    EtcdRefused,
    EtcdUnreachable,
    Get,
    LeaseNotFound,
    Put,
    absent,
    lease_is,
    mod_is,
    parse_urls,
    prefix_end,
    value_is,
    version_is,
)
from fencefs.etcd.localcluster import LocalCluster, free_ports


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A URL whose server accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_ports(1)[0]}"


async def test_put_get_range_with_binary_keys(etcd: LocalCluster, prefix: bytes) -> None:
    async with EtcdClient(etcd.urls) as c:
        k1, k2 = prefix + b"a\0\xff", prefix + b"b"
        await c.put(k1, b"\x00\x01value")
        rev = await c.put(k2, b"2")
        kv = await c.get(k1)
        assert kv is not None and kv.value == b"\x00\x01value" and kv.version == 1
        kvs, header = await c.range(prefix, prefix=True)
        assert [k.key for k in kvs] == [k1, k2] and header >= rev
        assert await c.get(prefix + b"missing") is None
        assert await c.delete(prefix, prefix=True) == 2
        assert (await c.range(prefix, prefix=True))[0] == []


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"


async def test_txn_compares_value_mod_version_lease(etcd: LocalCluster, prefix: bytes) -> None:
    k = prefix + b"k"
    async with EtcdClient(etcd.urls) as c:
        r = await c.txn([absent(k)], [Put(k, b"v1")], [Get(k)])
        assert r.succeeded
        kv = await c.get(k)
        assert kv is not None
        r = await c.txn([absent(k)], [Put(k, b"no")], [Get(k)])
        assert not r.succeeded and r.results[0][0].value == b"v1"
        assert (await c.txn([value_is(k, b"v1")], [Put(k, b"v2")])).succeeded
        assert not (await c.txn([value_is(k, b"v1")], [Put(k, b"v3")])).succeeded
        assert not (await c.txn([mod_is(k, kv.mod_revision)], [Put(k, b"v3")])).succeeded
        assert (await c.txn([version_is(k, 2)], [Put(k, b"v3")])).succeeded
        lease, _ = await c.lease_grant(30)
        await c.put(k, b"leased", lease)
        assert (await c.txn([lease_is(k, lease)], [Get(k)])).succeeded
        assert not (await c.txn([lease_is(k, lease + 1)], [Get(k)])).succeeded
        await c.lease_revoke(lease)
        assert await c.get(k) is None


async def test_eight_racers_one_winner(etcd: LocalCluster, prefix: bytes) -> None:
    k = prefix + b"counter"
    async with EtcdClient(etcd.urls) as c:
        rev = await c.put(k, b"0")
        wins: list[int] = []

        async def racer(n: int) -> None:
            r = await c.txn([mod_is(k, rev)], [Put(k, str(n).encode())], [Get(k)])
            if r.succeeded:
                wins.append(n)
            else:
                assert r.results[0][0].mod_revision > rev

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(racer, n)
        assert len(wins) == 1
        kv = await c.get(k)
        assert kv is not None and kv.value == str(wins[0]).encode()


async def test_lease_keepalive_expiry_and_revoke(etcd: LocalCluster, prefix: bytes) -> None:
    async with EtcdClient(etcd.urls) as c:
        lease, ttl = await c.lease_grant(2)
        assert ttl == 2
        await c.put(prefix + b"claim", b"x", lease)
        assert await c.lease_keepalive(lease) == 2
        # no more keepalives: etcd deletes the key when the lease runs out
        with trio.fail_after(15):
            while await c.get(prefix + b"claim") is not None:
                await trio.sleep(0.1)
        assert await c.lease_ttl(lease) == -1
        with pytest.raises(LeaseNotFound):
            await c.lease_keepalive(lease)
        with pytest.raises(LeaseNotFound):
            await c.put(prefix + b"other", b"x", lease)


async def test_refused_is_not_unreachable(etcd: LocalCluster) -> None:
    async with EtcdClient(etcd.urls) as c:
        with pytest.raises(EtcdRefused) as info:
            await c.range(b"")          # etcd: key is not provided
        assert not isinstance(info.value, EtcdUnreachable)
        assert info.value.code == 3     # INVALID_ARGUMENT


async def test_fails_over_past_dead_members(etcd: LocalCluster, prefix: bytes) -> None:
    async with EtcdClient([dead_url(), dead_url(), *etcd.urls]) as c:
        await c.put(prefix + b"k", b"v")
        assert c.urls[c._preferred] in etcd.urls


async def test_all_members_refusing_is_unreachable_and_not_ambiguous() -> None:
    async with EtcdClient([dead_url(), dead_url(), dead_url()], timeout=5) as c:
        start = trio.current_time()
        with pytest.raises(EtcdUnreachable) as info:
            await c.put(b"/k", b"v")
        assert info.value.ambiguous is False
        assert trio.current_time() - start < 4   # refused everywhere: no waiting it out


async def test_silent_member_is_ambiguous(silent_url: str) -> None:
    async with EtcdClient([silent_url], timeout=1.0, request_timeout=0.3) as c:
        with pytest.raises(EtcdUnreachable) as info:
            await c.put(b"/k", b"v")
        assert info.value.ambiguous is True


def test_parse_urls() -> None:
    assert parse_urls("http://127.0.0.1:2379, https://h:1/") == [
        "http://127.0.0.1:2379", "https://h:1"]
    for bad in ("", "127.0.0.1:2379", "http://h", "http://h:2379,", "ftp://h:1",
                "http://h:99999", "http://h:1/path", ",http://h:1"):
        with pytest.raises(ValueError):
            parse_urls(bad)


async def test_leader_killed_write_resumes(own_etcd: LocalCluster, prefix: bytes) -> None:
    """SIGKILL the leader: the next write waits out the election and succeeds."""
    import signal

    async with EtcdClient(own_etcd.urls, timeout=15) as c:
        await c.put(prefix + b"k", b"before")
        leader = own_etcd.leader()
        assert leader is not None
        own_etcd.stop_member(leader, signal.SIGKILL)
        start = trio.current_time()
        await c.put(prefix + b"k", b"after")
        gap = trio.current_time() - start
        kv = await c.get(prefix + b"k")
        assert kv is not None and kv.value == b"after"
        print(f"write after leader kill took {gap:.2f} s")
        own_etcd.start_member(leader)
        assert own_etcd.healthy(leader)


async def test_prefer_leader_finds_the_leader_past_a_dead_member(etcd: LocalCluster,
                                                                 prefix: bytes) -> None:
    leader = etcd.leader()
    assert leader is not None
    async with EtcdClient([dead_url(), *etcd.urls]) as c:
        assert await c.prefer_leader() == leader + 1
        await c.put(prefix + b"k", b"v")          # sent to the leader first
        assert c._preferred == leader + 1
    async with EtcdClient([dead_url()]) as c:     # nobody answers: no preference, no error
        assert await c.prefer_leader() is None


async def test_large_reply_over_kept_alive_connection(etcd: LocalCluster, prefix: bytes) -> None:
    """A range reply of about a megabyte (etcd sends it chunked), then more
    requests on the same connection."""
    async with EtcdClient(etcd.urls) as c:
        value = bytes(range(256)) * 16                     # 4 KiB, binary
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(c.put, prefix + b"%04d" % i, value)
        kvs, _ = await c.range(prefix, prefix=True)
        assert len(kvs) == 200 and all(kv.value == value for kv in kvs)
        assert [kv.key for kv in kvs] == [prefix + b"%04d" % i for i in range(200)]
        assert (await c.get(prefix + b"0007")) is not None
