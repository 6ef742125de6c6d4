"""The near cache against a real server: own writes, another process's writes, a lost
tracking connection, expiry and bounds (providers/redis/nearcache.py)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from helpers import UTC
from unistore import StorageError, ValidationError, open_provider
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import layout, nearcache

pytestmark = pytest.mark.redis


@pytest.fixture
async def cached(redis_port: int) -> AsyncIterator[RedisStorageProvider]:
    provider = RedisStorageProvider(port=redis_port, namespace=uuid.uuid4().hex, near_cache=100)
    yield provider
    await provider.cleanup()


async def tracking_up(provider: RedisStorageProvider) -> nearcache.Tracking:
    """Wait (bounded) until the provider's tracking connections are up; its tracking."""
    tracking = await provider._tracking(await provider._connection())
    assert tracking is not None
    for _ in range(500):
        if trusted(tracking):
            return tracking
        await asyncio.sleep(0.01)
    raise AssertionError("tracking never came up")


def trusted(tracking: nearcache.Tracking) -> bool:
    """Whether every shard's entries may be served now."""
    return all(tracking.cache.trusted(part) for part in range(tracking.cache.parts))


async def served(provider: RedisStorageProvider, key: str) -> Any:
    return (await provider.load(key)).data


async def test_a_hot_load_is_served_from_memory_and_own_writes_are_seen_at_once(
    cached: RedisStorageProvider, redis_port: int
) -> None:
    await cached.save("k", 1, "t")
    tracker = await tracking_up(cached)
    assert await served(cached, "k") == 1  # a miss: kept
    client = aioredis.Redis(port=redis_port)
    calls = (await client.info("commandstats")).get("cmdstat_get", {}).get("calls", 0)
    for _ in range(20):
        assert await served(cached, "k") == 1
    assert (await client.info("commandstats")).get("cmdstat_get", {}).get("calls", 0) == calls  # no GET reached Redis
    for version in range(2, 30):
        await cached.save("k", version, "t")
        assert await served(cached, "k") == version
    assert tracker.cache.hits.value >= 20
    await client.aclose()


async def test_another_writer_s_save_is_seen_within_a_delivery(cached: RedisStorageProvider, redis_port: int) -> None:
    other = RedisStorageProvider(port=redis_port, namespace=cached.namespace)
    await cached.save("k", 0, "t")
    await tracking_up(cached)
    for version in range(1, 50):
        assert await served(cached, "k") == version - 1
        await other.save("k", version, "t")
        deadline = time.monotonic() + 0.1
        while await served(cached, "k") != version:
            assert time.monotonic() < deadline, version
            await asyncio.sleep(0.001)
    await other.cleanup()


@pytest.mark.parametrize("how", ["ID", "TYPE normal"])
async def test_a_killed_tracking_connection_serves_nothing_stale(
    cached: RedisStorageProvider, redis_port: int, how: str
) -> None:
    other = RedisStorageProvider(port=redis_port, namespace=cached.namespace)
    client = aioredis.Redis(port=redis_port)
    await cached.save("k", 0, "t")
    tracker = await tracking_up(cached)
    assert await served(cached, "k") == 0
    node = tracker.tracker(0)
    assert node is not None
    killed = (how, node.client_id) if how == "ID" else tuple(how.split())
    assert await client.execute_command("CLIENT", "KILL", *killed, "SKIPME", "yes") >= 1
    await other.save("k", 1, "t")  # while tracking is down: no invalidation reaches us
    assert await served(cached, "k") == 1
    tracker = await tracking_up(cached)  # back: served from memory again, and true
    assert await served(cached, "k") == 1
    await other.save("k", 2, "t")
    deadline = time.monotonic() + 0.1
    while await served(cached, "k") != 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)
    await other.cleanup()
    await client.aclose()


async def test_an_expired_item_is_never_served(cached: RedisStorageProvider) -> None:
    await tracking_up(cached)
    await cached.save("k", 1, "t", expires_at=datetime.now(UTC) + timedelta(milliseconds=300))
    deadline = time.monotonic() + 0.25
    while time.monotonic() < deadline:
        assert await served(cached, "k") == 1
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.06)
    with pytest.raises(KeyError):
        await cached.load("k")


async def test_ten_thousand_loads_keep_a_hundred_items(cached: RedisStorageProvider) -> None:
    tracker = await tracking_up(cached)
    await cached.save_many({f"k{n}": n for n in range(1000)}, "t")
    for _ in range(10):
        for n in range(1000):
            assert await served(cached, f"k{n}") == n
    assert len(tracker.cache) == 100 and tracker.cache.evictions.value >= 9900 - 100
    one = len(layout.record_key(b"", b"k999")) + 300 + nearcache.ENTRY_OVERHEAD  # (a record is < 300 bytes)
    assert tracker.cache.size < 100 * one  # the bytes it holds are those of 100 items


async def test_a_forked_child_starts_with_an_empty_cache_of_its_own(
    cached: RedisStorageProvider, redis_port: int
) -> None:
    await cached.save("k", "parent", "t")
    await tracking_up(cached)
    assert await served(cached, "k") == "parent"
    other = RedisStorageProvider(port=redis_port, namespace=cached.namespace)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:

            async def child() -> bool:
                await other.save("k", "changed", "t")
                return (await cached.load("k")).data == "changed"

            code = 0 if asyncio.run(child()) else 3
        finally:
            os._exit(code)
    try:
        _, status = await asyncio.wait_for(asyncio.to_thread(os.waitpid, pid, 0), 20)
    except asyncio.TimeoutError:
        os.kill(pid, 9)
        raise AssertionError("the child hung") from None
    assert os.WEXITSTATUS(status) == 0
    deadline = time.monotonic() + 0.1
    while await served(cached, "k") != "changed":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)
    await other.cleanup()


async def test_load_many_is_served_from_memory_where_it_can_be(cached: RedisStorageProvider, redis_port: int) -> None:
    other = RedisStorageProvider(port=redis_port, namespace=cached.namespace)
    await cached.save_many({f"k{n}": n for n in range(10)}, "t")
    tracker = await tracking_up(cached)
    keys = [f"k{n}" for n in range(12)]  # two missing
    first = await cached.load_many(keys)
    assert {key: item.data for key, item in first.items()} == {f"k{n}": n for n in range(10)}
    client = aioredis.Redis(port=redis_port)
    calls = (await client.info("commandstats")).get("cmdstat_mget", {}).get("calls", 0)
    hits = tracker.cache.hits.value
    again = await cached.load_many(keys[:10])
    assert {key: item.data for key, item in again.items()} == {f"k{n}": n for n in range(10)}
    assert tracker.cache.hits.value == hits + 10
    assert (await client.info("commandstats")).get("cmdstat_mget", {}).get("calls", 0) == calls
    await other.save("k3", "changed", "t")
    deadline = time.monotonic() + 0.1
    while (await cached.load_many(["k3"]))["k3"].data != "changed":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)
    await cached.delete("k4")
    assert "k4" not in await cached.load_many(["k4", "k5"])
    await other.cleanup()
    await client.aclose()


@pytest.mark.watchdog(120)
async def test_another_process_s_versions_are_seen_within_100_ms_and_never_go_back(
    cached: RedisStorageProvider, redis_port: int
) -> None:
    await cached.save("k", 0, "t")
    await tracking_up(cached)
    assert await served(cached, "k") == 0
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: versions 1..200, each told over the pipe once its save returned
        os.close(read_end)
        code = 1
        try:

            async def write() -> None:
                writer = RedisStorageProvider(port=redis_port, namespace=cached.namespace)
                for version in range(1, 201):
                    await writer.save("k", version, "t")
                    os.write(write_end, version.to_bytes(2, "big"))
                    await asyncio.sleep(0.002)
                await writer.cleanup()

            asyncio.run(write())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    loop = asyncio.get_running_loop()
    signals = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(signals), os.fdopen(read_end, "rb")
    )
    seen = 0
    try:
        for _ in range(200):
            told = int.from_bytes(await asyncio.wait_for(signals.readexactly(2), 20), "big")
            deadline = time.monotonic() + 0.1
            while True:
                now = await served(cached, "k")
                assert now >= seen, (now, seen)  # never backwards
                seen = now
                if now >= told:
                    break
                assert time.monotonic() < deadline, (told, now)
                await asyncio.sleep(0.001)
    finally:
        transport.close()
        _, status = await asyncio.wait_for(asyncio.to_thread(os.waitpid, pid, 0), 20)
    assert os.WEXITSTATUS(status) == 0 and seen == 200


async def test_many_tasks_agree_with_the_server_once_writes_stop(cached: RedisStorageProvider, redis_port: int) -> None:
    writer = RedisStorageProvider(port=redis_port, namespace=cached.namespace)
    await cached.save("k", 0, "t")
    await tracking_up(cached)
    stop = asyncio.Event()

    async def rewrite() -> None:
        for version in range(1, 300):
            await writer.save("k", version, "t")
        stop.set()

    async def read() -> None:
        while not stop.is_set():
            await served(cached, "k")

    await asyncio.gather(rewrite(), *(read() for _ in range(8)))
    deadline = time.monotonic() + 0.1
    while await served(cached, "k") != 299:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)
    assert [await served(cached, "k") for _ in range(10)] == [299] * 10
    await writer.cleanup()


async def test_a_restarted_server_serves_nothing_stale(redis_starter: Any, tmp_path: Any) -> None:
    process, port = redis_starter(tmp_path)
    cached = RedisStorageProvider(port=port, namespace="restart", near_cache=10)
    try:
        await cached.save("k", 1, "t")
        tracker = await tracking_up(cached)
        assert await served(cached, "k") == 1
        process.kill()  # (the loop runs meanwhile, as a service's does: the restart takes a while)
        await asyncio.to_thread(process.wait, 10)
        await asyncio.sleep(0.5)  # the tracker tries to connect again meanwhile, in vain
        assert not trusted(tracker)
        process, port = await asyncio.to_thread(redis_starter, tmp_path, port)  # the same port, an empty server
        with pytest.raises(KeyError):  # the record is gone with the server: not served from memory
            await cached.load("k")
        other = RedisStorageProvider(port=port, namespace="restart")  # (another writer: no local drop)
        await other.save("k", 2, "t")
        await tracking_up(cached)
        assert await served(cached, "k") == 2  # kept once tracking is back...
        await other.save("k", 3, "t")
        deadline = time.monotonic() + 0.1
        while await served(cached, "k") != 3:  # ...and dropped when the other writes again
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        await other.cleanup()
    finally:
        await cached.cleanup()
        process.kill()
        process.wait(10)


async def test_a_stalled_server_s_entries_are_dropped_when_its_heartbeat_is_late(
    redis_starter: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nearcache, "HEARTBEAT", 0.05)
    monkeypatch.setattr(nearcache, "LEASE", 0.3)
    process, port = redis_starter(tmp_path)
    cached = RedisStorageProvider(port=port, namespace="stall", near_cache=10)
    try:
        await cached.save("k", 1, "t")
        tracker = await tracking_up(cached)
        assert await served(cached, "k") == 1 and len(tracker.cache) == 1
        process.send_signal(signal.SIGSTOP)  # a server that stops answering, its socket open
        try:
            await asyncio.sleep(0.6)
            assert not trusted(tracker) and len(tracker.cache) == 0
        finally:
            process.send_signal(signal.SIGCONT)
        tracker = await tracking_up(cached)
        assert await served(cached, "k") == 1
    finally:
        await cached.cleanup()
        process.kill()
        process.wait(10)


def test_the_near_cache_settings_are_checked(redis_port: int) -> None:
    url = f"redis://127.0.0.1:{redis_port}/0?namespace=x&near_cache=50&near_cache_bytes=4096"
    provider = open_provider(url)
    assert isinstance(provider, RedisStorageProvider)
    assert (provider.near_cache, provider.near_cache_bytes) == (50, 4096)
    assert RedisStorageProvider(port=redis_port).near_cache == 0  # off unless asked for
    for other in ("rediss://127.0.0.1:1/0", "redis+cluster://127.0.0.1:1,127.0.0.1:2", "rediss+cluster://127.0.0.1:1"):
        assert open_provider(f"{other}?namespace=x&near_cache=7").near_cache == 7  # type: ignore[attr-defined]
    for bad in ("-1", "many", "1.5"):
        with pytest.raises(ValidationError, match="near_cache must be"):
            open_provider(f"redis://127.0.0.1:{redis_port}/0?near_cache={bad}")
    for settings in ({"near_cache": True}, {"near_cache": -1}, {"near_cache": "10"}):
        with pytest.raises(ValidationError, match="near_cache must be an int of items"):
            RedisStorageProvider(port=redis_port, **settings)
    for settings in ({"near_cache_bytes": 0}, {"near_cache_bytes": 1.5}, {"near_cache_bytes": False}):
        with pytest.raises(ValidationError, match="near_cache_bytes must be a positive int"):
            RedisStorageProvider(port=redis_port, **settings)


async def test_heartbeats_keep_an_idle_tracking_connection_trusted(
    cached: RedisStorageProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nearcache, "HEARTBEAT", 0.05)
    monkeypatch.setattr(nearcache, "LEASE", 0.3)
    await cached.cleanup()  # (a tracker made anew, with these settings)
    await cached.save("k", 1, "t")
    tracker = await tracking_up(cached)
    assert await served(cached, "k") == 1
    await asyncio.sleep(1.0)  # no load, no write: only the heartbeats are heard
    assert trusted(tracker) and len(tracker.cache) == 1
    hits = tracker.cache.hits.value
    assert await served(cached, "k") == 1 and tracker.cache.hits.value == hits + 1


async def test_a_dropped_namespace_is_gone_for_its_own_provider_at_once(cached: RedisStorageProvider) -> None:
    await cached.save_many({f"k{n}": n for n in range(5)}, "t")
    tracker = await tracking_up(cached)
    assert [await served(cached, f"k{n}") for n in range(5)] == list(range(5))
    assert len(tracker.cache) == 5
    assert await cached.drop_namespace() == 5
    for n in range(5):
        with pytest.raises(KeyError):
            await cached.load(f"k{n}")


async def test_a_flush_drops_every_entry_at_once(redis_starter: Any, tmp_path: Any) -> None:
    process, port = redis_starter(tmp_path)
    cached = RedisStorageProvider(port=port, namespace="flushed", near_cache=10)
    try:
        await cached.save_many({"a": 1, "b": 2}, "t")
        tracking = await tracking_up(cached)
        assert [await served(cached, key) for key in "ab"] == [1, 2] and len(tracking.cache) == 2
        async with aioredis.Redis(port=port) as client:
            await client.flushall()
        deadline = time.monotonic() + 0.1
        while len(tracking.cache):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        for key in "ab":
            with pytest.raises(KeyError):
                await cached.load(key)
    finally:
        await cached.cleanup()
        process.kill()
        process.wait(10)


async def test_a_server_that_refuses_tracking_is_read_without_the_cache_and_asked_ever_less_often(
    redis_starter: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    process, port = redis_starter(tmp_path)
    async with aioredis.Redis(port=port) as admin:
        await admin.execute_command("ACL", "SETUSER", "app", "on", ">secret", "~*", "&*", "+@all", "-client|tracking")
    cached = RedisStorageProvider(port=port, namespace="refused", near_cache=10, username="app", password="secret")
    try:
        await cached.save("k", 1, "t")
        assert [await served(cached, "k") for _ in range(3)] == [1, 1, 1]  # every load from Redis
        tracking = await cached._tracking(await cached._connection())
        assert tracking is not None and len(tracking.cache) == 0 and tracking.cache.hits.value == 0
        async with aioredis.Redis(port=port) as admin:
            before = (await admin.info("stats"))["total_connections_received"]
            await asyncio.sleep(3)
            tries = (await admin.info("stats"))["total_connections_received"] - before
        assert 1 <= tries <= 5, tries  # (at a fixed 0.2 s: 15)
        warnings = [r for r in caplog.records if r.name.endswith("nearcache") and r.levelname == "WARNING"]
        assert len(warnings) == 1 and "no permissions to run the 'client|tracking' command" in warnings[0].getMessage()
    finally:
        await cached.cleanup()
        process.kill()
        process.wait(10)


# -- found by a hostile review -------------------------------------------------------------


async def tracking_clients(port: int) -> int:
    """How many of the server's clients are near-cache tracking connections."""
    async with aioredis.Redis(port=port) as client:
        return sum(entry["name"] == nearcache.NAME for entry in await client.client_list())


@pytest.mark.watchdog(60)
async def test_a_load_in_flight_when_cleanup_runs_ends(redis_port: int) -> None:
    provider = RedisStorageProvider(port=redis_port, namespace=uuid.uuid4().hex, near_cache=10)
    await provider.save("k", 1, "t")  # the connection is up, the near cache not yet started
    load = asyncio.ensure_future(provider.load("k"))
    await asyncio.sleep(0)  # the load has started the near cache and waits for its first attempt
    await provider.cleanup()  # (a service shutting down while a request is served)
    done, _ = await asyncio.wait([load], timeout=10)
    assert done, "the load never returned after cleanup()"
    await provider.cleanup()


@pytest.mark.watchdog(60)
async def test_a_cancelled_cleanup_leaves_no_tracking_connection(redis_port: int) -> None:
    before = await tracking_clients(redis_port)
    provider = RedisStorageProvider(port=redis_port, namespace=uuid.uuid4().hex, near_cache=10)
    await provider.save("k", 1, "t")
    await tracking_up(provider)
    cleanup = asyncio.ensure_future(provider.cleanup())
    await asyncio.sleep(0)  # it has begun...
    cleanup.cancel()  # ...and is cancelled (a shutdown with a deadline)
    with contextlib.suppress(asyncio.CancelledError):
        await cleanup
    await provider.cleanup()
    deadline = time.monotonic() + 5
    while await tracking_clients(redis_port) != before:
        assert time.monotonic() < deadline, "a tracking connection outlived cleanup()"
        await asyncio.sleep(0.05)


@pytest.mark.watchdog(60)
async def test_a_cleanup_during_first_loads_leaves_no_tracking_behind(redis_port: int) -> None:
    before = await tracking_clients(redis_port)
    provider = RedisStorageProvider(port=redis_port, namespace=uuid.uuid4().hex, near_cache=10)
    first = asyncio.ensure_future(provider.load("k"))  # two requests at once...
    await asyncio.sleep(0)
    closing: list[asyncio.Future[None]] = []
    [connection] = provider._connections.values()
    assert connection.ready is not None  # ...and a shutdown as soon as the connection is checked
    connection.ready.add_done_callback(lambda _: closing.append(asyncio.ensure_future(provider.cleanup())))
    second = asyncio.ensure_future(provider.load("k"))
    await asyncio.wait([first, second], timeout=10)
    assert first.done() and second.done()
    for load in (first, second):
        assert isinstance(load.exception(), (KeyError, StorageError))
    await closing[0]
    await asyncio.sleep(0.5)
    assert provider._connections == {} and await tracking_clients(redis_port) == before


async def test_a_connection_closed_by_cleanup_gets_no_near_cache(redis_port: int) -> None:
    # (what a load that had its connection before a cleanup closed it finds: none, so no
    # tracking outlives the cleanup; the load fails saying the provider was closed)
    provider = RedisStorageProvider(port=redis_port, namespace=uuid.uuid4().hex, near_cache=10)
    connection = await provider._connection()
    await provider.cleanup()
    assert await provider._tracking(connection) is None and connection.near is None


def test_a_provider_used_by_one_event_loop_after_another_keeps_no_closed_loop_s_cache(redis_port: int) -> None:
    provider = RedisStorageProvider(port=redis_port, namespace=uuid.uuid4().hex, near_cache=100)
    asyncio.run(provider.save_many({f"k{n}": n for n in range(5)}, "t"))

    async def job() -> None:
        assert (await provider.load("k1")).data == 1

    before = asyncio.run(tracking_clients(redis_port))
    for _ in range(20):  # (asyncio.run per job: a sync wrapper's way)
        asyncio.run(job())
    assert provider._connections == {}  # (each loop's near cache lived and ended with its connection)
    assert asyncio.run(tracking_clients(redis_port)) == before


def _save_from_another_process(port: int, namespace: str, saved: Any) -> None:
    async def write() -> None:
        other = RedisStorageProvider(port=port, namespace=namespace)
        await other.save("k", 2, "t")
        await other.cleanup()

    asyncio.run(write())
    saved.set()  # the save has returned


@pytest.mark.watchdog(60)
async def test_a_task_busy_with_hits_sees_another_process_s_save_soon(redis_port: int) -> None:
    # A hit never gave the event loop a turn: the push lay unread while a task served hits,
    # and the old version was served until the lease ran out (2 s).
    namespace = uuid.uuid4().hex
    cached = RedisStorageProvider(port=redis_port, namespace=namespace, near_cache=10)
    await cached.save("k", 1, "t")
    await tracking_up(cached)
    assert await served(cached, "k") == 1  # kept
    context = multiprocessing.get_context("spawn")
    saved = context.Event()
    writer = context.Process(target=_save_from_another_process, args=(redis_port, namespace, saved))
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while not saved.is_set():  # a task busy serving loads of a hot key (no other await)
            assert time.monotonic() < deadline, "the writer never saved"
            await cached.load("k")
        heard = time.monotonic()  # this process knows the save returned
        while await served(cached, "k") != 2:
            assert time.monotonic() - heard < 0.1, "the old version is still served"
    finally:
        await asyncio.to_thread(writer.join, 30)
        await cached.cleanup()


async def test_an_idle_connection_closed_by_the_server_keeps_the_cache(redis_starter: Any, tmp_path: Any) -> None:
    # A miss read on a pool connection the server had closed (its `timeout`) was taken for
    # the node serving the shard no more: every entry dropped, tracking made again.
    process, port = redis_starter(tmp_path, None, "--timeout", "1")
    cached = RedisStorageProvider(port=port, namespace="idle", near_cache=100)
    try:
        await cached.save_many({"a": 1, "b": 2}, "t")
        tracking = await tracking_up(cached)
        tracker = tracking.tracker(0)
        assert await served(cached, "a") == 1 and len(tracking.cache) == 1
        await asyncio.sleep(2.5)  # idle: the server closes the pool's connections (the tracker's heartbeats)
        assert tracking.tracker(0) is tracker and len(tracking.cache) == 1
        assert await served(cached, "b") == 2  # a miss, read on a connection the server closed (not kept)
        assert await served(cached, "b") == 2  # (read on a new one: kept)
        assert len(tracking.cache) == 2 and tracking.tracker(0) is tracker
    finally:
        await cached.cleanup()
        process.kill()
        process.wait(10)


async def test_a_damaged_record_is_reported_alike_with_and_without_the_near_cache(redis_port: int) -> None:
    namespace = uuid.uuid4().hex
    plain = RedisStorageProvider(port=redis_port, namespace=namespace)
    cached = RedisStorageProvider(port=redis_port, namespace=namespace, near_cache=10)
    await plain.save("k", 1, "t")
    async with aioredis.Redis(port=redis_port) as client:
        key = layout.record_key(plain._shard(b"k").prefix, b"k")
        await client.delete(key)
        await client.hset(key, "x", "y")  # the record replaced by a hash
    await tracking_up(cached)
    try:
        for provider in (plain, cached):
            with pytest.raises(StorageError, match="WRONGTYPE") as caught:
                await provider.load("k")
            assert not isinstance(caught.value, KeyError)
    finally:
        await plain.cleanup()
        await cached.cleanup()
