"""``count`` on LMDB: a query of tags and content type alone is counted from its posting
lists less the expired ids the expiry index holds; any other, or one with too many
expired items not purged yet, from the records' headers. Either way, the live matches."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from helpers import UTC
from unistore import StorageQuery
from unistore.providers import LmdbStorageProvider
from unistore.providers.lmdb import engine as lmdb_engine


@pytest.fixture
async def provider(tmp_path: Path) -> Any:
    provider = LmdbStorageProvider(tmp_path / "store", durability="none")
    yield provider
    await provider.cleanup()


async def live(provider: LmdbStorageProvider, query: StorageQuery) -> int:
    return len([result async for result in provider.search(query)])


QUERIES = [
    StorageQuery(tags={"t": "a"}),
    StorageQuery(tags={"t": "a", "u": "1"}),
    StorageQuery(content_type="doc"),
    StorageQuery(content_type="doc", tags={"u": "1"}),
    StorageQuery(tags={"t": "none"}),
    StorageQuery(tags={"t": "a"}, limit=3),
    StorageQuery(tags={"t": "a"}, pattern="k1*"),  # (not from the postings alone)
]


async def test_expired_items_not_purged_yet_are_not_counted(provider: LmdbStorageProvider) -> None:
    for query in QUERIES:  # nothing expires anywhere yet
        assert await provider.count(query) == await live(provider, query), query
    soon = datetime.now(UTC) + timedelta(milliseconds=50)
    await provider.save_many({f"k{n:02}": n for n in range(20)}, "doc", tags={"t": "a", "u": "1"})
    await provider.save_many({f"k{n:02}": n for n in range(20, 30)}, "doc", soon, {"t": "a", "u": "1"})
    await provider.save_many({f"k{n:02}": n for n in range(30, 40)}, "doc", soon, {"t": "b"})
    await provider.save_many({f"x{n:02}": n for n in range(10)}, "other", datetime(2100, 1, 1, tzinfo=UTC))
    assert [await provider.count(query) for query in QUERIES] == [30, 30, 40, 30, 0, 3, 10]
    await asyncio.sleep(0.06)  # 20 items expire; no write purges them
    assert [await provider.count(query) for query in QUERIES] == [20, 20, 20, 20, 0, 3, 10]
    for query in QUERIES:
        assert await provider.count(query) == await live(provider, query), query


async def test_more_expired_items_than_it_checks_are_counted_by_their_headers(
    provider: LmdbStorageProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lmdb_engine, "EXPIRED_COUNTED", 3)
    soon = datetime.now(UTC) + timedelta(milliseconds=50)
    await provider.save_many({f"k{n:02}": n for n in range(6)}, "doc", soon, {"t": "a"})
    await provider.save_many({f"k{n:02}": n for n in range(6, 10)}, "doc", tags={"t": "a"})
    await asyncio.sleep(0.06)
    assert await provider.count(StorageQuery(tags={"t": "a"})) == 4
    monkeypatch.setattr(lmdb_engine, "EXPIRED_COUNTED", 6)  # exactly as many as expired: still from the lists
    assert await provider.count(StorageQuery(tags={"t": "a"})) == 4


async def test_a_count_from_the_lists_trusts_the_index(provider: LmdbStorageProvider) -> None:
    # A record damaged on disk is counted by the index until check --repair removes it
    # (documented); the search skips it.
    await provider.save_many({"a": 1, "b": 2}, "doc", tags={"t": "a"})
    engine = provider.engine
    shared = engine.shared
    with shared.env.begin(write=True) as txn:
        txn.put(engine._prefix + b"b", b"\x01garbage", db=shared.dbs.records)
    query = StorageQuery(tags={"t": "a"})
    assert (await provider.count(query), await live(provider, query)) == (2, 1)
    await provider.check(repair=True)
    assert (await provider.count(query), await live(provider, query)) == (1, 1)
