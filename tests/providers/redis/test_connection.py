"""How the Redis provider reaches its nodes (``unistore.providers.redis.connection`` and
``.topology``), against real servers and clusters: the pool's waiting callers, commands
whose keys a migration has split, redirections that do not settle, a node reached the
wrong way, and a cluster whose nodes do not announce their addresses."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.asyncio.connection import Connection
from redis.exceptions import AskError, ClusterDownError, MasterDownError, MovedError, ResponseError, TryAgainError

from helpers import fresh_namespace
from unistore import (
    StorageConnectionError,
    StorageError,
    StorageQuery,
    ValidationError,
)
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import layout
from unistore.providers.redis.connection import _classified as classified
from unistore.providers.redis.pool import NodePool

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


@pytest.mark.redis
async def test_a_provider_whose_first_check_keeps_failing_keeps_no_connection_behind(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    # Every operation after a failed first check made a new connection and kept the old one
    # (and its slot map) for ever: 500 refused loads held 68 MB.
    from unistore.providers.redis.connection import Connection

    namespace = fresh_namespace()
    counted = RedisStorageProvider(port=redis_port, namespace=namespace, shards=3)
    made.append(counted)
    await counted.save("k", 1, "doc")
    refused = RedisStorageProvider(port=redis_port, namespace=namespace, shards=2)
    made.append(refused)
    for _ in range(50):
        with pytest.raises(ValidationError, match="split over 3 shards"):
            await refused.load("k")
    gc.collect()
    assert len(refused._closers) <= 1
    assert sum(isinstance(thing, Connection) for thing in gc.get_objects()) <= 3  # counted's, refused's last, slack


@pytest.mark.redis
async def test_every_operation_reconnects_after_the_server_closed_idle_connections(
    tmp_path: Any, redis_starter: Any
) -> None:
    # check() sent INFO on a pooled connection that the server had closed (--timeout), and
    # failed with "Connection closed by server" where every other operation reconnected.
    process, port = redis_starter(tmp_path, None, "--timeout", "1")
    provider = RedisStorageProvider(port=port, namespace=fresh_namespace())
    try:
        await provider.save("k", 1, "doc")
        for operation in (provider.check, provider.usage, provider.namespaces, lambda: provider.load("k")):
            await asyncio.sleep(2.2)  # the server closes connections idle for a second
            await operation()
    finally:
        await provider.cleanup()
        process.kill()
        process.wait()


@pytest.fixture
def admin(redis_port: int) -> Iterator[redis.Redis]:
    with redis.Redis(port=redis_port) as client:
        yield client
        client.client_unpause()


def _connected(admin: redis.Redis) -> int:
    return int(admin.info("clients")["connected_clients"]) - 1  # less the admin's own


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (polling the loop) until ``condition()`` holds, 10 s at most."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


def _under_way(provider: RedisStorageProvider) -> Callable[[], bool]:
    """Whether a step of this loop's connection is under way (a command sent, not yet answered)."""
    return lambda: any(connection.busy for connection in provider._connections.values())


@pytest.mark.watchdog(120)
async def test_a_second_cleanup_returns_only_once_the_first_has_closed(redis_port: int, admin: redis.Redis) -> None:
    # The first cleanup pops the connection, so a second found none and returned at once,
    # the connection still open (a shutdown path that awaits its own cleanup then leaks).
    before = _connected(admin)
    provider = RedisStorageProvider({"port": redis_port, "namespace": uuid.uuid4().hex})
    await provider.save("k", 1, "t")
    admin.client_pause(400, all=False)  # writes wait: the save below is under way meanwhile
    saving = asyncio.ensure_future(provider.save("k", 2, "t"))
    await _until(_under_way(provider))
    [connection] = provider._connections.values()
    first = asyncio.ensure_future(provider.cleanup())
    await _until(lambda: connection.closed)  # the first cleanup has begun, and waits for the save
    await provider.cleanup()  # a second cleanup (another task's, say) while the first waits
    assert _connected(admin) == before, "the second cleanup() returned with the connection still open"
    await first
    assert (await saving).data == 2
    gc.collect()


@pytest.mark.watchdog(120)
async def test_a_cleanup_during_the_first_check_leaves_nothing_open(redis_port: int, admin: redis.Redis) -> None:
    before = _connected(admin)
    provider = RedisStorageProvider({"port": redis_port, "namespace": uuid.uuid4().hex})
    # The first check (it reads the shard count and the maxmemory policy) ran outside any
    # step: a cleanup meanwhile closed the client under it, and redis-py's retry reopened a
    # connection that nothing closed.
    admin.client_pause(400, all=True)  # every command waits: the first check's GET is under way
    loading = asyncio.ensure_future(provider.load("k"))
    await _until(_under_way(provider))
    await provider.cleanup()
    [outcome] = await asyncio.gather(loading, return_exceptions=True)  # it ends once the pause does
    assert "closed (cleanup) during this operation" in str(outcome), repr(outcome)
    gc.collect()  # an unclosed connection warns when collected (an error in this suite)
    assert _connected(admin) == before


@pytest.mark.watchdog(120)
async def test_a_cleanup_given_up_while_a_command_is_under_way_leaves_nothing_open(
    redis_port: int, admin: redis.Redis
) -> None:
    # A cleanup cancelled (here by wait_for's timeout, as a caller bounding its shutdown
    # would) closed the client under the command still under way: redis-py retried it on
    # a new connection of the closed client, which nothing closed (the leak 5c6c396 fixed).
    before = _connected(admin)
    provider = RedisStorageProvider({"port": redis_port, "namespace": uuid.uuid4().hex})
    await provider.save("k", 1, "t")
    admin.client_pause(400, all=False)
    saving = asyncio.ensure_future(provider.save("k", 2, "t"))
    await _until(_under_way(provider))
    with pytest.raises(asyncio.TimeoutError):  # (the builtin TimeoutError from Python 3.11)
        await asyncio.wait_for(provider.cleanup(), 0.1)
    await asyncio.gather(saving, return_exceptions=True)  # it ends once the pause does
    await provider.cleanup()  # and any close still under way with it
    gc.collect()  # an unclosed connection warns when collected (an error in this suite)
    assert _connected(admin) == before
    assert (await provider.load("k")).data == 2  # the save landed
    await provider.cleanup()


@pytest.mark.watchdog(120)
async def test_one_provider_in_two_threads_each_with_its_loop_cleans_up_its_own(
    redis_port: int, admin: redis.Redis
) -> None:
    # Kept: a provider shared by two threads (an event loop each) keeps a connection per
    # loop; each thread's cleanup closes its own, never the other's, with steps under way.
    before = _connected(admin)
    provider = RedisStorageProvider({"port": redis_port, "namespace": uuid.uuid4().hex, "shards": 2})
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    async def work(number: int) -> None:
        await provider.save_many({f"t{number}-{n}": n for n in range(200)}, "t")
        barrier.wait(10)  # both loops hold a connection now
        keys = [f"t{number}-{n}" for n in range(200)]
        loads = [asyncio.ensure_future(provider.load_many(keys)) for _ in range(20)]
        await asyncio.sleep(0)
        await provider.cleanup()  # this loop's only
        for outcome in await asyncio.gather(*loads, return_exceptions=True):
            if isinstance(outcome, StorageError):
                assert "closed (cleanup) during this operation" in str(outcome)
            else:
                assert isinstance(outcome, dict) and len(outcome) == 200, repr(outcome)
        assert len(await provider.load_many([f"t{1 - number}-{n}" for n in range(200)])) == 200
        await provider.cleanup()

    def run(number: int) -> None:
        try:
            asyncio.run(work(number))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(number,)) for number in range(2)]
    for thread in threads:
        thread.start()
    await asyncio.to_thread(lambda: [thread.join(60) for thread in threads])
    assert errors == [] and _connected(admin) == before
    gc.collect()
