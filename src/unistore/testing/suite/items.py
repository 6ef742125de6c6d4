"""Saving, loading and deleting single items: the framework's validation test, round
trips, upserts, expiry, refused saves, and keys and names of every shape."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import RFC_4122, UUID

import pytest

from ...errors import ItemNotFoundError, SerializationError, StorageError, ValidationError
from ...manager import UnifiedStorageManager
from ...metrics import StorageMonitor
from ...model import StorageQuery
from .hooks import (
    UTC,
    ConformanceHooks,
    Factory,
    in_own_loop,
    keys_of,
    live_items,
)

#: Data of every storable kind, each of which must load as it was saved (and as its own type).
ROUND_TRIPS = [
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
]

#: Bad arguments to ``save`` (over an item that exists): the error each must raise, and what it names.
REFUSED_SAVES = [
    pytest.param({"key": ""}, ValidationError, "key", id="empty-key"),
    pytest.param({"content_type": ""}, ValidationError, "content_type", id="empty-content-type"),
    pytest.param({"tags": {"t": 5}}, ValidationError, "tags", id="int-tag-value"),
    pytest.param({"expires_at": "tomorrow"}, ValidationError, "expires_at", id="str-expiry"),
    pytest.param({"data": {"deep": [object()]}}, SerializationError, "data", id="unstorable-data"),
]


class ItemTests(ConformanceHooks):
    """Saving, loading and deleting single items, and keys and names of every shape."""

    # -- the framework's validation test -------------------------------------------------------------

    @in_own_loop
    async def test_storage_system(self, make_provider: Factory) -> None:
        """The framework's validation test, unchanged but for how the provider is built."""
        # Setup
        manager = UnifiedStorageManager()
        monitor = StorageMonitor()

        # Register providers
        redis_provider = make_provider()
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

    # -- save, load, delete ------------------------------------------------------------

    @in_own_loop
    async def test_save_returns_what_load_returns(self, make_provider: Factory) -> None:
        """An item as ``save`` returns it is the item ``load`` returns, a fresh UUID4 for
        its id, created_at = updated_at, every datetime aware UTC."""
        provider = make_provider()
        expires = datetime.now(UTC) + timedelta(hours=1)
        saved = await provider.save("k", {"n": 1, "t": (1, 2)}, "doc", expires_at=expires, tags={"z": "1", "a": "b"})
        loaded = await provider.load("k")
        assert saved == loaded
        assert repr(saved) == repr(loaded)  # to the order of the tags and the types of the values
        assert loaded.data == {"n": 1, "t": [1, 2]}  # tuples come back as lists
        meta = loaded.metadata
        assert isinstance(meta.id, UUID)
        assert (meta.id.version, meta.id.variant) == (4, RFC_4122)
        assert (meta.key, meta.content_type, meta.tags, meta.expires_at) == ("k", "doc", {"a": "b", "z": "1"}, expires)
        assert meta.created_at == meta.updated_at
        assert meta.created_at.tzinfo is UTC
        assert meta.expires_at is not None
        assert meta.expires_at.tzinfo is UTC

    @pytest.mark.parametrize("data", ROUND_TRIPS)
    @in_own_loop
    async def test_data_round_trips(self, make_provider: Factory, data: Any) -> None:
        """Every storable kind loads as it was saved, as its own type."""
        provider = make_provider()
        await provider.save("k", data, "doc")
        loaded = (await provider.load("k")).data
        assert loaded == data
        assert type(loaded) is type(data)

    @in_own_loop
    async def test_datetimes_come_back_aware_utc(self, make_provider: Factory) -> None:
        """Datetimes come back aware in UTC to the microsecond; a naive one was local time."""
        provider = make_provider()
        plus_two = timezone(timedelta(hours=2))
        local_naive = datetime(2030, 1, 2, 3, 4, 5, 678901)
        aware = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=plus_two)
        await provider.save("k", {"naive": local_naive, "aware": aware}, "doc", expires_at=aware)
        item = await provider.load("k")
        assert item.data["aware"] == aware
        assert item.data["aware"].tzinfo is UTC
        assert item.data["naive"] == local_naive.astimezone()  # naive means local time
        assert item.data["naive"].tzinfo is UTC
        assert item.metadata.expires_at == aware
        assert item.metadata.expires_at.utcoffset() == timedelta(0)

    @in_own_loop
    async def test_upsert_keeps_id_and_created_at(self, make_provider: Factory) -> None:
        """Saving over a live item replaces data, tags, content type and expiry, keeps
        its id and created_at, and sets updated_at."""
        provider = make_provider()
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

    @in_own_loop
    async def test_saving_over_an_expired_item_makes_a_new_one(self, make_provider: Factory) -> None:
        """An expired item is gone: a save under its key makes a new item."""
        provider = make_provider()
        old = await provider.save("k", 1, "a", expires_at=datetime.now(UTC) - timedelta(seconds=1))
        new = await provider.save("k", 2, "a")
        assert new.metadata.id != old.metadata.id
        assert new.metadata.created_at >= old.metadata.created_at
        assert (await provider.load("k")).metadata.id == new.metadata.id

    @in_own_loop
    async def test_expired_items_are_invisible_at_once(self, make_provider: Factory) -> None:
        """Expired items are invisible to load, search and delete, purged or not; an
        expiry already past is accepted."""
        provider = make_provider()
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
        await self.purge(provider)
        assert await keys_of(provider) == set()

    @in_own_loop
    async def test_missing_key(self, make_provider: Factory) -> None:
        """``load`` of a missing key raises ItemNotFoundError (a KeyError too) naming it."""
        provider = make_provider()
        with pytest.raises(ItemNotFoundError) as caught:
            await provider.load("nope")
        assert isinstance(caught.value, KeyError)
        assert isinstance(caught.value, StorageError)
        assert "nope" in str(caught.value)
        assert await provider.delete("nope") is False

    @in_own_loop
    async def test_delete_return_values(self, make_provider: Factory) -> None:
        """``delete`` is True when it removed a live item, then False."""
        provider = make_provider()
        await provider.save("k", 1, "a")
        assert await provider.delete("k") is True
        assert await provider.delete("k") is False
        with pytest.raises(ItemNotFoundError):
            await provider.load("k")

    @in_own_loop
    async def test_content_type_condition_on_the_provider(self, make_provider: Factory) -> None:
        """``load`` and ``delete`` with a content type see only an item of that type."""
        provider = make_provider()
        await provider.save("k", 1, "a")
        assert (await provider.load("k", content_type="a")).data == 1
        with pytest.raises(ItemNotFoundError, match="content type 'b'"):
            await provider.load("k", content_type="b")
        assert await provider.delete("k", content_type="b") is False
        assert (await provider.load("k")).data == 1
        assert await provider.delete("k", content_type="a") is True

    @pytest.mark.parametrize(("arguments", "error", "named"), REFUSED_SAVES)
    @in_own_loop
    async def test_a_refused_save_writes_nothing(
        self, make_provider: Factory, arguments: dict[str, Any], error: type[StorageError], named: str
    ) -> None:
        """Bad input raises a StorageError subclass naming the field, and writes nothing."""
        provider = make_provider()
        before = await provider.save("k", "old", "a", tags={"t": "old"})
        call: dict[str, Any] = {"key": "k", "data": "new", "content_type": "b", "tags": {"t": "new"}, **arguments}
        with pytest.raises(error, match=named):
            await provider.save(**call)
        assert await live_items(provider) == {"k": before}
        assert await keys_of(provider, tags={"t": "new"}) == set()

    # -- keys and names ----------------------------------------------------------------------

    @in_own_loop
    async def test_unicode_keys_and_tags(self, make_provider: Factory) -> None:
        """Non-ASCII keys, content types and tags; an empty tag value."""
        provider = make_provider()
        key = "ключ:" + "é" * 251  # 511 UTF-8 bytes: LMDB's own key limit, stored in the long-key form
        assert len(key.encode()) == 511
        await provider.save(key, 1, "тип", tags={"ярлык": "значение", "empty": ""})
        assert (await provider.load(key)).metadata.tags == {"ярлык": "значение", "empty": ""}
        assert await keys_of(provider, pattern="ключ:*", tags={"ярлык": "значение", "empty": ""}) == {key}
        assert await keys_of(provider, content_type="тип") == {key}

    @pytest.mark.parametrize("size", [600, 5_000, 100_000])
    @in_own_loop
    async def test_keys_of_any_length(self, make_provider: Factory, size: int) -> None:
        """Keys have no length limit; long keys alike but for their last bytes stay apart."""
        provider = make_provider()
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

    @in_own_loop
    async def test_long_content_types_and_tags(self, make_provider: Factory) -> None:
        """Content types and tags have no length limit either."""
        provider = make_provider()
        long = "x" * 5000
        await provider.save("k", 1, long, tags={long: long})
        assert await keys_of(provider, content_type=long, tags={long: long}) == {"k"}
        assert await keys_of(provider, tags={long: long + "y"}) == set()

    @in_own_loop
    async def test_ids_are_unique(self, make_provider: Factory) -> None:
        """Every new item gets an id of its own."""
        provider = make_provider()
        ids = {(await provider.save(f"k{n}", n, "a")).metadata.id for n in range(50)}
        assert len(ids) == 50


__all__ = ["REFUSED_SAVES", "ROUND_TRIPS", "ItemTests"]
