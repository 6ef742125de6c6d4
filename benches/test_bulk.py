"""Bulk operations: save_many and load_many against the raw engine doing the same in one transaction."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest

from unistore import MetricsManager, UnifiedStorageManager
from unistore.providers import LmdbStorageProvider

SAVES = 10_000
LOADS = 1000
_rounds = itertools.count()


@pytest.fixture(scope="module")
def bulk_manager(workdir: Path) -> Iterator[UnifiedStorageManager]:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    provider = LmdbStorageProvider(workdir / "bulk", namespace="bench", durability="none")
    manager.register_provider("user", provider)
    yield manager
    provider.engine.close()


def fresh_items(record: dict[str, Any], count: int) -> dict[str, Any]:
    """``count`` new keys: every round writes items that do not exist yet."""
    round_number = next(_rounds)
    return {f"user:{round_number:04d}:{n:06d}": record for n in range(count)}


@pytest.mark.benchmark(group="save-many-10k")
def test_save_many_raw_lmdb_puts_packb_one_txn(benchmark: Any, workdir: Path, record: dict[str, Any]) -> None:
    env = lmdb.open(str(workdir / "raw-bulk"), max_dbs=2, map_size=1 << 32, sync=False)
    db = env.open_db(b"records")

    def puts(items: dict[str, Any]) -> None:
        with env.begin(write=True, db=db) as txn:
            for key, data in items.items():
                txn.put(key.encode(), msgpack.packb(data))

    benchmark.extra_info["batch"] = SAVES
    benchmark.pedantic(puts, setup=lambda: ((fresh_items(record, SAVES),), {}), rounds=10, iterations=1)
    env.close()


@pytest.mark.benchmark(group="save-many-10k")
def test_save_many_manager(
    benchmark: Any, bulk_manager: UnifiedStorageManager, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> None:
    def save_many(items: dict[str, Any]) -> None:
        saved = loop.run_until_complete(bulk_manager.save_many(items, "user", tags={"role": "admin"}))
        assert len(saved) == SAVES

    benchmark.extra_info["batch"] = SAVES
    benchmark.pedantic(save_many, setup=lambda: ((fresh_items(record, SAVES),), {}), rounds=10, iterations=1)


@pytest.mark.benchmark(group="save-many-10k")
def test_save_many_sequential_manager_saves(
    benchmark: Any, bulk_manager: UnifiedStorageManager, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> None:
    """The same items through a loop of single saves: what save_many replaces."""

    async def saves(items: dict[str, Any]) -> None:
        for key, data in items.items():
            await bulk_manager.save(key, data, "user", tags={"role": "admin"})

    benchmark.extra_info["batch"] = SAVES
    benchmark.pedantic(
        lambda items: loop.run_until_complete(saves(items)),
        setup=lambda: ((fresh_items(record, SAVES),), {}),
        rounds=3,
        iterations=1,
    )


@pytest.fixture(scope="module")
def load_keys(
    bulk_manager: UnifiedStorageManager, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> list[str]:
    items = fresh_items(record, LOADS)
    loop.run_until_complete(bulk_manager.save_many(items, "user"))
    return list(items)


@pytest.fixture(scope="module")
def raw_loads(workdir: Path, record: dict[str, Any], load_keys: list[str]) -> Iterator[tuple[Any, Any]]:
    env = lmdb.open(str(workdir / "raw-load-many"), max_dbs=2, map_size=1 << 30)
    db = env.open_db(b"records")
    with env.begin(write=True, db=db) as txn:
        for key in load_keys:
            txn.put(key.encode(), msgpack.packb(record))
    yield env, db
    env.close()


@pytest.mark.benchmark(group="load-many-1000")
def test_load_many_raw_lmdb_gets_unpackb_one_txn(
    benchmark: Any, raw_loads: tuple[Any, Any], load_keys: list[str], record: dict[str, Any]
) -> None:
    env, db = raw_loads
    encoded = [key.encode() for key in load_keys]

    def gets() -> dict[bytes, Any]:
        with env.begin(db=db) as txn:
            return {key: msgpack.unpackb(txn.get(key)) for key in encoded}

    benchmark.extra_info["batch"] = LOADS
    found = benchmark(gets)
    assert len(found) == LOADS and found[encoded[0]] == record


@pytest.mark.benchmark(group="load-many-1000")
def test_load_many_engine(
    benchmark: Any, bulk_manager: UnifiedStorageManager, workdir: Path, load_keys: list[str], record: dict[str, Any]
) -> None:
    engine = LmdbStorageProvider(workdir / "bulk", namespace="bench", durability="none").engine  # the same store
    benchmark.extra_info["batch"] = LOADS
    found = benchmark(engine.load_many, load_keys)
    assert len(found) == LOADS and found[load_keys[0]].data == record


@pytest.mark.benchmark(group="load-many-1000")
def test_load_many_manager(
    benchmark: Any,
    bulk_manager: UnifiedStorageManager,
    loop: asyncio.AbstractEventLoop,
    load_keys: list[str],
    record: dict[str, Any],
) -> None:
    benchmark.extra_info["batch"] = LOADS
    found = benchmark(lambda: loop.run_until_complete(bulk_manager.load_many(load_keys, "user")))
    assert len(found) == LOADS and found[load_keys[0]].data == record
