"""The Redis provider's Lua scripts under contention: keys that keep changing, the keys
each delete batch declares, a server busy with another client's script."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import redis

from helpers import fresh_namespace
from unistore import (
    StorageError,
    StorageQuery,
)
from unistore.providers import RedisStorageProvider


@pytest.mark.redis
async def test_a_write_whose_keys_keep_changing_runs_with_the_probe_declared(
    redis_cluster: list[int], made: list[RedisStorageProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a cluster a run of a write script that meets keys it was not given asks for them
    # (NEED); past NEED_ROUNDS of those it runs with the shard's probe key declared and
    # uses the keys it learns (here at once: the first NEED spends the rounds).
    from unistore.providers.redis import provider as redis_provider

    monkeypatch.setattr(redis_provider, "NEED_ROUNDS", 1)
    provider = RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=fresh_namespace())
    made.append(provider)
    await provider.save("k", 1, "doc", tags={"colour": "red"})
    await provider.save("k", 2, "doc", tags={"colour": "blue"})
    await provider.save_many({"k": 3, "j": 4}, "doc", tags={"colour": "green"})
    assert await provider.delete_many(["k", "j"]) == 2
    assert (await provider.check()).ok


async def _contend(provider: RedisStorageProvider, writers: int, keys: int, seconds: float) -> list[BaseException]:
    """Writers that save, save_many and delete_many the same keys, each giving a tag a new
    value every time; the errors they met."""
    failures: list[BaseException] = []
    deadline = asyncio.get_running_loop().time() + seconds

    async def writer(number: int) -> None:
        serial = 0
        while asyncio.get_running_loop().time() < deadline:
            serial += 1
            chosen = [f"k{(number + serial + n) % keys}" for n in range(3)]
            tag = {"v": f"{number}-{serial}"}
            try:
                if serial % 3 == 0:
                    await provider.save(chosen[0], serial, "doc", tags=tag)
                elif serial % 3 == 1:
                    await provider.save_many(dict.fromkeys(chosen, serial), "doc", tags=tag)
                else:
                    await provider.delete_many(chosen)
            except StorageError as exc:
                failures.append(exc)

    await asyncio.gather(*(writer(number) for number in range(writers)))
    return failures


@pytest.mark.redis
@pytest.mark.watchdog(120)
async def test_writers_changing_the_same_items_tags_are_not_turned_away_on_one_server(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    # One server routes nothing, yet writes asked for their keys again and again under
    # contention, then gave up with a "connection" error: 23% of 20 writers' batches.
    provider = RedisStorageProvider(port=redis_port, namespace=fresh_namespace())
    made.append(provider)
    assert await _contend(provider, writers=10, keys=10, seconds=2) == []
    assert (await provider.check()).ok


@pytest.mark.redis
@pytest.mark.watchdog(120)
async def test_writers_changing_the_same_items_tags_get_through_on_a_cluster(
    redis_cluster: list[int], made: list[RedisStorageProvider]
) -> None:
    provider = RedisStorageProvider(cluster_nodes=[f"127.0.0.1:{redis_cluster[0]}"], namespace=fresh_namespace())
    made.append(provider)
    assert await _contend(provider, writers=4, keys=10, seconds=2) == []
    assert (await provider.check()).ok


@pytest.mark.redis
@pytest.mark.watchdog(120)
async def test_each_delete_batch_declares_only_its_own_items_keys(tmp_path: Any, redis_starter: Any) -> None:
    # delete_matching declared the posting sets of every match of the shard in every batch:
    # items with tags of their own made each script's work grow with all the matches
    # (30 ms a batch for 100k matches).
    process, port = redis_starter(tmp_path, None, "--slowlog-log-slower-than", "0", "--slowlog-max-len", "100000")
    provider = RedisStorageProvider(port=port, namespace=fresh_namespace())
    try:
        for start in range(0, 2000, 500):
            for n in range(start, start + 500):
                await provider.save(f"k{n}", n, "doc", tags={"own": str(n), "all": "yes"})
        with redis.Redis(port=port) as admin:
            admin.slowlog_reset()
            assert await provider.delete_matching(StorageQuery(tags={"all": "yes"})) == 2000
            keys = [
                int(entry["command"].split()[2])
                for entry in admin.slowlog_get(100_000)
                if entry["command"].startswith(b"EVALSHA")
            ]
        # 6 of the shard's own, then per item its record, content type and two tags, at most
        assert keys and max(keys) <= 6 + 200 * 4, max(keys)
    finally:
        await provider.cleanup()
        process.kill()
        process.wait()


@pytest.mark.redis
@pytest.mark.watchdog(60)
async def test_a_server_busy_with_another_clients_script_is_waited_for(tmp_path: Any, redis_starter: Any) -> None:
    # BUSY (another client's long script) came back as a plain StorageError, not retried.
    from unistore import StorageConnectionError

    process, port = redis_starter(tmp_path, None, "--busy-reply-threshold", "50")
    provider = RedisStorageProvider(port=port, namespace=fresh_namespace())
    spin = "local start = redis.call('TIME') repeat local now = redis.call('TIME') until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1])"  # noqa: E501

    def busy(micros: int) -> threading.Thread:
        def run() -> None:
            with redis.Redis(port=port) as other:
                other.eval(spin, 0, micros)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    try:
        await provider.save("k", 1, "doc")
        thread = busy(150_000)
        await asyncio.sleep(0.08)  # past the threshold: others get BUSY
        assert (await provider.load("k")).data == 1  # waited for
        thread.join()
        thread = busy(3_000_000)
        await asyncio.sleep(0.08)
        with pytest.raises(StorageConnectionError, match="BUSY"):  # past the retries: one a caller may retry
            await provider.load("k")
        thread.join()
    finally:
        await provider.cleanup()
        process.kill()
        process.wait()
