"""The near cache on Redis Cluster: one tracking connection per master that serves a shard
of the namespace, and what a cluster lives through (a lost tracking connection, a
failover, a resharding) while another process writes: nothing stale is served after it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from unistore import StorageError
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import layout, nearcache

pytestmark = pytest.mark.redis

SHARDS = 4
KEYS = [f"k{n}" for n in range(12)]


async def tracked(provider: RedisStorageProvider) -> nearcache.Tracking:
    """Wait (bounded) until every shard of ``provider`` is tracked; its tracking."""
    tracking = await provider._tracking(await provider._connection())
    assert tracking is not None
    deadline = time.monotonic() + 10
    while not all(tracking.cache.trusted(part) for part in range(SHARDS)):
        assert time.monotonic() < deadline, "tracking never came up on every shard"
        await asyncio.sleep(0.01)
    return tracking


def owners(nodes: list[str], namespace: str) -> dict[int, int]:
    """The port of the master serving each shard of ``namespace`` now."""
    with redis.Redis.from_url(f"redis://{nodes[0]}") as client:
        slots = client.execute_command("CLUSTER", "SLOTS")
    owner = {}
    for shard in range(SHARDS):
        slot = layout.key_slot(layout.shard_prefix(namespace.encode(), shard, SHARDS))
        owner[shard] = next(int(node[1]) for start, end, node, *_ in slots if start <= slot <= end)
    return owner


async def test_one_tracking_connection_per_master_that_serves_a_shard(redis_cluster: list[int]) -> None:
    nodes = [f"127.0.0.1:{port}" for port in redis_cluster]
    namespace = uuid.uuid4().hex
    cached = RedisStorageProvider(cluster_nodes=nodes, namespace=namespace, shards=SHARDS, near_cache=100)
    other = RedisStorageProvider(cluster_nodes=nodes, namespace=namespace, shards=SHARDS)
    try:
        await cached.save_many(dict.fromkeys(KEYS, 0), "t")
        tracking = await tracked(cached)
        serving = owners(nodes, namespace)
        trackers = {port: tracking.tracker(part) for part, port in serving.items()}
        assert len({id(tracker) for tracker in trackers.values()}) == len(set(serving.values()))
        for port, tracker in trackers.items():
            assert tracker is not None and tracker.address[1] == port
            async with aioredis.Redis(port=port) as client:
                listed = {entry["id"]: entry["name"] for entry in await client.client_list()}
                assert listed[str(tracker.client_id)] == nearcache.NAME
        assert {key: item.data for key, item in (await cached.load_many(KEYS)).items()} == dict.fromkeys(KEYS, 0)
        reads = await _reads(redis_cluster)
        for _ in range(3):  # served from memory: no read reaches any node
            assert [(await cached.load(key)).data for key in KEYS] == [0] * len(KEYS)
            assert {key: item.data for key, item in (await cached.load_many(KEYS)).items()} == dict.fromkeys(KEYS, 0)
        assert await _reads(redis_cluster) == reads
        for version, key in enumerate(KEYS, 1):  # every shard's writes arrive, each within a delivery
            await other.save(key, version, "t")
            deadline = time.monotonic() + 0.1
            while (await cached.load(key)).data != version:
                assert time.monotonic() < deadline, key
                await asyncio.sleep(0.001)
    finally:
        await cached.cleanup()
        await other.cleanup()


async def _reads(ports: list[int]) -> int:
    total = 0
    for port in ports:
        async with aioredis.Redis(port=port) as client:
            stats = await client.info("commandstats")
            total += sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("get", "mget"))
    return total


@dataclass
class Told:
    """What the writing process said it saved: per key, the last version and when it said so."""

    versions: dict[str, tuple[int, float]] = field(default_factory=dict)
    saves: int = 0


@contextlib.asynccontextmanager
async def another_process_writing(nodes: list[str], namespace: str) -> AsyncIterator[Told]:
    """A forked process saving versions 1, 2, ... of every key of :data:`KEYS` in turn
    (a failed save tried again), telling each over a pipe once its save returned; stopped
    when the block ends."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = 1
        try:

            async def write() -> None:
                writer = RedisStorageProvider(cluster_nodes=nodes, namespace=namespace, shards=SHARDS)
                version = 0
                while True:
                    version += 1
                    for number, key in enumerate(KEYS):
                        while True:
                            try:
                                await writer.save(key, version, "t")
                                break
                            except StorageError:
                                await asyncio.sleep(0.02)
                        os.write(write_end, number.to_bytes(2, "big") + version.to_bytes(4, "big"))
                    await asyncio.sleep(0.005)

            with contextlib.suppress(BrokenPipeError):
                asyncio.run(write())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    told = Told()
    signals = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(signals), os.fdopen(read_end, "rb")
    )

    async def listen() -> None:
        while True:
            message = await signals.readexactly(6)
            told.versions[KEYS[int.from_bytes(message[:2], "big")]] = (
                int.from_bytes(message[2:], "big"),
                time.monotonic(),
            )
            told.saves += 1

    listening = asyncio.ensure_future(listen())
    try:
        yield told
    finally:
        listening.cancel()
        transport.close()
        os.kill(pid, 15)
        await asyncio.wait_for(asyncio.to_thread(os.waitpid, pid, 0), 30)  # (a writer that died early stalls: checked)


@dataclass
class Reading:
    """A task loading every key in a loop: what it saw, and what it saw stale once ``since`` was set."""

    seen: dict[str, int] = field(default_factory=dict)
    backwards: list[tuple[str, int, int]] = field(default_factory=list)
    stale: list[tuple[str, int, int, float]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    loads: int = 0
    since: float | None = None  # from when a value told more than 100 ms before its load is stale


async def read_all_along(cached: RedisStorageProvider, told: Told, reading: Reading, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for key in KEYS:
            version, at = told.versions.get(key, (0, time.monotonic()))
            started = time.monotonic()
            try:
                data = (await cached.load(key)).data
            except (StorageError, KeyError) as exc:
                if reading.since is not None:
                    reading.failures.append(exc)
                await asyncio.sleep(0.01)
                continue
            reading.loads += 1
            if data < reading.seen.get(key, 0):
                reading.backwards.append((key, reading.seen[key], data))
            reading.seen[key] = max(data, reading.seen.get(key, 0))
            if reading.since is not None and at >= reading.since and started - at > 0.1 and data < version:
                reading.stale.append((key, data, version, started - at))
        await asyncio.sleep(0.001)


async def agreed_with_the_server(cached: RedisStorageProvider, nodes: list[str]) -> None:
    """Once writes have stopped: every load agrees with the server within 100 ms, and stays so."""
    plain = RedisStorageProvider(cluster_nodes=nodes, namespace=cached.namespace, shards=SHARDS)
    try:
        truth = {key: item.data for key, item in (await plain.load_many(KEYS)).items()}
    finally:
        await plain.cleanup()
    deadline = time.monotonic() + 0.1
    while {key: (await cached.load(key)).data for key in KEYS} != truth:
        assert time.monotonic() < deadline, truth
        await asyncio.sleep(0.001)
    for _ in range(5):
        assert {key: (await cached.load(key)).data for key in KEYS} == truth
        assert {key: item.data for key, item in (await cached.load_many(KEYS)).items()} == truth


@pytest.mark.watchdog(300)
async def test_a_lost_tracking_connection_a_resharding_and_a_failover_while_another_process_writes(
    cluster_starter: Callable[..., Any],
) -> None:
    cluster = cluster_starter()
    nodes = [f"127.0.0.1:{port}" for port in cluster.ports[: cluster.masters]]
    namespace = uuid.uuid4().hex
    cached = RedisStorageProvider(cluster_nodes=nodes, namespace=namespace, shards=SHARDS, near_cache=100)
    await cached.save_many(dict.fromkeys(KEYS, 0), "t")
    tracking = await tracked(cached)
    reading, stop = Reading(), asyncio.Event()
    try:
        async with another_process_writing(nodes, namespace) as told:
            reader = asyncio.create_task(read_all_along(cached, told, reading, stop))

            async def then(change: Callable[[], Any]) -> None:
                """Let writes flow, make ``change`` (in a thread), and from then on count stale loads."""
                await asyncio.sleep(0.5)
                await asyncio.to_thread(change)
                reading.since = time.monotonic()
                saves = told.saves
                await asyncio.sleep(1.0)
                assert told.saves > saves + 50, "the writer stalled"

            # 1. one master's tracking connection killed: its shards bypassed, then tracked again
            victim = tracking.tracker(0)
            assert victim is not None
            with redis.Redis(port=victim.address[1]) as client:
                await then(lambda: client.execute_command("CLIENT", "KILL", "ID", victim.client_id))
            # 2. shard 1's slot resharded to the next master
            await then(lambda: cluster.move(layout.key_slot(layout.shard_prefix(namespace.encode(), 1, SHARDS))))
            # 3. the master of shard 0 fails over to its replica
            slot = layout.key_slot(layout.shard_prefix(namespace.encode(), 0, SHARDS))
            master = cluster.owner(slot)
            replica = cluster.replica_of(master)

            def fail_over() -> None:
                cluster.cli("-p", str(replica), "cluster", "failover")
                deadline = time.monotonic() + 30
                while cluster.owner(slot, ask=replica) != replica:
                    assert time.monotonic() < deadline, "the replica was not promoted"
                    time.sleep(0.05)

            await then(fail_over)
            stop.set()
            await reader
        await agreed_with_the_server(cached, nodes)
        assert reading.backwards == [] and reading.stale == [], (reading.backwards[:5], reading.stale[:5])
        assert reading.failures == [], reading.failures[:3]
        assert reading.loads > 500 and await tracked(cached) is tracking
        assert tracking.cache.hits.value > 0
    finally:
        stop.set()
        await cached.cleanup()


@pytest.mark.watchdog(120)
async def test_a_cluster_entirely_down_serves_nothing_from_memory(
    cluster_starter: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    cluster = cluster_starter(replicas=0)
    nodes = [f"127.0.0.1:{port}" for port in cluster.ports]
    cached = RedisStorageProvider(
        cluster_nodes=nodes, namespace=uuid.uuid4().hex, shards=SHARDS, near_cache=100, socket_timeout=1
    )
    try:
        await cached.save_many(dict.fromkeys(KEYS, 0), "t")
        tracking = await tracked(cached)
        assert [(await cached.load(key)).data for key in KEYS] == [0] * len(KEYS)
        assert len(tracking.cache) == len(KEYS)
        for port in cluster.ports:
            cluster.kill(port)
        deadline = time.monotonic() + 10
        while len(tracking.cache):
            assert time.monotonic() < deadline, "the cache outlived its cluster"
            await asyncio.sleep(0.05)
        hits = tracking.cache.hits.value
        await asyncio.sleep(0.5)  # (tracking tries again meanwhile: the slot map cannot be read)
        with pytest.raises((StorageError, asyncio.TimeoutError)):  # (to the network, retrying: not from memory)
            await asyncio.wait_for(cached.load(KEYS[0]), 1.5)
        assert tracking.cache.hits.value == hits
        warnings = [r.getMessage() for r in caplog.records if r.name.endswith("nearcache")]
        assert len(warnings) == 1 and "bypassed until tracking is back" in warnings[0]  # (said once)
    finally:
        await cached.cleanup()


@pytest.mark.watchdog(120)
async def test_a_load_redirected_from_the_node_tracking_its_shard_drops_the_shard_and_tracks_it_anew(
    cluster_starter: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Heartbeats far apart: the load, not the heartbeat, is the first to hear of the move.
    monkeypatch.setattr(nearcache, "HEARTBEAT", 60.0)
    monkeypatch.setattr(nearcache, "LEASE", 120.0)
    cluster = cluster_starter(replicas=0)
    nodes = [f"127.0.0.1:{port}" for port in cluster.ports]
    namespace = uuid.uuid4().hex
    cached = RedisStorageProvider(cluster_nodes=nodes, namespace=namespace, shards=SHARDS, near_cache=100)
    try:
        await cached.save_many(dict.fromkeys(KEYS, 0), "t")
        tracking = await tracked(cached)
        shard = cached._shard(b"k0")
        before = tracking.node(shard.number)
        assert (await cached.load("k0")).data == 0
        source, target = await asyncio.to_thread(cluster.open_migration, shard.slot, [])
        await asyncio.to_thread(cluster.close_migration, shard.slot, source, target)  # (its keys moved)
        assert (await cached.load("k0")).data == 0  # read where it lives now, through the redirection
        deadline = time.monotonic() + 10
        while tracking.node(shard.number) == before or not tracking.cache.trusted(shard.number):
            assert time.monotonic() < deadline, "the shard was not tracked where it moved"
            await asyncio.sleep(0.01)
        assert tracking.node(shard.number)[1] == target
        other = RedisStorageProvider(cluster_nodes=nodes, namespace=namespace, shards=SHARDS)
        await other.save("k0", 1, "t")
        deadline = time.monotonic() + 0.1
        while (await cached.load("k0")).data != 1:  # its new node's writes reach the cache
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        await other.cleanup()
    finally:
        await cached.cleanup()
