"""Bulk and set operations: save_many, load_many, delete_many and delete_matching,
on the provider and through the manager."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest

from ...errors import ItemNotFoundError, ProviderNotFoundError, SerializationError, StorageError, ValidationError
from ...manager import UnifiedStorageManager
from ...metrics import MetricsManager
from ...model import StorageQuery
from .hooks import (
    UTC,
    ConformanceHooks,
    Factory,
    expiries_of,
    in_own_loop,
    keys_of,
    live_items,
    ops,
    seed_for_queries,
)

_GOOD: dict[Any, Any] = {"new1": 1, "replace": "new data", "new2": [2]}
#: Batches (each with its bad item last, after good ones and one that would replace an
#: existing key), the other arguments, the error each must raise and what it must name.
REFUSED_BATCHES = [
    pytest.param({**_GOOD, "bad": object()}, {}, SerializationError, "'bad'", id="unserialisable-data"),
    pytest.param({**_GOOD, "bad": {"nested": {1, 2}}}, {}, SerializationError, "'bad'", id="unserialisable-set"),
    pytest.param({**_GOOD, "": 1}, {}, ValidationError, "key", id="empty-key"),
    pytest.param({**_GOOD, 5: 1}, {}, ValidationError, "key", id="int-key"),
    pytest.param({**_GOOD, "\ud800": 1}, {}, ValidationError, "key", id="not-utf8-key"),
    pytest.param(_GOOD, {"tags": {"t": 5}}, ValidationError, "tags", id="bad-tags"),
    pytest.param(_GOOD, {"expires_at": "tomorrow"}, ValidationError, "expires_at", id="bad-expiry"),
    pytest.param(list(_GOOD.items()), {}, ValidationError, "items", id="list-of-pairs"),
    pytest.param(None, {}, ValidationError, "items", id="none"),
]

Times = dict[str, datetime]

#: Queries over :func:`seed_for_queries`' items, built from their created and expiry times.
INVALIDATIONS: dict[str, Callable[[Times, Times], StorageQuery]] = {
    "tag": lambda c, e: StorageQuery(tags={"team": "red"}),
    "two-tags": lambda c, e: StorageQuery(tags={"team": "red", "role": "dev"}),
    "no-such-tag": lambda c, e: StorageQuery(tags={"team": "green"}),
    "prefix": lambda c, e: StorageQuery(pattern="user:*"),
    "pattern": lambda c, e: StorageQuery(pattern="*:[^1]"),
    "content-type": lambda c, e: StorageQuery(content_type="doc"),
    "type-and-tag": lambda c, e: StorageQuery(content_type="user", tags={"team": "red"}),
    "created-after": lambda c, e: StorageQuery(created_after=c["user:10"]),
    "created-before": lambda c, e: StorageQuery(created_before=c["user:2"]),
    "created-at": lambda c, e: StorageQuery(created_after=c["user:2"], created_before=c["user:2"]),
    "expires-at-all": lambda c, e: StorageQuery(expires_after=datetime(1970, 1, 1, tzinfo=UTC)),
    "expires-before": lambda c, e: StorageQuery(expires_before=e["user:2"]),
    "expires-after-all": lambda c, e: StorageQuery(expires_after=e["doc:1"] + timedelta(microseconds=1)),
    "everything": lambda c, e: StorageQuery(),
    "limit": lambda c, e: StorageQuery(limit=2),
    "tag-limit": lambda c, e: StorageQuery(tags={"team": "red"}, limit=1),
    "limit-0": lambda c, e: StorageQuery(pattern="user:*", limit=0),
    "limit-above": lambda c, e: StorageQuery(pattern="user:*", limit=100),
}


class RepeatingMapping(Mapping[str, Any]):
    """A mapping whose items() names one key twice (a broken Mapping, or str subclasses equal but hashed apart)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self._pairs = pairs

    def __getitem__(self, key: str) -> Any:
        return dict(self._pairs)[key]

    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._pairs)

    def items(self) -> Any:
        """The pairs as given, the repeated key included."""
        return list(self._pairs)


class IdentityKey(str):
    """A key equal only to itself: two of one text are two keys to a dict, one to a store."""

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


class BulkTests(ConformanceHooks):
    """Bulk and set operations: save_many, load_many, delete_many and delete_matching,"""

    # -- bulk and set operations ----------------------------------------------------------

    @in_own_loop
    async def test_save_many_is_what_single_saves_make(self, make_provider: Factory) -> None:
        """One save_many and the same saves one by one leave stores that no reader can tell apart."""
        bulk, single = make_provider(), make_provider()
        expires = datetime.now(UTC) + timedelta(hours=1)
        batch = {"b:2": {"n": 2}, "a:1": [1, (2, 3)], "c:3": None, "é:4": b"\x00"}  # not in key order
        saved = await bulk.save_many(batch, "doc", expires_at=expires, tags={"t": "v", "a": "b"})
        for key, data in batch.items():
            await single.save(key, data, "doc", expires_at=expires, tags={"t": "v", "a": "b"})
        assert [item.metadata.key for item in saved] == list(batch)  # the mapping's order
        assert len({item.metadata.id for item in saved}) == len(batch)
        for item in saved:
            loaded = await bulk.load(item.metadata.key)
            assert loaded == item
            assert repr(loaded) == repr(item)  # to the types of the values: what load returns
            assert loaded.data == (await single.load(item.metadata.key)).data
            meta = loaded.metadata
            assert (meta.content_type, meta.tags, meta.expires_at) == ("doc", {"a": "b", "t": "v"}, expires)
            assert meta.created_at == meta.updated_at
            assert meta.created_at.tzinfo is UTC
        assert await bulk.load_many(batch) == {item.metadata.key: item for item in saved}
        queries: list[dict[str, Any]] = [{}, {"tags": {"t": "v"}}, {"content_type": "doc"}, {"pattern": "?:[12]"}]
        for criteria in [*queries, {"expires_after": expires}]:
            assert await keys_of(bulk, **criteria) == await keys_of(single, **criteria), criteria
        assert await keys_of(bulk, tags={"t": "v", "a": "b"}, content_type="doc") == set(batch)
        assert await bulk.save_many({}, "doc") == []  # an empty batch is a batch
        # Any Mapping will do, not only a dict.
        [proxied] = await bulk.save_many(MappingProxyType({"p:5": 5}), "doc")
        assert await bulk.load_many(["p:5"]) == {"p:5": proxied}
        assert await bulk.delete("p:5") is True
        assert await keys_of(bulk) == set(batch)
        await self.check_store(bulk)

    @in_own_loop
    async def test_save_many_upserts_like_save(self, make_provider: Factory) -> None:
        """Over live items it keeps id and created_at, sets updated_at and replaces the rest;
        over an expired one it makes a new item."""
        provider = make_provider()
        first = {
            item.metadata.key: item
            for item in await provider.save_many(
                {"k1": 1, "k2": 2}, "a", expires_at=datetime.now(UTC) + timedelta(hours=1), tags={"old": "1"}
            )
        }
        gone = await provider.save("k3", 3, "a", expires_at=datetime.now(UTC) - timedelta(seconds=1))
        await asyncio.sleep(0.002)
        second = await provider.save_many({"k2": 20, "k3": 30, "k4": 40, "k1": 10}, "b", tags={"new": "2"})
        assert [item.metadata.key for item in second] == ["k2", "k3", "k4", "k1"]
        by_key = {item.metadata.key: item for item in second}
        for key in ("k1", "k2"):
            meta = by_key[key].metadata
            assert meta.id == first[key].metadata.id
            assert meta.created_at == first[key].metadata.created_at
            assert meta.updated_at > first[key].metadata.updated_at
            assert (meta.content_type, meta.tags, meta.expires_at) == ("b", {"new": "2"}, None)
        assert by_key["k3"].metadata.id != gone.metadata.id  # the expired one is not revived
        assert by_key["k3"].metadata.created_at == by_key["k3"].metadata.updated_at
        assert await provider.load_many(["k1", "k2", "k3", "k4"]) == by_key
        assert {key: item.data for key, item in by_key.items()} == {"k1": 10, "k2": 20, "k3": 30, "k4": 40}
        # The old tags, type and expiry no longer find them; the new ones do.
        assert await keys_of(provider, tags={"old": "1"}) == set()
        assert await keys_of(provider, content_type="a") == set()
        assert await keys_of(provider, expires_after=datetime(1970, 1, 1, tzinfo=UTC)) == set()
        assert await keys_of(provider, tags={"new": "2"}, content_type="b") == {"k1", "k2", "k3", "k4"}
        await self.check_store(provider)

    @pytest.mark.parametrize(("items", "options", "error", "named"), REFUSED_BATCHES)
    @in_own_loop
    async def test_a_refused_batch_writes_nothing(
        self,
        make_provider: Factory,
        items: Any,
        options: dict[str, Any],
        error: type[StorageError],
        named: str,
    ) -> None:
        """A batch with one bad item is refused whole, naming the item: nothing is written."""
        provider = make_provider()
        await provider.save("replace", "old data", "a", tags={"t": "old"})
        await provider.save("keep", "kept", "a")
        before = await live_items(provider)
        with pytest.raises(error, match=named) as caught:
            await provider.save_many(items, "a", **options)
        assert error is not SerializationError or caught.value.details["key"] == "bad"
        assert await live_items(provider) == before  # not one item, nor "replace", changed
        assert await provider.load_many(["new1", "new2", "replace", "keep"]) == before
        assert await keys_of(provider, tags={"t": "old"}) == {"replace"}
        await self.check_store(provider)

    @in_own_loop
    async def test_a_batch_naming_one_key_twice_is_refused(self, make_provider: Factory) -> None:
        """A mapping that names a key twice is refused, writing nothing."""
        provider = make_provider()
        await provider.save("a", 0, "t")
        repeating = RepeatingMapping([("b", 1), ("a", 2), ("a", 1)])
        # A Mapping (if a broken one) that names "a" twice; and two keys equal as str, not as dict keys.
        assert (list(repeating), len(repeating), repeating["b"]) == (["b", "a", "a"], 3, 1)
        first, second = IdentityKey("a"), IdentityKey("a")
        assert (first == second, str(first) == str(second)) == (False, True)
        for batch in (repeating, {first: 1, second: 2}):
            with pytest.raises(ValidationError, match="key 'a' more than once"):
                await provider.save_many(batch, "t", tags={"x": "1"})  # type: ignore[arg-type]
            assert await keys_of(provider) == {"a"}
            assert (await provider.load("a")).data == 0
        await self.check_store(provider)

    @in_own_loop
    async def test_load_many(self, make_provider: Factory) -> None:
        """The live items among the keys, each once, in the order asked; any iterable of keys."""
        provider = make_provider()
        saved = await provider.save_many({"a": 1, "b": 2, "c": 3}, "x", tags={"t": "v"})
        other = await provider.save("d", 4, "y")
        # An expiry already past is accepted, and the items are invisible at once.
        expired = await provider.save_many({"e1": 5, "e2": 6}, "x", expires_at=datetime.now(UTC) - timedelta(seconds=1))
        assert [item.data for item in expired] == [5, 6]
        everything = ["a", "b", "c", "d", "e1", "e2", "missing"]
        found = await provider.load_many(everything)
        assert found == {**{item.metadata.key: item for item in saved}, "d": other}
        assert list(found) == ["a", "b", "c", "d"]  # in the order asked
        assert await provider.load_many(["b", "a", "b", "b", "missing", "missing"]) == {"b": saved[1], "a": saved[0]}
        assert await provider.load_many(everything, content_type="x") == {item.metadata.key: item for item in saved}
        assert await provider.load_many(everything, content_type="y") == {"d": other}
        assert await provider.load_many(everything, content_type="z") == {}
        assert await provider.load_many(key for key in ("c", "e1")) == {"c": saved[2]}  # any iterable
        assert await provider.load_many([]) == {}
        for key in ("a", "b", "c", "d"):
            assert found[key] == await provider.load(key)

    @pytest.mark.parametrize("keys", ["a", b"a", None, 5, ["a", ""], ["a", 5], ["a", None], ["a", "\ud800"]])
    @in_own_loop
    async def test_bulk_key_lists_are_checked(self, make_provider: Factory, keys: Any) -> None:
        """A lone str is one key, not the keys of its characters: refused like every bad key."""
        provider = make_provider()
        await provider.save("a", 1, "x")
        with pytest.raises(ValidationError, match="key"):
            await provider.load_many(keys)
        with pytest.raises(ValidationError, match="key"):
            await provider.delete_many(keys)
        assert (await provider.load("a")).data == 1  # the refused delete_many removed nothing

    @pytest.mark.parametrize("content_type", ["", 5])
    @in_own_loop
    async def test_bulk_content_types_are_checked(self, make_provider: Factory, content_type: Any) -> None:
        """A bad content type is refused by every bulk operation, which writes nothing."""
        provider = make_provider()
        await provider.save("a", 1, "x")
        with pytest.raises(ValidationError, match="content_type"):
            await provider.load_many(["a"], content_type=content_type)
        with pytest.raises(ValidationError, match="content_type"):
            await provider.delete_many(["a"], content_type=content_type)
        with pytest.raises(ValidationError, match="content_type"):
            await provider.save_many({"a": 2, "b": 3}, content_type)
        assert await provider.load_many(["a", "b"]) == {"a": await provider.load("a")}
        assert (await provider.load("a")).data == 1

    @pytest.mark.parametrize("size", [600, 5_000])
    @in_own_loop
    async def test_bulk_operations_on_long_keys(self, make_provider: Factory, size: int) -> None:
        """Every bulk operation on long keys alike but for their last bytes."""
        provider = make_provider()
        head = "user:" + "k" * (size - 10)
        first, second, third = head + "aaaaa", head + "bbbbb", head + "ccccc"  # alike in all but their last bytes
        assert len(first.encode()) == size
        saved = await provider.save_many({first: 1, second: 2, "user:short": 3}, "t", tags={"n": "1"})
        assert [item.metadata.key for item in saved] == [first, second, "user:short"]
        found = await provider.load_many([first, second, third, "user:short"])
        assert {key: item.data for key, item in found.items()} == {first: 1, second: 2, "user:short": 3}
        assert found[second].metadata.key == second
        assert await keys_of(provider, pattern=head + "*", tags={"n": "1"}) == {first, second}
        again = await provider.save_many({first: 10, third: 30}, "t")  # an upsert of one long key, a new one
        assert again[0].metadata.id == saved[0].metadata.id
        assert await provider.delete_many([third, first, first + "x"]) == 2
        assert await provider.load_many([first, second, third]) == {second: found[second]}
        assert await provider.delete_matching(StorageQuery(pattern=head + "*")) == 1
        assert await keys_of(provider) == {"user:short"}
        await self.check_store(provider)

    @in_own_loop
    async def test_delete_many_counts_live_items(self, make_provider: Factory) -> None:
        """``delete_many`` counts the live items (of its content type) it removed, each once."""
        provider = make_provider()
        await provider.save_many({"a": 1, "b": 2, "c": 3}, "x", tags={"t": "v"})
        await provider.save_many({"d": 4, "e": 5}, "y", tags={"t": "v"})
        await provider.save("old", 6, "x", expires_at=datetime.now(UTC) - timedelta(seconds=1), tags={"t": "v"})
        # Expired and missing keys are not counted; nor is a key given twice counted twice.
        assert await provider.delete_many(["a", "old", "missing", "a", "d"]) == 2
        assert await keys_of(provider) == {"b", "c", "e"}
        assert await provider.delete_many(["a", "d", "old"]) == 0
        # With a content type, items of another type are neither removed nor counted.
        assert await provider.delete_many(["b", "c", "e"], content_type="y") == 1
        assert await keys_of(provider) == {"b", "c"}
        assert await provider.delete_many(["b", "c"], content_type="y") == 0
        assert await provider.delete_many(iter(["b"]), content_type="x") == 1
        assert await provider.delete_many([]) == 0
        with pytest.raises(ItemNotFoundError):
            await provider.load("b")
        assert await provider.load_many(["a", "b", "c", "d", "e", "old"]) == {"c": await provider.load("c")}
        assert await keys_of(provider, tags={"t": "v"}) == {"c"}
        assert await keys_of(provider, content_type="x") == {"c"}
        await self.check_store(provider)

    @pytest.mark.parametrize("name", INVALIDATIONS)
    @in_own_loop
    async def test_delete_matching_removes_what_search_finds(self, make_provider: Factory, name: str) -> None:
        """``delete_matching`` removes what a search finds (with a limit, that many of its
        matches), counts them, and leaves the rest untouched."""
        provider = make_provider()
        created = await seed_for_queries(provider)
        # Expired items that every query but the time bounds would match: never counted, never seen.
        await provider.save_many(
            {"user:3": 0, "doc:3": 0},
            "user",
            expires_at=datetime.now(UTC) - timedelta(seconds=1),
            tags={"team": "red", "role": "dev"},
        )
        before = await live_items(provider)
        expiry = await expiries_of(provider)
        query = INVALIDATIONS[name](created, expiry)
        unlimited = dataclasses.replace(query, limit=None)
        matches = {r.item.metadata.key async for r in provider.search(unlimited)}
        found = {r.item.metadata.key async for r in provider.search(query)}
        removed = await provider.delete_matching(query)
        after = await live_items(provider)
        gone = set(before) - set(after)
        assert set(after) <= set(before)
        assert removed == len(gone)
        # Which of the matches a limit takes is unspecified, as is the order of search results.
        wanted = len(matches) if query.limit is None else min(query.limit, len(matches))
        assert len(gone) == len(found) == wanted
        assert gone <= matches
        assert found <= matches
        assert await keys_of(provider, **dataclasses.asdict(unlimited)) == matches - gone
        assert after == {key: item for key, item in before.items() if key not in gone}  # the rest untouched
        for key in gone:
            with pytest.raises(ItemNotFoundError):
                await provider.load(key)
        assert await provider.load_many(["user:3", "doc:3"]) == {}
        await self.check_store(provider)

    @in_own_loop
    async def test_delete_matching_many_chunks(self, make_provider: Factory) -> None:
        """More matches than one search chunk, mixed with items that do not match."""
        provider = make_provider()
        await provider.save_many({f"k{n:04}": n for n in range(0, 1200, 2)}, "a", tags={"even": "yes"})
        await provider.save_many({f"k{n:04}": n for n in range(1, 1200, 2)}, "a", tags={"even": "no"})
        assert await provider.delete_matching(StorageQuery(tags={"even": "yes"})) == 600
        assert await keys_of(provider, tags={"even": "yes"}) == set()
        assert await keys_of(provider) == {f"k{n:04}" for n in range(1, 1200, 2)}
        assert await provider.delete_matching(StorageQuery(pattern="k0*", limit=300)) == 300
        assert len(await keys_of(provider)) == 300
        assert await provider.delete_matching(StorageQuery(content_type="a")) == 300
        assert await keys_of(provider) == set()
        await self.check_store(provider)

    @in_own_loop
    async def test_bulk_content_type_is_identity_through_the_manager(self, make_provider: Factory) -> None:
        """One provider under two content types: X's bulk operations never see Y's items."""
        provider = make_provider()
        metrics = MetricsManager()
        manager = UnifiedStorageManager(metrics=metrics)
        manager.register_provider("x", provider)
        manager.register_provider("y", provider)
        xs = await manager.save_many({"a": "x", "b": "x"}, "x", tags={"t": "v"})
        ys = await manager.save_many({"c": "y"}, "y", tags={"t": "v"})
        d = await manager.save("d", "y", "y", tags={"t": "v"})
        assert [item.metadata.content_type for item in xs + ys] == ["x", "x", "y"]
        keys = ["a", "b", "c", "d", "missing"]
        assert await manager.load_many(keys, "x") == {"a": xs[0], "b": xs[1]}
        assert await manager.load_many(keys, "y") == {"c": ys[0], "d": d}
        assert await manager.delete_many(["a", "c"], "y") == 1  # only c is a y
        assert (await manager.load("a", "x")).data == "x"
        assert await manager.delete_many(["a", "b", "d"], "x") == 2
        assert await manager.load_many(keys, "x") == {}
        assert await manager.load_many(keys, "y") == {"d": d}
        # A typed delete_matching leaves the other type's items on the shared provider.
        await manager.save_many({"a": "x", "b": "x"}, "x", tags={"t": "v"})
        assert await manager.delete_matching(StorageQuery(content_type="x", tags={"t": "v"})) == 2
        assert await keys_of(manager) == {"d"}
        unknown_calls = (manager.load_many(keys, "z"), manager.delete_many(keys, "z"), manager.save_many({"k": 1}, "z"))
        for unknown in unknown_calls:
            with pytest.raises(ProviderNotFoundError):
                await unknown
        with pytest.raises(ProviderNotFoundError):
            await manager.delete_matching(StorageQuery(content_type="z"))
        # Each measured like the single operations, the method name its operation label.
        assert (ops(metrics, "save_many", "x"), ops(metrics, "save_many", "y")) == (2, 1)
        assert (ops(metrics, "load_many", "x"), ops(metrics, "load_many", "y")) == (2, 2)
        assert (ops(metrics, "delete_many", "x"), ops(metrics, "delete_many", "y")) == (1, 1)
        assert ops(metrics, "delete_matching", "x") == 1
        await self.check_store(provider)

    @in_own_loop
    async def test_manager_delete_matching_visits_each_provider_once(self, make_provider: Factory) -> None:
        """An untyped ``delete_matching`` visits each distinct provider once, its limit over them all."""
        shared, other = make_provider(), make_provider()
        manager = UnifiedStorageManager(metrics=MetricsManager())
        manager.register_provider("x", shared)
        manager.register_provider("y", shared)
        manager.register_provider("z", other)
        await manager.save_many({"x1": 1, "x2": 2}, "x", tags={"t": "v"})
        await manager.save_many({"y1": 1}, "y", tags={"t": "v"})
        await manager.save_many({"z1": 1, "z2": 2, "keep": 3}, "z", tags={"t": "v"})
        await manager.save("untagged", 0, "z")
        # Counted once per item although two types route to the shared provider.
        assert await manager.delete_matching(StorageQuery(pattern="?[12]", limit=4)) == 4
        assert len(await keys_of(manager, pattern="?[12]")) == 1  # a limit counts over every provider
        assert await manager.delete_matching(StorageQuery(tags={"t": "v"})) == 2
        assert await keys_of(manager) == {"untagged"}
        assert await manager.delete_matching(StorageQuery()) == 1
        assert await manager.delete_matching(StorageQuery()) == 0
        await self.check_store(shared)
        await self.check_store(other)


__all__ = ["INVALIDATIONS", "REFUSED_BATCHES", "BulkTests", "IdentityKey", "RepeatingMapping"]
