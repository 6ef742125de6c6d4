"""How the Redis provider reaches its nodes (``unistore.providers.redis.connection`` and
``.topology``), against real servers and clusters: the pool's waiting callers, commands
whose keys a migration has split, redirections that do not settle, a node reached the
wrong way, and a cluster whose nodes do not announce their addresses."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import AskError, ClusterDownError, MasterDownError, MovedError, ResponseError, TryAgainError

from unistore import StorageConnectionError, StorageError, StorageQuery, ValidationError
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import layout
from unistore.providers.redis.connection import NodePool
from unistore.providers.redis.connection import _classified as classified

pytestmark = pytest.mark.redis


@pytest.mark.watchdog(60)
async def test_a_caller_cancelled_while_it_waits_for_a_connection_takes_none_with_it(redis_port: int) -> None:
    provider = RedisStorageProvider({"port": redis_port, "namespace": uuid.uuid4().hex, "max_connections": 1})
    try:
        await provider.save("k", 1, "doc")
        for delay in (0, 0.0005, 0.001, 0.002):  # cancelled while waiting, or just as it is handed one
            loads = [asyncio.ensure_future(provider.load("k")) for _ in range(6)]
            await asyncio.sleep(delay)
            for load in loads[1::2]:
                load.cancel()
            results = await asyncio.gather(*loads, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) or r.data == 1 for r in results), results
        # The one connection is still there for whoever comes next: none was lost to a cancelled waiter.
        assert [item.data for item in await asyncio.gather(*(provider.load("k") for _ in range(20)))] == [1] * 20
    finally:
        await provider.cleanup()


async def test_no_socket_timeout_waits_for_the_answer(redis_port: int) -> None:
    provider = RedisStorageProvider({"port": redis_port, "namespace": uuid.uuid4().hex, "socket_timeout": None})
    try:
        await provider.save("k", 1, "doc")
        assert (await provider.load("k")).data == 1
    finally:
        await provider.cleanup()


@pytest.mark.watchdog(60)
async def test_a_cluster_node_reached_as_one_server_says_how_to_reach_it(shared_cluster: Any) -> None:
    # A key that a node does not serve comes back MOVED: one server would have to follow it.
    namespace = uuid.uuid4().hex
    slot = layout.key_slot(layout.shard_prefix(namespace.encode(), 0, 1))
    port = next(port for port in shared_cluster.ports if port != shared_cluster.owner(slot))
    provider = RedisStorageProvider({"port": port, "namespace": namespace})
    try:
        with pytest.raises(
            StorageError, match=r"node of a Redis Cluster: reach it with a redis\+cluster://"
        ) as refused:
            await provider.load("k")
        assert not isinstance(refused.value, StorageConnectionError)
    finally:
        await provider.cleanup()


@pytest.mark.watchdog(120)
async def test_a_pipeline_whose_keys_a_migration_split_waits_until_they_are_whole(
    cluster_starter: Callable[..., Any],
) -> None:
    cluster = cluster_starter(replicas=0)
    provider = RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{cluster.ports[0]}"], namespace=uuid.uuid4().hex)
    try:
        await provider.save_many({"a": 1, "b": 2}, "doc")
        prefix = layout.shard_prefix(provider.namespace.encode(), 0, 1)
        slot = layout.key_slot(prefix)
        source, target = cluster.open_migration(slot, [layout.record_key(prefix, b"a")])
        connection = await provider._connection()
        # Two commands: one key moved (ASK), one still here: neither node can run both now.
        both = asyncio.ensure_future(
            connection.routed(
                slot, [("GET", layout.record_key(prefix, b"a")), ("GET", layout.record_key(prefix, b"b"))]
            )
        )
        await asyncio.sleep(0.3)
        assert not both.done()
        await asyncio.to_thread(cluster.close_migration, slot, source, target)
        first, second = await both
        assert first is not None and second is not None
    finally:
        await provider.cleanup()


@pytest.mark.watchdog(120)
async def test_redirections_that_do_not_settle_are_waited_out(cluster_starter: Callable[..., Any]) -> None:
    # A migration half set up (the source says ASK, the target was never told to import):
    # the source sends the client to the target, the target sends it back, and so on.
    cluster = cluster_starter(replicas=0)
    ports = cluster.ports
    provider = RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{ports[0]}"], namespace=uuid.uuid4().hex)
    try:
        await provider.save("here", 1, "doc")
        slot = layout.key_slot(layout.shard_prefix(provider.namespace.encode(), 0, 1))
        source = cluster.owner(slot)
        target = ports[(ports.index(source) + 1) % 3]
        cluster.cli("-p", str(source), "cluster", "setslot", str(slot), "migrating", cluster.node_id(target))
        fixed = threading.Timer(0.5, cluster.cli, ("-p", str(source), "cluster", "setslot", str(slot), "stable"))
        fixed.start()
        started = time.monotonic()
        with pytest.raises(KeyError):  # a key the source lacks: ASK, MOVED, ASK, ... until it is put right
            await provider.load("missing")
        assert time.monotonic() - started >= 0.4
        fixed.join()
        assert (await provider.load("here")).data == 1
    finally:
        await provider.cleanup()


@pytest.mark.watchdog(120)
async def test_a_cluster_whose_nodes_do_not_announce_an_address(cluster_starter: Callable[..., Any]) -> None:
    # With cluster-preferred-endpoint-type unknown-endpoint, CLUSTER SLOTS gives every node an
    # empty endpoint: a client reaches them on the host it asked.
    ports = cluster_starter(replicas=0, options=("--cluster-preferred-endpoint-type", "unknown-endpoint")).ports
    slots = await asyncio.to_thread(
        subprocess.run,
        ["redis-cli", "-p", str(ports[0]), "cluster", "slots"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert slots.stdout.splitlines()[2] == ""  # start, end, then the master's endpoint: none
    provider = RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{ports[0]}"], namespace=uuid.uuid4().hex, shards=3)
    try:
        await provider.save_many({f"k{n}": n for n in range(30)}, "doc")
        assert len([r async for r in provider.search(StorageQuery())]) == 30
    finally:
        await provider.cleanup()


async def test_a_connection_handed_to_a_waiter_that_was_cancelled_meanwhile_goes_to_the_next() -> None:
    # The race the pool guards against: a connection given back is handed to the first
    # waiter, which is cancelled before it runs again: the connection must not go with it.
    pool = NodePool(lambda: Connection(host="127.0.0.1", port=1), 1)  # (never connected here)
    held = await pool.acquire()
    first = asyncio.ensure_future(pool.acquire())
    second = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)  # both wait
    pool.release(held)  # handed to the first ...
    first.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second is held


def test_error_replies_are_classified_whatever_redis_py_parsed() -> None:
    # redis-py 5 parses MOVED, ASK, TRYAGAIN, CLUSTERDOWN and MASTERDOWN only on its cluster
    # client's connections: elsewhere they arrive as a plain ResponseError.
    moved = classified(ResponseError("MOVED 12 127.0.0.1:7000"))
    assert isinstance(moved, MovedError) and (moved.slot_id, moved.host, moved.port) == (12, "127.0.0.1", 7000)
    assert isinstance(classified(ResponseError("ASK 12 127.0.0.1:7001")), AskError)
    assert isinstance(classified(ResponseError("TRYAGAIN Multiple keys request during rehashing")), TryAgainError)
    assert isinstance(classified(ResponseError("CLUSTERDOWN The cluster is down")), ClusterDownError)
    assert isinstance(classified(ResponseError("MASTERDOWN Link with MASTER is down")), MasterDownError)
    other = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    assert classified(other) is other
    already = MovedError("12 127.0.0.1:7000")  # as redis-py 8 parses it
    assert classified(already) is already


@pytest.mark.parametrize("url", ["redis://h:notaport/0", "redis://h/0?db=x", "redis://[bad"])
def test_a_settings_url_that_does_not_parse_is_refused_before_anything_connects(url: str) -> None:
    with pytest.raises(ValidationError, match="a Redis URL that does not parse"):
        RedisStorageProvider({"url": url, "namespace": "x"})
