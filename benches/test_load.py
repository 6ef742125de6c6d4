"""load: unistore against raw py-lmdb and diskcache, BATCH reads per round."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

import diskcache
import msgpack
import pytest

from unistore import SyncStorageManager, UnifiedStorageManager
from unistore.providers.lmdb import LmdbEngine

pytestmark = pytest.mark.benchmark(group="load")


def test_load_raw_lmdb_get_unpackb(
    benchmark: Any, batch: int, record: dict[str, Any], raw_lmdb: tuple[Any, Any]
) -> None:
    env, db = raw_lmdb

    def reads() -> Any:
        for _ in range(batch):
            with env.begin(db=db) as txn:
                value = msgpack.unpackb(txn.get(b"user:1"))
        return value

    assert benchmark(reads) == record


def test_load_diskcache_get(benchmark: Any, batch: int, record: dict[str, Any], cache: diskcache.Cache) -> None:
    def reads() -> Any:
        for _ in range(batch):
            value = cache.get("user:1")
        return value

    assert benchmark(reads) == record


def test_load_engine_sync(benchmark: Any, batch: int, record: dict[str, Any], engine: LmdbEngine) -> None:
    def reads() -> Any:
        for _ in range(batch):
            item = engine.load("user:1")
        return item.data

    assert benchmark(reads) == record


def test_load_manager_lmdb(
    benchmark: Any, batch: int, record: dict[str, Any], manager: UnifiedStorageManager, loop: asyncio.AbstractEventLoop
) -> None:
    async def reads() -> Any:
        for _ in range(batch):
            item = await manager.load("user:1", "user")
        return item.data

    assert benchmark(lambda: loop.run_until_complete(reads())) == record


def test_load_sync_manager_lmdb(
    benchmark: Any, batch: int, record: dict[str, Any], sync_manager: SyncStorageManager
) -> None:
    def reads() -> Any:
        for _ in range(batch):
            item = sync_manager.load("user:1", "user")
        return item.data

    assert benchmark(reads) == record


def test_load_interleaved_ratios(
    benchmark: Any,
    batch: int,
    record: dict[str, Any],
    raw_lmdb: tuple[Any, Any],
    engine: LmdbEngine,
    sync_manager: SyncStorageManager,
    manager: UnifiedStorageManager,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Each load against the raw read (py-lmdb get + unpackb, a read transaction each), so
    that machine noise falls on both sides alike: PAIRS pairs of rounds of BATCH loads, a
    round of the raw read right before each of ours; ``extra_info`` holds each median ratio
    and its 10th and 90th percentiles."""
    pairs = int(os.environ.get("UNISTORE_BENCH_PAIRS", "40"))
    env, db = raw_lmdb

    def raw() -> Any:
        for _ in range(batch):
            with env.begin(db=db) as txn:
                value = msgpack.unpackb(txn.get(b"user:1"))
        return value

    def by_engine() -> Any:
        for _ in range(batch):
            item = engine.load("user:1")
        return item.data

    def by_sync_manager() -> Any:
        for _ in range(batch):
            item = sync_manager.load("user:1", "user")
        return item.data

    async def reads() -> Any:
        for _ in range(batch):
            item = await manager.load("user:1", "user")
        return item.data

    def by_manager() -> Any:
        return loop.run_until_complete(reads())

    def timed(reading: Any) -> float:
        started = time.perf_counter()
        assert reading() == record
        return time.perf_counter() - started

    def measure() -> dict[str, list[float]]:
        ours = {"engine": by_engine, "sync_manager": by_sync_manager, "manager": by_manager}
        for reading in (raw, *ours.values()):
            timed(reading)
        return {name: sorted(timed(reading) / timed(raw) for _ in range(pairs)) for name, reading in ours.items()}

    ratios = benchmark.pedantic(measure, rounds=1, iterations=1)
    for name, found in ratios.items():
        tenth, ninetieth = found[int(0.1 * len(found))], found[min(int(0.9 * len(found)), len(found) - 1)]
        benchmark.extra_info[name] = [round(statistics.median(found), 3), round(tenth, 3), round(ninetieth, 3)]
