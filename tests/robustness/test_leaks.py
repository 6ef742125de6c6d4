"""Leaks: what a provider or a manager opens (descriptors, threads, Redis connections)
is all given back by ``cleanup()``, over hundreds of open/use/close cycles."""

from __future__ import annotations

import gc
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from unistore import StorageQuery, UnifiedStorageManager
from unistore.metrics import MetricsManager
from unistore.providers import LmdbStorageProvider, MemoryStorageProvider, RedisStorageProvider

#: Open/use/close cycles per provider in the runs under coverage. Issue 12 asks for 500 of
#: each; a cycle on Redis costs ~17 ms (connecting and checking the namespace's shard
#: count), on a cluster ~60 ms, through the manager ~25 ms (measured on the 2-core CI
#: machine), so those runs take fewer, and ``scripts/long`` (run by ``scripts/test`` too,
#: without coverage) sets UNISTORE_LEAK_CYCLES=500 for all of them.
CI_CYCLES = {
    "memory": 500,
    "lmdb": 300,
    "redis": 60,
    "redis-near-cache": 40,
    "redis-cluster": 20,
    "redis-cluster-near-cache": 10,
    "manager": 40,
}
FULL = os.environ.get("UNISTORE_LEAK_CYCLES")


def test_a_resource_warning_fails_the_suite(request: pytest.FixtureRequest) -> None:
    assert "error" in request.config.getini("filterwarnings")
    with pytest.raises(ResourceWarning):
        warnings.warn("an unclosed file", ResourceWarning, stacklevel=1)


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _redis_clients(ports: list[int]) -> list[int]:
    counts = []
    for port in ports:
        with redis.Redis(port=port) as admin:
            counts.append(len(admin.client_list()) - 1)  # less this one
    return counts


def _usage(ports: list[int]) -> tuple[int, int, int, list[int]]:
    """Descriptors, Python threads, native threads and each Redis server's clients, less
    the threads of the event loop's default executor (``asyncio.to_thread``'s): a pool
    the loop owns, that grows to its bound as it likes and that the loop shuts down."""
    gc.collect()
    pool = sum(thread.name.startswith("asyncio_") for thread in threading.enumerate())
    return _descriptors(), threading.active_count() - pool, _native_threads() - pool, _redis_clients(ports)


@pytest.mark.watchdog(300)
@pytest.mark.parametrize("kind", list(CI_CYCLES))
async def test_cleanup_gives_back_everything_it_took(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    ports: list[int] = []
    if kind in ("redis", "redis-near-cache", "manager"):
        ports.append(request.getfixturevalue("redis_port"))
    if kind.startswith("redis-cluster"):
        ports.extend(request.getfixturevalue("redis_cluster"))
    namespace = uuid.uuid4().hex

    def redis_provider(**settings: Any) -> RedisStorageProvider:
        return RedisStorageProvider({"host": "127.0.0.1", "port": ports[0], "namespace": namespace, **settings})

    def cluster_provider(**settings: Any) -> RedisStorageProvider:
        nodes = [f"127.0.0.1:{port}" for port in ports]
        return RedisStorageProvider(cluster_nodes=nodes, namespace=namespace, shards=2, **settings)

    makers: dict[str, Callable[[], Any]] = {
        "memory": lambda: MemoryStorageProvider(namespace=namespace),
        "lmdb": lambda: LmdbStorageProvider(tmp_path / "store", namespace=namespace, durability="none"),
        "redis": redis_provider,
        "redis-near-cache": lambda: redis_provider(near_cache=10),  # (its tracking connections too)
        "redis-cluster": cluster_provider,
        "redis-cluster-near-cache": lambda: cluster_provider(near_cache=10),
    }

    async def cycle(number: int) -> None:
        if kind == "manager":
            manager = UnifiedStorageManager(metrics=MetricsManager())
            manager.register_provider(
                "a", LmdbStorageProvider(tmp_path / "store", namespace=namespace, durability="none")
            )
            manager.register_provider("b", redis_provider())
            manager.register_provider("c", MemoryStorageProvider())
            for content_type in ("a", "b", "c"):
                await manager.save_many({"k": number, "j": number}, content_type, tags={"t": "1"})
                assert (await manager.load("k", content_type)).data == number
            assert len([r async for r in manager.search(StorageQuery(tags={"t": "1"}, limit=5))]) == 5
            await manager.cleanup()
            return
        provider = makers[kind]()
        await provider.save_many({"k": number, "j": number}, "t", tags={"t": "1"})
        assert (await provider.load("k")).data == number
        assert (await provider.load_many(["k"]))["k"].data == number  # (a hit, with a near cache)
        assert len([r async for r in provider.search(StorageQuery(pattern="*", limit=1))]) == 1
        assert await provider.delete("j") is True
        await provider.cleanup()

    await cycle(-1)  # imports, the loop's own descriptors, the first connection of a pool class
    cycles = int(FULL) if FULL else CI_CYCLES[kind]
    before = _usage(ports)
    started = time.perf_counter()
    for number in range(cycles):
        await cycle(number)
    per_cycle = (time.perf_counter() - started) / cycles
    assert _usage(ports) == before, kind
    # The cost, for the CI budget (shown with -s or on failure).
    print(f"{kind}: {per_cycle * 1000:.2f} ms per cycle")
