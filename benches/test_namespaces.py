"""Namespaces: a store's cost must not follow how many namespaces it holds.

Two stores with the same 300 items (the ~200-byte record): one holds them all
in one namespace, the other one item in each of 300 namespaces, each opened
once by an engine of this process and kept open while the benchmarks run
(layout v1 gave every namespace its own LMDB databases, and LMDB makes every
transaction pay for every open database). The namespace measured ("bench") is
the last one opened. Loads and saves go through the engine and through the
manager; saves (durability ``"none"``, fresh keys, no tags) are also set
against raw py-lmdb in the same run: one write transaction, one ``put`` of
``msgpack.packb`` per save. BATCH operations per round; saves run a fixed
number of rounds, so both stores of a pair grow alike.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest

from unistore import MetricsManager, UnifiedStorageManager
from unistore.providers import LmdbEngine, LmdbStorageProvider

NAMESPACES = 300
#: Rounds of BATCH saves: fixed, so the two stores of a pair grow by the same items.
SAVE_ROUNDS = 30
_numbers = itertools.count()


class Store:
    """One store of the comparison: its engines (all open), the measured one and a manager on it."""

    def __init__(self, path: Path, namespaces: int, record: dict[str, Any]) -> None:
        self.namespaces = namespaces
        others = [LmdbEngine(path, namespace=f"tenant-{n:03d}", durability="none") for n in range(namespaces - 1)]
        for other in others:
            other.save("fill:0", record, "user")
        self.engine = LmdbEngine(path, namespace="bench", durability="none")
        self.engine.save("user:1", record, "user")
        for n in range(NAMESPACES - namespaces):  # the same item count in both stores
            self.engine.save(f"fill:{n}", record, "user")
        self.engines = [*others, self.engine]
        assert len({engine.record_key(b"") for engine in self.engines}) == namespaces  # distinct prefixes
        self.provider = LmdbStorageProvider(path, namespace="bench", durability="none")
        self.manager = UnifiedStorageManager(metrics=MetricsManager())
        self.manager.register_provider("user", self.provider)

    def close(self) -> None:
        self.provider.engine.close()
        for engine in self.engines:
            engine.close()


@pytest.fixture(scope="module")
def stores(workdir: Path, record: dict[str, Any]) -> Iterator[dict[int, Store]]:
    """Both stores, open together for the whole module."""
    opened = {count: Store(workdir / f"namespaces-{count}", count, record) for count in (1, NAMESPACES)}
    yield opened
    for store in opened.values():
        store.close()


COUNTS = pytest.mark.parametrize("count", [1, NAMESPACES], ids=["1ns", f"{NAMESPACES}ns"])


def per_op(benchmark: Any, batch: int, count: int) -> None:
    benchmark.extra_info["batch"] = batch
    benchmark.extra_info["namespaces"] = count


# -- load ---------------------------------------------------------------------------


@COUNTS
@pytest.mark.benchmark(group="namespaces-load-engine")
def test_ns_load_engine(
    benchmark: Any, stores: dict[int, Store], count: int, batch: int, record: dict[str, Any]
) -> None:
    engine = stores[count].engine

    def reads() -> Any:
        for _ in range(batch):
            item = engine.load("user:1")
        return item.data

    per_op(benchmark, batch, count)
    assert benchmark(reads) == record


@COUNTS
@pytest.mark.benchmark(group="namespaces-load-manager")
def test_ns_load_manager(
    benchmark: Any,
    stores: dict[int, Store],
    count: int,
    batch: int,
    record: dict[str, Any],
    loop: asyncio.AbstractEventLoop,
) -> None:
    manager = stores[count].manager

    async def reads() -> Any:
        for _ in range(batch):
            item = await manager.load("user:1", "user")
        return item.data

    per_op(benchmark, batch, count)
    assert benchmark(lambda: loop.run_until_complete(reads())) == record


# -- save, durability "none" --------------------------------------------------------------


@COUNTS
@pytest.mark.benchmark(group="namespaces-save-none-engine")
def test_ns_save_none_engine(
    benchmark: Any, stores: dict[int, Store], count: int, batch: int, record: dict[str, Any]
) -> None:
    engine = stores[count].engine

    def saves() -> None:
        for _ in range(batch):
            engine.save(f"s:{next(_numbers)}", record, "user")

    per_op(benchmark, batch, count)
    benchmark.pedantic(saves, rounds=SAVE_ROUNDS, iterations=1, warmup_rounds=1)


@COUNTS
@pytest.mark.benchmark(group="namespaces-save-none-manager")
def test_ns_save_none_manager(
    benchmark: Any,
    stores: dict[int, Store],
    count: int,
    batch: int,
    record: dict[str, Any],
    loop: asyncio.AbstractEventLoop,
) -> None:
    manager = stores[count].manager

    async def saves() -> None:
        for _ in range(batch):
            await manager.save(f"s:{next(_numbers)}", record, "user")

    per_op(benchmark, batch, count)
    benchmark.pedantic(lambda: loop.run_until_complete(saves()), rounds=SAVE_ROUNDS, iterations=1, warmup_rounds=1)


# -- manager.save against raw py-lmdb, durability "none" ----------------------------------------


@pytest.mark.benchmark(group="save-none-vs-raw")
def test_save_none_raw_lmdb_txn_put_packb(benchmark: Any, workdir: Path, batch: int, record: dict[str, Any]) -> None:
    env = lmdb.open(str(workdir / "raw-none"), max_dbs=2, map_size=1 << 30, sync=False, metasync=False)
    db = env.open_db(b"records")

    def puts() -> None:
        for _ in range(batch):
            with env.begin(write=True, db=db) as txn:
                txn.put(b"s:%d" % next(_numbers), msgpack.packb(record))

    benchmark.extra_info["batch"] = batch
    benchmark.pedantic(puts, rounds=SAVE_ROUNDS, iterations=1, warmup_rounds=1)
    env.close()


@pytest.mark.benchmark(group="save-none-vs-raw")
def test_save_none_manager_fresh_store(
    benchmark: Any,
    workdir: Path,
    batch: int,
    record: dict[str, Any],
    loop: asyncio.AbstractEventLoop,
) -> None:
    provider = LmdbStorageProvider(workdir / "manager-none", namespace="bench", durability="none")
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("user", provider)

    async def saves() -> None:
        for _ in range(batch):
            await manager.save(f"s:{next(_numbers)}", record, "user")

    benchmark.extra_info["batch"] = batch
    benchmark.pedantic(lambda: loop.run_until_complete(saves()), rounds=SAVE_ROUNDS, iterations=1, warmup_rounds=1)
    provider.engine.close()


@pytest.mark.benchmark(group="save-none-vs-raw")
def test_save_none_raw_lmdb_index_entries(benchmark: Any, workdir: Path, batch: int, record: dict[str, Any]) -> None:
    """The floor the layout sets: raw py-lmdb writing what one save must write in one
    transaction (the record, its id, its content-type posting, its created and updated
    entries, after reading the key's old record), no unistore code."""
    env = lmdb.open(str(workdir / "raw-entries"), max_dbs=8, map_size=1 << 30, sync=False, metasync=False)
    with env.begin(write=True) as txn:
        records, ids, created, updated = (
            env.open_db(name, txn=txn) for name in (b"records", b"ids", b"created", b"updated")
        )
        types = env.open_db(b"types", txn=txn, dupsort=True, dupfixed=True)
    prefix = b"\x00\x00\x00\x01"

    def saves() -> None:
        for _ in range(batch):
            n = next(_numbers)
            key, sid = prefix + b"s:%d" % n, n.to_bytes(8, "big")
            with env.begin(write=True) as txn:
                txn.get(key, db=records)
                txn.put(key, msgpack.packb(record), db=records)
                txn.put(prefix + sid, key[4:], db=ids)
                txn.put(prefix + b"user", sid, db=types)
                now = time.time_ns().to_bytes(8, "big")
                txn.put(prefix + now + sid, b"", db=created)
                txn.put(prefix + now + sid, b"", db=updated)

    benchmark.extra_info["batch"] = batch
    benchmark.pedantic(saves, rounds=SAVE_ROUNDS, iterations=1, warmup_rounds=1)
    env.close()
