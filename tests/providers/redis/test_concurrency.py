"""One Redis provider under many callers: cancellation during the first connect or a
scattered search, many tasks on one cluster provider, and several event loops at once."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import threading
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from helpers import fresh_namespace
from unistore import (
    StorageCorruptionError,
    StorageQuery,
    cli,
    open_provider,
)
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import layout


def _loop_errors() -> list[str]:
    """Collects what the running loop's exception handler is given (unread task exceptions)."""
    errors: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, context: errors.append(f"{context['message']}: {context.get('exception')!r}")
    )
    return errors


async def _quiet(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """The tasks beyond ``before`` still alive after the loop has had a moment."""
    for _ in range(100):
        await asyncio.sleep(0.01)
        if not set(asyncio.all_tasks()) - before:
            break
    return set(asyncio.all_tasks()) - before


@pytest.mark.redis
@pytest.mark.parametrize("cluster", [False, True])
async def test_cancelling_one_caller_during_the_first_connect_spares_the_others(
    cluster: bool, redis_port: int, redis_cluster: list[int], made: list[RedisStorageProvider]
) -> None:
    """DEFECT: every caller of a fresh provider awaits the one task that checks the
    shard count (``await ready`` in ``_redis``); cancelling any one caller cancels that
    shared task, and every other caller, none of them cancelled, gets CancelledError."""
    provider = (
        RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=fresh_namespace(), shards=3)
        if cluster
        else RedisStorageProvider(port=redis_port, namespace=fresh_namespace(), shards=3)
    )
    made.append(provider)
    victim = asyncio.ensure_future(provider.load_many(["a"]))
    others = [asyncio.ensure_future(provider.load_many([f"b{n}"])) for n in range(5)]
    await asyncio.sleep(0)  # every caller now awaits the first connection
    victim.cancel()
    results = await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), 10)
    assert [type(result).__name__ for result in results] == ["dict"] * 5


@pytest.mark.redis
async def test_a_scattered_search_cut_off_by_a_timeout_leaves_nothing_behind(
    redis_cluster: list[int], made: list[RedisStorageProvider]
) -> None:
    errors = _loop_errors()
    provider = RedisStorageProvider(
        cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=fresh_namespace(), shards=6
    )
    made.append(provider)
    await provider.save_many({f"k{n}": n for n in range(3000)}, "t", tags={"a": "b"})
    before = set(asyncio.all_tasks())
    for query in (StorageQuery(), StorageQuery(tags={"a": "b"}), StorageQuery(pattern="k1*")):

        async def slow_reader(query: StorageQuery = query) -> None:
            async for _ in provider.search(query):
                await asyncio.sleep(0.001)

        with pytest.raises(asyncio.TimeoutError):  # (the builtin TimeoutError from Python 3.11)
            await asyncio.wait_for(slow_reader(), 0.05)
        assert not await _quiet(before)
    gc.collect()
    await asyncio.sleep(0)
    assert errors == []


@pytest.mark.redis
async def test_many_tasks_search_one_cluster_provider_at_once(
    redis_cluster: list[int], made: list[RedisStorageProvider]
) -> None:
    errors = _loop_errors()
    provider = RedisStorageProvider(
        cluster_nodes=[f"127.0.0.1:{redis_cluster[1]}"], namespace=fresh_namespace(), shards=5
    )
    made.append(provider)
    await provider.save_many({f"k{n}": n for n in range(600)}, "t", tags={"all": "y"})
    before = set(asyncio.all_tasks())

    async def count(limit: int) -> int:
        keys = [r.item.metadata.key async for r in provider.search(StorageQuery(tags={"all": "y"}, limit=limit))]
        assert len(keys) == len(set(keys))
        return len(keys)

    limits = [n * 17 + 1 for n in range(40)]
    assert await asyncio.wait_for(asyncio.gather(*(count(limit) for limit in limits)), 30) == [
        min(n, 600) for n in limits
    ]
    assert not await _quiet(before)
    assert errors == []


@pytest.mark.redis
async def test_a_scattered_search_passes_over_a_damaged_record_in_one_shard(
    redis_cluster: list[int],
    cluster_raw: redis.RedisCluster,
    made: list[RedisStorageProvider],
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = _loop_errors()
    namespace = fresh_namespace()
    url = f"redis+cluster://127.0.0.1:{redis_cluster[2]}?namespace={namespace}&shards=4"
    provider = open_provider(url)
    assert isinstance(provider, RedisStorageProvider)
    made.append(provider)
    await provider.save_many({f"k{n}": n for n in range(2000)}, "t", tags={"a": "b"})
    damaged = next(f"k{n}" for n in range(2000) if provider._shard(f"k{n}".encode()).number == 2)
    cluster_raw.set(layout.record_key(provider._shards[2].prefix, damaged.encode()), b"garbage")
    before = set(asyncio.all_tasks())
    for query in (StorageQuery(), StorageQuery(tags={"a": "b"})):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="unistore.index"):
            assert await asyncio.wait_for(_drain(provider.search(query)), 10) == 1999  # every other shard's too
        [logged] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert f"{damaged!r}, which does not decode" in logged
        assert not await _quiet(before)
    with pytest.raises(StorageCorruptionError) as caught:
        await provider.load(damaged)
    assert caught.value.details == {"key": damaged}
    out = io.StringIO()
    assert await asyncio.to_thread(cli.main, ["check", "--store", url], out) == 1
    assert f"key {damaged!r} does not decode" in out.getvalue()
    gc.collect()
    await asyncio.sleep(0)
    assert errors == []


async def _drain(results: AsyncIterator[Any]) -> int:
    return len([result async for result in results])


@pytest.mark.redis
@pytest.mark.parametrize("cluster", [False, True])
async def test_one_provider_used_from_two_event_loops_at_once(
    cluster: bool, redis_port: int, redis_cluster: list[int]
) -> None:
    """DEFECT: the guide says a client belongs to the loop that made it and another
    loop gets its own, but there is one ``_client``/``_ready`` slot per provider: a
    thread running its own loop replaces it while another thread's loop is between
    making it and awaiting it, and that loop then awaits a future of the other loop
    (raw ``RuntimeError: ... attached to a different loop``)."""
    provider = (
        RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=fresh_namespace(), shards=3)
        if cluster
        else RedisStorageProvider(port=redis_port, namespace=fresh_namespace(), shards=3)
    )
    failures: list[str] = []

    def worker(number: int) -> None:
        async def work() -> None:
            try:
                for n in range(200):
                    await provider.save(f"t{number}-{n}", n, "t")
                    assert (await provider.load(f"t{number}-{n}")).data == n
            finally:
                await provider.cleanup()

        try:
            asyncio.run(asyncio.wait_for(work(), 15))
        except Exception as exc:  # collected and asserted on below
            failures.append(repr(exc)[:200])

    with warnings.catch_warnings(record=True):  # the pools the threads drop: kept out of other tests
        warnings.simplefilter("always")
        threads = [threading.Thread(target=worker, args=(number,)) for number in range(4)]
        for thread in threads:
            thread.start()
        await asyncio.to_thread(lambda: [thread.join(60) for thread in threads])
        await provider.cleanup()
        for _ in range(3):
            gc.collect()
    assert failures == []


@pytest.mark.redis
@pytest.mark.parametrize("cluster", [False, True])
async def test_a_provider_reused_across_asyncio_run_calls_leaks_no_connection(
    cluster: bool, redis_port: int, redis_cluster: list[int]
) -> None:
    """DEFECT: a script calling ``asyncio.run`` for each step (the usual way to drive an
    async library from sync code) leaves each finished loop's connection pool open: the
    next loop drops it unclosed (ResourceWarning: unclosed Connection / transport), and
    the final ``asyncio.run(provider.cleanup())``, in a loop of its own, closes nothing."""
    provider = (
        RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=fresh_namespace(), shards=2)
        if cluster
        else RedisStorageProvider(port=redis_port, namespace=fresh_namespace(), shards=2)
    )

    def script() -> None:
        for n in range(3):
            asyncio.run(provider.save(f"k{n}", n, "t"))
        asyncio.run(provider.cleanup())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await asyncio.to_thread(script)
        for _ in range(3):
            gc.collect()
    await provider.cleanup()
    leaks = [str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)]
    assert leaks == []
