"""The near cache: a hot ``manager.load`` through a Redis provider with a near cache against
the same load from the LMDB provider, and a cold one (a miss) against a load without the
near cache, side by side in one run (BATCH sequential awaits a round)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from unistore import MetricsManager, UnifiedStorageManager
from unistore.providers import RedisStorageProvider

#: Keys the cold benchmarks load, each once: more than their rounds ever reach (half each).
COLD_KEYS = 60_000
#: Loads a round of the cold benchmarks, and their rounds: 10,000 keys each.
COLD_BATCH, COLD_ROUNDS = 200, 50


def redis_manager(port: int, namespace: str, **settings: Any) -> tuple[UnifiedStorageManager, RedisStorageProvider]:
    provider = RedisStorageProvider(port=port, namespace=namespace, **settings)
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("user", provider)
    return manager, provider


@pytest.fixture(scope="module")
def near(
    redis_port: int, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> Iterator[tuple[UnifiedStorageManager, UnifiedStorageManager]]:
    """Two managers on one namespace holding ``user:1`` and COLD_KEYS more: one through a
    provider with a near cache, one through a provider without."""
    namespace = uuid.uuid4().hex
    cached, with_cache = redis_manager(redis_port, namespace, near_cache=COLD_KEYS + 10)
    plain, without = redis_manager(redis_port, namespace)
    loop.run_until_complete(plain.save("user:1", record, "user", tags={"role": "admin"}))
    for start in range(0, COLD_KEYS, 5000):
        items = {f"cold:{n}": record for n in range(start, start + 5000)}
        loop.run_until_complete(without.save_many(items, "user"))
    yield cached, plain
    loop.run_until_complete(without.drop_namespace())
    loop.run_until_complete(with_cache.cleanup())
    loop.run_until_complete(without.cleanup())


def loads(manager: UnifiedStorageManager, keys: Iterator[str], batch: int) -> Any:
    async def run() -> Any:
        for _ in range(batch):
            item = await manager.load(next(keys), "user")
        return item.data

    return run


@pytest.mark.benchmark(group="near-cache-hot-load")
def test_near_cache_hot_load(
    benchmark: Any, near: Any, batch: int, record: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> None:
    cached, _ = near
    reads = loads(cached, itertools.repeat("user:1"), batch)
    assert loop.run_until_complete(reads()) == record  # (the first: a miss, kept)
    benchmark.extra_info["batch"] = batch
    assert benchmark(lambda: loop.run_until_complete(reads())) == record


@pytest.mark.benchmark(group="near-cache-hot-load")
def test_near_cache_hot_load_lmdb_manager(
    benchmark: Any, manager: UnifiedStorageManager, batch: int, record: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> None:
    reads = loads(manager, itertools.repeat("user:1"), batch)
    benchmark.extra_info["batch"] = batch
    assert benchmark(lambda: loop.run_until_complete(reads())) == record


@pytest.mark.benchmark(group="near-cache-cold-load")
def test_near_cache_cold_load(
    benchmark: Any, near: Any, record: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> None:
    cached, _ = near
    keys = (f"cold:{n}" for n in range(0, COLD_KEYS, 2))  # each loaded once: every load a miss
    benchmark.extra_info["batch"] = COLD_BATCH
    reads = loads(cached, keys, COLD_BATCH)
    result = benchmark.pedantic(lambda: loop.run_until_complete(reads()), rounds=COLD_ROUNDS)
    assert result == record


@pytest.mark.benchmark(group="near-cache-cold-load")
def test_near_cache_cold_load_without_it(
    benchmark: Any, near: Any, record: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> None:
    _, plain = near
    keys = (f"cold:{n}" for n in range(1, COLD_KEYS, 2))
    benchmark.extra_info["batch"] = COLD_BATCH
    reads = loads(plain, keys, COLD_BATCH)
    result = benchmark.pedantic(lambda: loop.run_until_complete(reads()), rounds=COLD_ROUNDS)
    assert result == record
