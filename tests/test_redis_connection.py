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
import redis

from unistore import StorageConnectionError, StorageError, StorageQuery
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import layout

pytestmark = pytest.mark.redis


def _cli(port: int, *arguments: str) -> None:
    subprocess.run(["redis-cli", "-p", str(port), *arguments], check=True, capture_output=True, timeout=30)


def _node_id(port: int) -> str:
    with redis.Redis(port=port) as client:
        return str(client.execute_command("CLUSTER", "MYID").decode())


def _owner(ports: list[int], slot: int) -> int:
    with redis.Redis(port=ports[0]) as client:
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    raise AssertionError(slot)


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
async def test_a_cluster_node_reached_as_one_server_says_how_to_reach_it(redis_cluster: list[int]) -> None:
    # A key that a node does not serve comes back MOVED: one server would have to follow it.
    namespace = uuid.uuid4().hex
    slot = layout.key_slot(layout.shard_prefix(namespace.encode(), 0, 1))
    port = next(port for port in redis_cluster if port != _owner(redis_cluster, slot))
    provider = RedisStorageProvider({"port": port, "namespace": namespace})
    try:
        with pytest.raises(
            StorageError, match=r"node of a Redis Cluster: reach it with a redis\+cluster://"
        ) as refused:
            await provider.load("k")
        assert not isinstance(refused.value, StorageConnectionError)
    finally:
        await provider.cleanup()


def _open_migration(source: int, target: int, slot: int) -> None:
    _cli(target, "cluster", "setslot", str(slot), "importing", _node_id(source))
    _cli(source, "cluster", "setslot", str(slot), "migrating", _node_id(target))


def _close_migration(ports: list[int], slot: int, source: int, target: int) -> None:
    with redis.Redis(port=source) as client:
        while keys := client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            client.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    for port in ports:
        _cli(port, "cluster", "setslot", str(slot), "node", _node_id(target))


@pytest.mark.watchdog(120)
async def test_a_pipeline_whose_keys_a_migration_split_waits_until_they_are_whole(
    cluster_starter: Callable[..., Any],
) -> None:
    ports = cluster_starter(replicas=0).ports
    provider = RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{ports[0]}"], namespace=uuid.uuid4().hex)
    try:
        await provider.save_many({"a": 1, "b": 2}, "doc")
        prefix = layout.shard_prefix(provider.namespace.encode(), 0, 1)
        slot = layout.key_slot(prefix)
        source = _owner(ports, slot)
        target = ports[(ports.index(source) + 1) % 3]
        _open_migration(source, target, slot)
        with redis.Redis(port=source) as client:
            client.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", layout.record_key(prefix, b"a"))
        connection = await provider._connection()
        # Two commands: one key moved (ASK), one still here: neither node can run both now.
        both = asyncio.ensure_future(
            connection.routed(
                slot, [("GET", layout.record_key(prefix, b"a")), ("GET", layout.record_key(prefix, b"b"))]
            )
        )
        await asyncio.sleep(0.3)
        assert not both.done()
        await asyncio.to_thread(_close_migration, ports, slot, source, target)
        first, second = await both
        assert first is not None and second is not None
    finally:
        await provider.cleanup()


@pytest.mark.watchdog(120)
async def test_redirections_that_do_not_settle_are_waited_out(cluster_starter: Callable[..., Any]) -> None:
    # A migration half set up (the source says ASK, the target was never told to import):
    # the source sends the client to the target, the target sends it back, and so on.
    ports = cluster_starter(replicas=0).ports
    provider = RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{ports[0]}"], namespace=uuid.uuid4().hex)
    try:
        await provider.save("here", 1, "doc")
        prefix = layout.shard_prefix(provider.namespace.encode(), 0, 1)
        slot = layout.key_slot(prefix)
        source = _owner(ports, slot)
        target = ports[(ports.index(source) + 1) % 3]
        _cli(source, "cluster", "setslot", str(slot), "migrating", _node_id(target))
        fixed = threading.Timer(0.5, _cli, (source, "cluster", "setslot", str(slot), "stable"))
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
