"""load: unistore against raw py-lmdb and diskcache, BATCH reads per round."""

from __future__ import annotations

import asyncio
from typing import Any

import diskcache
import msgpack
import pytest

from unistore import UnifiedStorageManager
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
