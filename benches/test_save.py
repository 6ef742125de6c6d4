"""save: group commit against one durable transaction per save, and the raw engine."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest

from unistore.providers import LmdbStorageProvider

SAVES = 64
# Enough rounds that the minimum and the median mean something on a shared machine,
# where one fsync can take from 0.2 to 2 ms.
ROUNDS = 30
_numbers = itertools.count()


@pytest.fixture(scope="module")
def durable(workdir: Path) -> Iterator[LmdbStorageProvider]:
    provider = LmdbStorageProvider(workdir / "durable", durability="sync")
    yield provider
    provider.engine.close()


@pytest.mark.benchmark(group="save-64-durable")
def test_save_raw_lmdb_durable_txn_per_put(benchmark: Any, workdir: Path, record: dict[str, Any]) -> None:
    env = lmdb.open(str(workdir / "raw-durable"), max_dbs=2, map_size=1 << 30)
    db = env.open_db(b"records")
    value = msgpack.packb(record)

    def puts() -> None:
        for _ in range(SAVES):
            with env.begin(write=True, db=db) as txn:
                txn.put(b"k%d" % next(_numbers), value)

    benchmark.pedantic(puts, rounds=ROUNDS, iterations=1)
    env.close()


@pytest.mark.benchmark(group="save-64-durable")
def test_save_sequential_durable(
    benchmark: Any, durable: LmdbStorageProvider, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> None:
    async def saves() -> None:
        for _ in range(SAVES):
            await durable.save(f"seq{next(_numbers)}", record, "user", tags={"role": "admin"})

    benchmark.pedantic(lambda: loop.run_until_complete(saves()), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="save-64-durable")
def test_save_concurrent_durable_group_commit(
    benchmark: Any, durable: LmdbStorageProvider, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> None:
    async def saves() -> None:
        await asyncio.gather(
            *(durable.save(f"con{next(_numbers)}", record, "user", tags={"role": "admin"}) for _ in range(SAVES))
        )

    benchmark.pedantic(lambda: loop.run_until_complete(saves()), rounds=ROUNDS, iterations=1)
