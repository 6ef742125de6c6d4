"""Order, pages and count on every provider, beyond the conformance suite: ties on one
instant (times set by restore_many), one stream over providers of different backends, and
the count of a path that can meet an item twice."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from helpers import UTC, Factory
from unistore import MetricsManager, StorageItem, StorageMetadata, StorageQuery, UnifiedStorageManager
from unistore.providers import LmdbStorageProvider, RedisStorageProvider

AT = datetime(2026, 6, 1, tzinfo=UTC)


def made_at(key: str, content_type: str, created: datetime, updated: datetime) -> StorageItem[Any]:
    """An item as another store held it, with these times (for restore_many)."""
    metadata = StorageMetadata(uuid.uuid4(), key, content_type, created, updated, None, {"all": "yes"})
    return StorageItem({"key": key}, metadata)


async def test_ties_on_an_instant_order_by_key_then_content_type(provider_factory: Factory) -> None:
    provider = provider_factory()
    later = AT + timedelta(microseconds=1)
    items = [
        made_at("m", "t", AT, later),
        made_at("b", "t", AT, AT),
        made_at("é", "t", AT, AT),
        made_at("a", "t", later, AT),
        made_at("z", "t", AT, later),
        made_at("c", "t", AT - timedelta(days=1), AT),
    ]
    assert await provider.restore_many(items) == len(items)
    query = StorageQuery(tags={"all": "yes"})

    async def keys(order_by: str, limit: int | None = None) -> list[str]:
        ordered = StorageQuery(tags={"all": "yes"}, order_by=order_by, limit=limit)
        return [result.item.metadata.key async for result in provider.search(ordered)]

    assert await keys("created_at") == ["c", "b", "m", "z", "é", "a"]
    assert await keys("-created_at") == ["a", "é", "z", "m", "b", "c"]
    assert await keys("updated_at") == ["a", "b", "c", "é", "m", "z"]
    assert await keys("-updated_at", 3) == ["z", "m", "é"]
    walked, cursor = [], None
    for _ in range(10):
        page = await provider.page(StorageQuery(tags={"all": "yes"}, order_by="created_at"), 2, cursor)
        walked += [result.item.metadata.key for result in page.results]
        if page.next is None:
            break
        cursor = page.next
    assert walked == await keys("created_at")  # a page boundary inside the tie loses nothing
    assert await provider.count(query) == len(items)


@pytest.mark.redis
async def test_one_stream_over_an_lmdb_and_a_redis_provider(tmp_path: Path, redis_port: int) -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    lmdb = LmdbStorageProvider(tmp_path / "store", durability="none")
    shared = RedisStorageProvider({"port": redis_port, "namespace": uuid.uuid4().hex, "shards": 3})
    manager.register_provider("local", lmdb)
    manager.register_provider("shared", shared)
    async with manager:
        await lmdb.restore_many([made_at(f"k{n:02}", "local", AT + timedelta(seconds=n), AT) for n in range(0, 20, 2)])
        await shared.restore_many(
            [made_at(f"k{n:02}", "shared", AT + timedelta(seconds=n), AT) for n in range(1, 20, 2)]
        )
        await shared.restore_many([made_at("k04", "shared", AT, AT)])  # the same key in both
        found = [
            (r.item.metadata.key, r.item.metadata.content_type)
            async for r in manager.search(StorageQuery(order_by="-created_at"))
        ]
        expected = sorted(
            [(f"k{n:02}", "local", n) for n in range(0, 20, 2)]
            + [(f"k{n:02}", "shared", n) for n in range(1, 20, 2)]
            + [("k04", "shared", 0)],
            key=lambda entry: (entry[2], entry[0].encode(), entry[1].encode()),
            reverse=True,
        )
        assert found == [(key, kind) for key, kind, _ in expected]
        walked, cursor = [], None
        for _ in range(20):
            page = await manager.page(StorageQuery(order_by="-created_at"), 3, cursor)
            walked += [(r.item.metadata.key, r.item.metadata.content_type) for r in page.results]
            if page.next is None:
                break
            cursor = page.next
        assert walked == found
        assert await manager.count(StorageQuery()) == 21
        by_key = [
            r.item.metadata.content_type async for r in manager.search(StorageQuery(pattern="k04", order_by="key"))
        ]
        assert by_key == ["local", "shared"]  # one key in two providers: by content type


async def test_a_count_on_the_expiry_path_counts_each_item_once(tmp_path: Path) -> None:
    provider = LmdbStorageProvider(tmp_path / "store", durability="none")
    soon = datetime.now(UTC) + timedelta(days=1)
    await provider.save_many({f"e{n}": n for n in range(5)}, "t", expires_at=soon)
    await provider.save_many({f"n{n}": n for n in range(300)}, "t")
    query = StorageQuery(expires_before=soon + timedelta(hours=1))
    assert (await provider.explain(query)).path == "expires"
    assert await provider.count(query) == 5
    assert await provider.count(StorageQuery(expires_before=soon + timedelta(hours=1), limit=3)) == 3
    await provider.cleanup()
