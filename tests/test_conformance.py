"""One behaviour suite, run against every provider through ``provider_factory``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import RFC_4122, UUID

import pytest

from unistore import (
    ItemNotFoundError,
    MetricsManager,
    ProviderNotFoundError,
    StorageError,
    StorageMonitor,
    StorageProvider,
    StorageQuery,
    UnifiedStorageManager,
)

Factory = Callable[[], StorageProvider[Any]]
UTC = timezone.utc


async def keys_of(provider: StorageProvider[Any] | UnifiedStorageManager, **criteria: Any) -> set[str]:
    return {result.item.metadata.key async for result in provider.search(StorageQuery(**criteria))}


async def test_storage_system(provider_factory: Factory) -> None:
    """R065's validation test ("Validação"), unchanged but for how the provider is built."""
    # Setup
    manager = UnifiedStorageManager()
    monitor = StorageMonitor()

    # Register providers
    redis_provider = provider_factory()
    manager.register_provider("test", redis_provider)

    # Test save
    item = await manager.save("test_key", {"value": "test"}, "test", tags={"purpose": "test"})

    assert item.metadata.key == "test_key"
    assert item.data["value"] == "test"
    assert item.metadata.tags["purpose"] == "test"

    # Test load
    loaded = await manager.load("test_key", "test")
    assert loaded.data["value"] == "test"

    # Test search
    query = StorageQuery(content_type="test", tags={"purpose": "test"})

    results = []
    async for result in manager.search(query):
        results.append(result)

    assert len(results) == 1
    assert results[0].item.data["value"] == "test"

    # Test delete
    deleted = await manager.delete("test_key", "test")
    assert deleted

    # Test monitoring
    await monitor.record_operation("test", "save", True)
    await monitor.record_size("test", 1000)


async def test_save_returns_what_load_returns(provider_factory: Factory) -> None:
    provider = provider_factory()
    expires = datetime.now(UTC) + timedelta(hours=1)
    saved = await provider.save("k", {"n": 1, "t": (1, 2)}, "doc", expires_at=expires, tags={"z": "1", "a": "b"})
    loaded = await provider.load("k")
    assert saved == loaded
    assert repr(saved) == repr(loaded)  # to the order of the tags (by key) and the types of the values
    assert loaded.data == {"n": 1, "t": [1, 2]}  # tuples come back as lists
    meta = loaded.metadata
    assert isinstance(meta.id, UUID)
    assert (meta.id.version, meta.id.variant) == (4, RFC_4122)
    assert (meta.key, meta.content_type, meta.tags, meta.expires_at) == ("k", "doc", {"a": "b", "z": "1"}, expires)
    assert meta.created_at == meta.updated_at
    assert meta.created_at.tzinfo is UTC and meta.expires_at is not None and meta.expires_at.tzinfo is UTC


@pytest.mark.parametrize(
    "data",
    [
        None,
        True,
        0,
        -(2**63),
        2**64 - 1,
        1.5,
        "text é 字",
        b"\x00\xff bytes",
        [1, [2, [3]]],
        {"nested": {"list": [1, "a", None], 1: "int key", b"k": "bytes key"}},
        datetime(2024, 2, 29, 12, 30, 15, 123456, tzinfo=UTC),
        UUID("12345678-1234-5678-1234-567812345678"),
        {"when": [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]},
    ],
)
async def test_data_round_trips(provider_factory: Factory, data: Any) -> None:
    provider = provider_factory()
    await provider.save("k", data, "doc")
    loaded = (await provider.load("k")).data
    assert loaded == data
    assert type(loaded) is type(data)


async def test_datetimes_come_back_aware_utc(provider_factory: Factory) -> None:
    provider = provider_factory()
    plus_two = timezone(timedelta(hours=2))
    local_naive = datetime(2030, 1, 2, 3, 4, 5, 678901)
    aware = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=plus_two)
    await provider.save("k", {"naive": local_naive, "aware": aware}, "doc", expires_at=aware)
    item = await provider.load("k")
    assert item.data["aware"] == aware and item.data["aware"].tzinfo is UTC
    assert item.data["naive"] == local_naive.astimezone()  # naive means local time
    assert item.data["naive"].tzinfo is UTC
    assert item.metadata.expires_at == aware and item.metadata.expires_at.utcoffset() == timedelta(0)


async def test_upsert_keeps_id_and_created_at(provider_factory: Factory) -> None:
    provider = provider_factory()
    first = await provider.save("k", 1, "a", expires_at=datetime.now(UTC) + timedelta(hours=1), tags={"x": "1"})
    await asyncio.sleep(0.002)
    second = await provider.save("k", 2, "b", tags={"y": "2"})
    loaded = await provider.load("k")
    assert loaded == second
    assert loaded.data == 2
    assert loaded.metadata.id == first.metadata.id
    assert loaded.metadata.created_at == first.metadata.created_at
    assert loaded.metadata.updated_at > first.metadata.updated_at
    assert (loaded.metadata.content_type, loaded.metadata.tags, loaded.metadata.expires_at) == (
        "b",
        {"y": "2"},
        None,
    )
    # The old tags and content type no longer find it; the new ones do.
    assert await keys_of(provider, tags={"x": "1"}) == set()
    assert await keys_of(provider, content_type="a") == set()
    assert await keys_of(provider, tags={"y": "2"}, content_type="b") == {"k"}


async def test_saving_over_an_expired_item_makes_a_new_one(provider_factory: Factory) -> None:
    provider = provider_factory()
    old = await provider.save("k", 1, "a", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    new = await provider.save("k", 2, "a")
    assert new.metadata.id != old.metadata.id
    assert new.metadata.created_at >= old.metadata.created_at
    assert (await provider.load("k")).metadata.id == new.metadata.id


async def test_expired_items_are_invisible_at_once(provider_factory: Factory) -> None:
    provider = provider_factory()
    await provider.save("past", 1, "a", expires_at=datetime.now(UTC) - timedelta(microseconds=1), tags={"t": "v"})
    # Long enough that a slow fsync cannot eat it before the first check.
    await provider.save("soon", 2, "a", expires_at=datetime.now(UTC) + timedelta(milliseconds=600), tags={"t": "v"})
    with pytest.raises(ItemNotFoundError):
        await provider.load("past")
    assert await keys_of(provider, tags={"t": "v"}) == {"soon"}
    await asyncio.sleep(0.65)
    with pytest.raises(ItemNotFoundError):
        await provider.load("soon")
    assert await keys_of(provider) == set()
    assert await provider.delete("past") is False
    assert await provider.delete("soon") is False


async def test_missing_key(provider_factory: Factory) -> None:
    provider = provider_factory()
    with pytest.raises(ItemNotFoundError) as caught:
        await provider.load("nope")
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, StorageError)
    assert "nope" in str(caught.value)
    assert await provider.delete("nope") is False


async def test_delete_return_values(provider_factory: Factory) -> None:
    provider = provider_factory()
    await provider.save("k", 1, "a")
    assert await provider.delete("k") is True
    assert await provider.delete("k") is False
    with pytest.raises(ItemNotFoundError):
        await provider.load("k")


async def test_content_type_condition_on_the_provider(provider_factory: Factory) -> None:
    provider = provider_factory()
    await provider.save("k", 1, "a")
    assert (await provider.load("k", content_type="a")).data == 1
    with pytest.raises(ItemNotFoundError, match="content type 'b'"):
        await provider.load("k", content_type="b")
    assert await provider.delete("k", content_type="b") is False
    assert (await provider.load("k")).data == 1
    assert await provider.delete("k", content_type="a") is True


async def test_content_type_is_identity_through_the_manager(provider_factory: Factory) -> None:
    provider = provider_factory()
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("x", provider)
    manager.register_provider("y", provider)
    await manager.save("k", "stored as x", "x")
    with pytest.raises(ItemNotFoundError):
        await manager.load("k", "y")
    assert await manager.delete("k", "y") is False
    assert (await manager.load("k", "x")).data == "stored as x"
    # Fan-out visits the provider once even though two types route to it.
    assert [r.item.metadata.key async for r in manager.search(StorageQuery())] == ["k"]
    assert await manager.delete("k", "x") is True
    with pytest.raises(ProviderNotFoundError):
        await manager.load("k", "z")


async def test_content_types_may_be_str_subclasses(provider_factory: Factory) -> None:
    class ContentType(str):
        pass

    doc = ContentType("doc")
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider(doc, provider_factory())
    await manager.save("k", 1, doc)
    assert (await manager.load("k", "doc")).data == 1  # the plain str finds it too
    assert (await manager.load("k", doc)).metadata.content_type == "doc"
    assert [r.item.data async for r in manager.search(StorageQuery(content_type=doc))] == [1]
    assert await manager.delete("k", doc) is True


async def test_namespaces_are_separate_keyspaces(provider_factory: Factory) -> None:
    one, two = provider_factory(), provider_factory()
    await one.save("k", 1, "a")
    with pytest.raises(ItemNotFoundError):
        await two.load("k")
    assert await keys_of(two) == set()


async def seed_for_queries(provider: StorageProvider[Any]) -> dict[str, datetime]:
    """Five items with distinct created times; returns each one's created_at."""
    now = datetime.now(UTC)
    plan = [
        ("user:1", "user", {"role": "admin", "team": "red"}, now + timedelta(hours=1)),
        ("user:2", "user", {"role": "dev", "team": "red"}, now + timedelta(hours=2)),
        ("user:10", "user", {"role": "dev", "team": "blue"}, None),
        ("doc:1", "doc", {"team": "red"}, now + timedelta(hours=3)),
        ("doc:2", "doc", {}, None),
    ]
    created = {}
    for key, content_type, tags, expires in plan:
        item = await provider.save(key, {"key": key}, content_type, expires_at=expires, tags=tags)
        created[key] = item.metadata.created_at
        await asyncio.sleep(0.001)
    return created


async def test_every_query_field(provider_factory: Factory) -> None:
    provider = provider_factory()
    created = await seed_for_queries(provider)
    expiry = {r.item.metadata.key: r.item.metadata.expires_at async for r in provider.search(StorageQuery())}
    assert await keys_of(provider) == set(created)
    assert await keys_of(provider, pattern="user:?") == {"user:1", "user:2"}
    assert await keys_of(provider, pattern="user:*") == {"user:1", "user:2", "user:10"}
    assert await keys_of(provider, pattern="*:[12]") == {"user:1", "user:2", "doc:1", "doc:2"}
    assert await keys_of(provider, pattern="*:[^1]") == {"user:2", "doc:2"}
    assert await keys_of(provider, pattern="user") == set()
    assert await keys_of(provider, content_type="doc") == {"doc:1", "doc:2"}
    assert await keys_of(provider, tags={"team": "red"}) == {"user:1", "user:2", "doc:1"}
    assert await keys_of(provider, tags={"team": "red", "role": "dev"}) == {"user:2"}
    assert await keys_of(provider, tags={"team": "green"}) == set()
    assert await keys_of(provider, tags={}) == set(created)
    # Time bounds are inclusive at both ends.
    assert await keys_of(provider, created_after=created["user:10"]) == {"user:10", "doc:1", "doc:2"}
    assert await keys_of(provider, created_before=created["user:2"]) == {"user:1", "user:2"}
    assert await keys_of(provider, created_after=created["user:2"], created_before=created["user:2"]) == {"user:2"}
    assert await keys_of(provider, created_after=created["doc:2"] + timedelta(microseconds=1)) == set()
    # Items without expiry never meet an expires_* bound.
    assert await keys_of(provider, expires_after=datetime(1970, 1, 1, tzinfo=UTC)) == {
        "user:1",
        "user:2",
        "doc:1",
    }
    assert await keys_of(provider, expires_before=expiry["user:2"]) == {"user:1", "user:2"}
    assert await keys_of(provider, expires_after=expiry["user:2"], expires_before=expiry["user:2"]) == {"user:2"}
    assert await keys_of(provider, expires_after=expiry["doc:1"] + timedelta(microseconds=1)) == set()
    # Everything ANDs.
    assert await keys_of(
        provider, pattern="user:*", content_type="user", tags={"team": "red"}, expires_before=expiry["user:1"]
    ) == {"user:1"}


async def test_limit(provider_factory: Factory) -> None:
    provider = provider_factory()
    for n in range(10):
        await provider.save(f"k{n}", n, "a", tags={"all": "yes"})
    assert len([r async for r in provider.search(StorageQuery(tags={"all": "yes"}, limit=3))]) == 3
    assert [r async for r in provider.search(StorageQuery(limit=0))] == []
    assert len([r async for r in provider.search(StorageQuery(limit=100))]) == 10


async def test_results_carry_score_and_highlights(provider_factory: Factory) -> None:
    provider = provider_factory()
    await provider.save("k", 1, "a")
    [result] = [r async for r in provider.search(StorageQuery())]
    assert (result.score, result.highlights) == (1.0, [])


async def test_saving_during_search_is_safe(provider_factory: Factory) -> None:
    provider = provider_factory()
    for n in range(5):
        await provider.save(f"k{n}", n, "a")
    seen = set()
    async for result in provider.search(StorageQuery(pattern="k*")):
        seen.add(result.item.metadata.key)
        await provider.save(f"new{result.item.data}", 0, "a")
        await provider.delete(f"k{(result.item.data + 1) % 5}")
    assert seen  # whatever it saw, it finished without error
    assert await keys_of(provider, pattern="new*") == {f"new{n}" for n in range(5) if f"k{n}" in seen}


async def test_provider_is_usable_after_cleanup(provider_factory: Factory) -> None:
    provider = provider_factory()
    async with provider as entered:
        assert entered is provider
        await provider.save("k", 1, "a")
    await provider.cleanup()
    await provider.save("k2", 2, "a")
    assert (await provider.load("k2")).data == 2


async def test_unicode_keys_and_tags(provider_factory: Factory) -> None:
    provider = provider_factory()
    key = "ключ:" + "é" * 251  # 511 UTF-8 bytes: LMDB's own key limit, stored in the long-key form
    assert len(key.encode()) == 511
    await provider.save(key, 1, "тип", tags={"ярлык": "значение", "empty": ""})
    assert (await provider.load(key)).metadata.tags == {"ярлык": "значение", "empty": ""}
    assert await keys_of(provider, pattern="ключ:*", tags={"ярлык": "значение", "empty": ""}) == {key}
    assert await keys_of(provider, content_type="тип") == {key}


@pytest.mark.parametrize("size", [600, 5_000, 100_000])
async def test_keys_of_any_length(provider_factory: Factory, size: int) -> None:
    provider = provider_factory()
    head = "user:" + "k" * (size - 10)
    first, second = head + "aaaaa", head + "bbbbb"  # alike in all but their last bytes
    assert len(first.encode()) == size
    await provider.save(first, 1, "t", tags={"n": "1"})
    await provider.save(second, 2, "t", tags={"n": "2"})
    await provider.save("user:short", 3, "t")
    assert (await provider.load(first)).data == 1
    assert (await provider.load(second)).metadata.key == second
    assert await keys_of(provider, pattern="user:k*") == {first, second}
    assert await keys_of(provider, pattern=head + "a*") == {first}  # a literal prefix longer than any LMDB key
    assert await keys_of(provider, pattern="*bbbbb") == {second}
    assert await keys_of(provider, tags={"n": "2"}) == {second}
    await provider.save(first, 10, "t")  # an upsert of a long key
    assert (await provider.load(first)).data == 10
    assert await provider.delete(first) is True
    assert await provider.delete(first) is False
    with pytest.raises(ItemNotFoundError):
        await provider.load(first)
    assert (await provider.load(second)).data == 2
    assert await keys_of(provider, pattern="user:*") == {second, "user:short"}


async def test_long_content_types_and_tags(provider_factory: Factory) -> None:
    provider = provider_factory()
    long = "x" * 5000
    await provider.save("k", 1, long, tags={long: long})
    assert await keys_of(provider, content_type=long, tags={long: long}) == {"k"}
    assert await keys_of(provider, tags={long: long + "y"}) == set()


async def test_ids_are_unique(provider_factory: Factory) -> None:
    provider = provider_factory()
    ids = {(await provider.save(f"k{n}", n, "a")).metadata.id for n in range(50)}
    assert len(ids) == 50
