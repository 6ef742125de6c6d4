"""Bad input: each path raises its StorageError subclass, names the field, and writes nothing."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest

from helpers import Factory
from unistore import (
    ItemNotFoundError,
    MetricsManager,
    ProviderNotFoundError,
    SerializationError,
    StorageError,
    StorageQuery,
    UnifiedStorageManager,
    ValidationError,
)
from unistore.providers import MemoryStorageProvider

LATE = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))  # year 10000 in UTC

BAD_SAVES = [
    ({"key": ""}, ValidationError, "key must not be empty"),
    ({"key": 7}, ValidationError, "key must be a str"),
    ({"key": None}, ValidationError, "key must be a str"),
    ({"key": "bad\ud800"}, ValidationError, "key is not valid Unicode"),
    ({"content_type": ""}, ValidationError, "content_type must not be empty"),
    ({"content_type": b"t"}, ValidationError, "content_type must be a str"),
    ({"tags": ["a"]}, ValidationError, "tags must be a dict"),
    ({"tags": {"": "v"}}, ValidationError, "tags key must not be empty"),
    ({"tags": {1: "v"}}, ValidationError, "tags key must be a str"),
    ({"tags": {"a": 1}}, ValidationError, r"tags\['a'\] must be a str"),
    ({"tags": {"a": "\udfff"}}, ValidationError, r"tags\['a'\] is not valid Unicode"),
    ({"expires_at": "2030-01-01"}, ValidationError, "expires_at must be a datetime"),
    ({"expires_at": date(2030, 1, 1)}, ValidationError, "expires_at must be a datetime"),
    ({"expires_at": 1700000000}, ValidationError, "expires_at must be a datetime"),
    ({"expires_at": datetime(1, 1, 1)}, ValidationError, "cannot be read as local time"),
    ({"expires_at": LATE}, ValidationError, "outside the years 1 to 9999"),
    ({"data": {1, 2}}, SerializationError, "a set is not"),
    ({"data": object()}, SerializationError, "a object is not"),
    ({"data": {(1, 2): "tuple key"}}, SerializationError, "data cannot be stored"),
    ({"data": 2**64}, SerializationError, "data cannot be stored"),
    ({"data": -(2**63) - 1}, SerializationError, "data cannot be stored"),
    ({"data": "\ud800"}, SerializationError, "data cannot be stored"),
    ({"data": [datetime(1, 1, 1)]}, SerializationError, "cannot be read as local time"),
    ({"data": {"deep": LATE}}, SerializationError, "outside the years"),
    ({"data": complex(1, 2)}, SerializationError, "a complex is not"),
]


class IntOffset(tzinfo):
    """A broken tzinfo: its offset is an int, not a timedelta."""

    def utcoffset(self, dt: datetime | None) -> Any:
        return 5


class RaisingOffset(tzinfo):
    def utcoffset(self, dt: datetime | None) -> Any:
        raise RuntimeError("tz database unavailable")


class OddDatetime(datetime):
    def __sub__(self, other: Any) -> Any:
        return "not a timedelta"


BAD_SAVES += [
    ({"expires_at": datetime(2030, 1, 1, tzinfo=IntOffset())}, ValidationError, "expires_at: .*tzinfo fails"),
    ({"expires_at": datetime(2030, 1, 1, tzinfo=RaisingOffset())}, ValidationError, "tz database unavailable"),
    ({"expires_at": OddDatetime(2030, 1, 1, tzinfo=timezone.utc)}, ValidationError, "cannot be converted to UTC"),
    ({"data": [datetime(2030, 1, 1, tzinfo=RaisingOffset())]}, SerializationError, "tz database unavailable"),
]


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("override", "error", "message"), BAD_SAVES)
async def test_bad_save_writes_nothing(
    provider_factory: Factory, override: dict[str, Any], error: type[StorageError], message: str
) -> None:
    provider = provider_factory()
    args = {"key": "k", "data": {"v": 1}, "content_type": "t", "expires_at": None, "tags": None} | override
    with pytest.raises(error, match=message):
        await provider.save(**args)
    assert [r async for r in provider.search(StorageQuery())] == []
    with pytest.raises(ItemNotFoundError):
        await provider.load("k")


async def test_bad_save_leaves_the_old_item_whole(provider_factory: Factory) -> None:
    provider = provider_factory()
    before = await provider.save("k", {"v": 1}, "t", tags={"a": "b"})
    with pytest.raises(SerializationError):
        await provider.save("k", nested(5000), "t")  # deeper than msgpack packs
    with pytest.raises(ValidationError):
        await provider.save("k", {"v": 2}, "t", tags={"a": 2})  # type: ignore[dict-item]
    assert await provider.load("k") == before


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.load(""), "key must not be empty"),
        (lambda p: p.load(3), "key must be a str"),
        (lambda p: p.delete("k\udc80" * 600), "key is not valid Unicode"),
        (lambda p: p.load("k", content_type=""), "content_type must not be empty"),
        (lambda p: p.delete("k", content_type=5), "content_type must be a str"),
    ],
)
async def test_bad_load_and_delete_arguments(provider_factory: Factory, call: Any, message: str) -> None:
    provider = provider_factory()
    await provider.save("k", 1, "t")
    with pytest.raises(ValidationError, match=message):
        await call(provider)
    assert (await provider.load("k")).data == 1


BAD_QUERIES = [
    (StorageQuery(pattern=5), "query.pattern must be a str"),  # type: ignore[arg-type]
    (StorageQuery(pattern="\ud800"), "query.pattern is not valid Unicode"),
    (StorageQuery(content_type=""), "query.content_type must not be empty"),
    (StorageQuery(tags={"a": 1}), r"query.tags\['a'\] must be a str"),  # type: ignore[dict-item]
    (StorageQuery(tags="a=b"), "query.tags must be a dict"),  # type: ignore[arg-type]
    (StorageQuery(created_after="yesterday"), "query.created_after must be a datetime"),  # type: ignore[arg-type]
    (StorageQuery(created_before=LATE), "query.created_before: .* outside"),
    (StorageQuery(expires_after=1), "query.expires_after must be a datetime"),  # type: ignore[arg-type]
    (StorageQuery(expires_before=datetime(1, 1, 1)), "query.expires_before: .* local time"),
    (StorageQuery(limit=-1), r"query.limit must be None or an int from 0 to 2\*\*63 - 1"),
    (StorageQuery(limit=2**63), r"query.limit must be None or an int from 0 to 2\*\*63 - 1"),
    (StorageQuery(limit=True), "query.limit"),
    (StorageQuery(limit=2.0), "query.limit"),  # type: ignore[arg-type]
    (StorageQuery(order_by="size"), "query.order_by must be None or one of key, created_at, updated_at"),
    (StorageQuery(order_by="+key"), "query.order_by must be"),
    (StorageQuery(order_by=1), "query.order_by must be"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("query", "message"), BAD_QUERIES)
async def test_bad_query_raises_from_search(provider_factory: Factory, query: StorageQuery, message: str) -> None:
    provider = provider_factory()
    await provider.save("k", 1, "t")
    results = provider.search(query)  # building the iterator does not raise...
    with pytest.raises(ValidationError, match=message):
        await results.__anext__()  # ...running it does
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("t", provider)
    with pytest.raises(ValidationError, match=message):
        [r async for r in manager.search(query)]


async def test_search_rejects_what_is_not_a_query(provider_factory: Factory) -> None:
    with pytest.raises(ValidationError, match="query must be a StorageQuery"):
        [r async for r in provider_factory().search({"pattern": "*"})]  # type: ignore[arg-type]


async def test_manager_routing_errors() -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    with pytest.raises(ValidationError, match="content_type must not be empty"):
        manager.register_provider("", MemoryStorageProvider())
    with pytest.raises(ValidationError, match="provider must be a StorageProvider"):
        manager.register_provider("t", object())  # type: ignore[arg-type]
    with pytest.raises(ProviderNotFoundError, match="Provider not found: 'nope'") as caught:
        await manager.save("k", 1, "nope")
    assert isinstance(caught.value, ValueError)
    with pytest.raises(ProviderNotFoundError):
        await manager.delete("k", "nope")
    with pytest.raises(ProviderNotFoundError):
        [r async for r in manager.search(StorageQuery(content_type="nope"))]
    with pytest.raises(ValidationError, match="content_type must be a str"):
        await manager.load("k", 3)  # type: ignore[arg-type]


def test_namespace_is_checked() -> None:
    with pytest.raises(ValidationError, match="namespace must not be empty"):
        MemoryStorageProvider(namespace="")
