"""Fixtures for the benchmarks: the anchors (raw py-lmdb, diskcache) and unistore,
fed the same ~200-byte record. Every benchmark runs BATCH operations per round,
so per-operation figures are the round time divided by BATCH."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache
import lmdb
import msgpack
import pytest

from unistore import MetricsManager, UnifiedStorageManager
from unistore.providers import LmdbStorageProvider
from unistore.providers.lmdb import LmdbEngine

BATCH = 1000

#: A typical record: about 200 bytes once packed.
RECORD: dict[str, Any] = {
    "id": 1234567,
    "name": "Ada Lovelace",
    "email": "ada.lovelace@example.org",
    "active": True,
    "score": 97.25,
    "roles": ["admin", "analyst", "dev"],
    "address": {"street": "12 St James's Square", "city": "London", "postcode": "SW1Y 4JH"},
    "notes": "first programmer; wrote the notes on the Analytical Engine",
}
assert 180 <= len(msgpack.packb(RECORD)) <= 240


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def raw_lmdb(workdir: Path) -> Iterator[tuple[Any, Any]]:
    env = lmdb.open(str(workdir / "raw"), max_dbs=2, map_size=1 << 30)
    db = env.open_db(b"records")
    with env.begin(write=True, db=db) as txn:
        txn.put(b"user:1", msgpack.packb(RECORD))
    yield env, db
    env.close()


@pytest.fixture(scope="session")
def cache(workdir: Path) -> Iterator[diskcache.Cache]:
    cache = diskcache.Cache(str(workdir / "diskcache"))
    cache.set("user:1", RECORD)
    yield cache
    cache.close()


@pytest.fixture(scope="session")
def engine(workdir: Path) -> Iterator[LmdbEngine]:
    engine = LmdbEngine(workdir / "unistore", namespace="bench")
    engine.save("user:1", RECORD, "user", tags={"role": "admin"})
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def manager(workdir: Path, engine: LmdbEngine) -> UnifiedStorageManager:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("user", LmdbStorageProvider(workdir / "unistore", namespace="bench"))
    return manager


@pytest.fixture(scope="session")
def batch() -> int:
    """Operations per benchmark round."""
    return BATCH


@pytest.fixture(scope="session")
def record() -> dict[str, Any]:
    """The record every benchmark stores and loads."""
    return RECORD
