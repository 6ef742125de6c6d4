"""The conformance suite: a pytest base class a provider's test module subclasses.

:class:`ProviderConformance` holds plain tests of every pinned behaviour, a
property test of search against the reference model, and the stateful
:class:`~unistore.testing.machine.ProviderMachine`. A subclass gives it one
fixture, ``make_provider``: a function that returns a fresh, empty provider (a
keyspace of its own) each time it is called. Tests call it once or more, and
the property tests once per example.

Every test runs in an event loop of its own and cleans up (``await
provider.cleanup()``) every provider it made, in that loop; so the suite needs no
pytest plugin, and the fixture needs no async teardown.

Hooks a subclass may override: :meth:`~ProviderConformance.check_store` (assert
the provider's own invariants, e.g. that its indexes match its records, after
tests that wrote) and :meth:`~ProviderConformance.purge` (its housekeeping); and
the fixture ``conformance_settings`` (the hypothesis settings of the property
tests: by default the active profile's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Coroutine, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any
from uuid import RFC_4122, UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ..errors import ItemNotFoundError, ProviderNotFoundError, SerializationError, StorageError, ValidationError
from ..manager import UnifiedStorageManager
from ..metrics import MetricsManager, StorageMonitor
from ..model import StorageItem, StorageQuery
from ..providers.base import StorageProvider
from . import strategies as kit
from .machine import check_saved, check_search, perform, run_machine
from .model import ReferenceModel

Factory = Callable[[], StorageProvider[Any]]
UTC = timezone.utc


def _in_own_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a loop of its own, giving it a ``make_provider`` that
    remembers what it made, and clean each provider up in that loop after."""

    @functools.wraps(test)
    def run(self: ProviderConformance, make_provider: Factory, **arguments: Any) -> None:
        made: list[StorageProvider[Any]] = []

        def make() -> StorageProvider[Any]:
            provider = make_provider()
            made.append(provider)
            return provider

        async def body() -> None:
            try:
                await test(self, make, **arguments)
            finally:
                for provider in made:
                    await provider.cleanup()

        asyncio.run(body())

    return run


async def keys_of(provider: StorageProvider[Any] | UnifiedStorageManager, **criteria: Any) -> set[str]:
    """The keys a search of ``StorageQuery(**criteria)`` finds."""
    return {result.item.metadata.key async for result in provider.search(StorageQuery(**criteria))}


async def live_items(provider: StorageProvider[Any]) -> dict[str, StorageItem[Any]]:
    """Every live item, by key: what a reader of the whole store sees."""
    return {r.item.metadata.key: r.item async for r in provider.search(StorageQuery())}


async def expiries_of(provider: StorageProvider[Any]) -> dict[str, datetime]:
    """The expiry of every live item that has one, by key."""
    items = await live_items(provider)
    return {key: moment for key, item in items.items() if (moment := item.metadata.expires_at) is not None}


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


def ops(metrics: MetricsManager, operation: str, content_type: str) -> float:
    """How many ``operation`` calls on ``content_type`` succeeded."""
    return metrics.value("storage_operations", operation=operation, content_type=content_type, success="true")


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

#: Query fields ``search`` and ``delete_matching`` must refuse (building the query never does).
BAD_QUERIES = [
    pytest.param({"limit": -1}, id="negative-limit"),
    pytest.param({"pattern": 5}, id="int-pattern"),
    pytest.param({"tags": {"t": 1}}, id="int-tag-value"),
    pytest.param({"content_type": ""}, id="empty-content-type"),
    pytest.param({"created_after": "yesterday"}, id="str-time-bound"),
]


class _RepeatingMapping(Mapping[str, Any]):
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
        return list(self._pairs)


class _IdentityKey(str):
    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


class ProviderConformance:
    """The conformance suite: subclass it in a test module (its name starting with
    ``Test``) and give it a ``make_provider`` fixture that returns a function making
    fresh, empty providers.

    Example (a whole test module)::

        import pytest
        from unistore.providers import MemoryStorageProvider
        from unistore.testing import ProviderConformance

        class TestMemoryProvider(ProviderConformance):
            @pytest.fixture
            def make_provider(self):
                return MemoryStorageProvider
    """

    # -- hooks -------------------------------------------------------------------

    @pytest.fixture
    def conformance_settings(self) -> settings:
        """The hypothesis settings of the property tests (the stateful machine takes a
        quarter of their ``max_examples`` runs): the active profile's, without a
        deadline (a networked store's latency is no failure). Override this fixture
        to run more or fewer."""
        return settings(deadline=None)

    async def check_store(self, provider: StorageProvider[Any]) -> None:
        """Assert the provider's own invariants (e.g. that its indexes match its
        records); called after the tests that write in bulk and after each run of the
        machine. Does nothing unless overridden."""

    async def purge(self, provider: StorageProvider[Any]) -> None:
        """The provider's housekeeping, which must change nothing a reader sees:
        ``purge_expired()`` if it implements one (one that keeps the contract's, which
        refuses, has none). Override to call yours."""
        if type(provider).purge_expired is not StorageProvider.purge_expired:
            await provider.purge_expired()

    # -- R065's own test -------------------------------------------------------------

    @_in_own_loop
    async def test_storage_system(self, make_provider: Factory) -> None:
        """R065's validation test ("Validação"), unchanged but for how the provider is built."""
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

    @_in_own_loop
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
    @_in_own_loop
    async def test_data_round_trips(self, make_provider: Factory, data: Any) -> None:
        """Every storable kind loads as it was saved, as its own type."""
        provider = make_provider()
        await provider.save("k", data, "doc")
        loaded = (await provider.load("k")).data
        assert loaded == data
        assert type(loaded) is type(data)

    @_in_own_loop
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

    @_in_own_loop
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

    @_in_own_loop
    async def test_saving_over_an_expired_item_makes_a_new_one(self, make_provider: Factory) -> None:
        """An expired item is gone: a save under its key makes a new item."""
        provider = make_provider()
        old = await provider.save("k", 1, "a", expires_at=datetime.now(UTC) - timedelta(seconds=1))
        new = await provider.save("k", 2, "a")
        assert new.metadata.id != old.metadata.id
        assert new.metadata.created_at >= old.metadata.created_at
        assert (await provider.load("k")).metadata.id == new.metadata.id

    @_in_own_loop
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

    @_in_own_loop
    async def test_missing_key(self, make_provider: Factory) -> None:
        """``load`` of a missing key raises ItemNotFoundError (a KeyError too) naming it."""
        provider = make_provider()
        with pytest.raises(ItemNotFoundError) as caught:
            await provider.load("nope")
        assert isinstance(caught.value, KeyError)
        assert isinstance(caught.value, StorageError)
        assert "nope" in str(caught.value)
        assert await provider.delete("nope") is False

    @_in_own_loop
    async def test_delete_return_values(self, make_provider: Factory) -> None:
        """``delete`` is True when it removed a live item, then False."""
        provider = make_provider()
        await provider.save("k", 1, "a")
        assert await provider.delete("k") is True
        assert await provider.delete("k") is False
        with pytest.raises(ItemNotFoundError):
            await provider.load("k")

    @_in_own_loop
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
    @_in_own_loop
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

    # -- the manager ---------------------------------------------------------------------

    @_in_own_loop
    async def test_content_type_is_identity_through_the_manager(self, make_provider: Factory) -> None:
        """Through the manager, content type is part of an item's identity."""
        provider = make_provider()
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

    @_in_own_loop
    async def test_content_types_may_be_str_subclasses(self, make_provider: Factory) -> None:
        """A content type that is a str subclass is the plain str it equals."""

        class ContentType(str):
            pass

        doc = ContentType("doc")
        manager = UnifiedStorageManager(metrics=MetricsManager())
        manager.register_provider(doc, make_provider())
        await manager.save("k", 1, doc)
        assert (await manager.load("k", "doc")).data == 1  # the plain str finds it too
        assert (await manager.load("k", doc)).metadata.content_type == "doc"
        assert [r.item.data async for r in manager.search(StorageQuery(content_type=doc))] == [1]
        assert await manager.delete("k", doc) is True

    @_in_own_loop
    async def test_namespaces_are_separate_keyspaces(self, make_provider: Factory) -> None:
        """Two providers ``make_provider`` made do not see each other's items."""
        one, two = make_provider(), make_provider()
        await one.save("k", 1, "a")
        with pytest.raises(ItemNotFoundError):
            await two.load("k")
        assert await keys_of(two) == set()

    # -- search ----------------------------------------------------------------------------

    @_in_own_loop
    async def test_every_query_field(self, make_provider: Factory) -> None:
        """Each criterion alone and all ANDed; time bounds inclusive; no expiry meets no expires_* bound."""
        provider = make_provider()
        created = await seed_for_queries(provider)
        expiry = await expiries_of(provider)
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

    @_in_own_loop
    async def test_limit(self, make_provider: Factory) -> None:
        """A search with a limit yields exactly ``min(limit, matches)`` results."""
        provider = make_provider()
        for n in range(10):
            await provider.save(f"k{n}", n, "a", tags={"all": "yes"})
        assert len([r async for r in provider.search(StorageQuery(tags={"all": "yes"}, limit=3))]) == 3
        assert [r async for r in provider.search(StorageQuery(limit=0))] == []
        assert len([r async for r in provider.search(StorageQuery(limit=100))]) == 10

    @pytest.mark.parametrize("fields", BAD_QUERIES)
    @_in_own_loop
    async def test_a_bad_query_is_refused(self, make_provider: Factory, fields: dict[str, Any]) -> None:
        """Building a bad query never raises; ``search`` and ``delete_matching`` raise
        ValidationError, and delete nothing."""
        query = StorageQuery(**fields)
        provider = make_provider()
        await provider.save_many({"a": 1, "b": 2}, "x", tags={"t": "1"})
        with pytest.raises(ValidationError):
            [r async for r in provider.search(query)]
        with pytest.raises(ValidationError):
            await provider.delete_matching(query)
        assert await keys_of(provider) == {"a", "b"}

    @_in_own_loop
    async def test_results_carry_score_and_highlights(self, make_provider: Factory) -> None:
        """Exact matching: every result's score is 1.0 and it has no highlights."""
        provider = make_provider()
        await provider.save("k", 1, "a")
        [result] = [r async for r in provider.search(StorageQuery())]
        assert (result.score, result.highlights) == (1.0, [])

    @_in_own_loop
    async def test_saving_during_search_is_safe(self, make_provider: Factory) -> None:
        """Saving and deleting while a search runs neither fails it nor loses the writes."""
        provider = make_provider()
        for n in range(5):
            await provider.save(f"k{n}", n, "a")
        seen = set()
        async for result in provider.search(StorageQuery(pattern="k*")):
            seen.add(result.item.metadata.key)
            await provider.save(f"new{result.item.data}", 0, "a")
            await provider.delete(f"k{(result.item.data + 1) % 5}")
        assert seen  # whatever it saw, it finished without error
        assert await keys_of(provider, pattern="new*") == {f"new{n}" for n in range(5) if f"k{n}" in seen}

    @_in_own_loop
    async def test_provider_is_usable_after_cleanup(self, make_provider: Factory) -> None:
        """``async with`` cleans up on exit, and a cleaned-up provider works again."""
        provider = make_provider()
        async with provider as entered:
            assert entered is provider
            await provider.save("k", 1, "a")
        await provider.cleanup()
        await provider.save("k2", 2, "a")
        assert (await provider.load("k2")).data == 2

    # -- keys and names ----------------------------------------------------------------------

    @_in_own_loop
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
    @_in_own_loop
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

    @_in_own_loop
    async def test_long_content_types_and_tags(self, make_provider: Factory) -> None:
        """Content types and tags have no length limit either."""
        provider = make_provider()
        long = "x" * 5000
        await provider.save("k", 1, long, tags={long: long})
        assert await keys_of(provider, content_type=long, tags={long: long}) == {"k"}
        assert await keys_of(provider, tags={long: long + "y"}) == set()

    @_in_own_loop
    async def test_ids_are_unique(self, make_provider: Factory) -> None:
        """Every new item gets an id of its own."""
        provider = make_provider()
        ids = {(await provider.save(f"k{n}", n, "a")).metadata.id for n in range(50)}
        assert len(ids) == 50

    # -- bulk and set operations ----------------------------------------------------------

    @_in_own_loop
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

    @_in_own_loop
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
    @_in_own_loop
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

    @_in_own_loop
    async def test_a_batch_naming_one_key_twice_is_refused(self, make_provider: Factory) -> None:
        """A mapping that names a key twice is refused, writing nothing."""
        provider = make_provider()
        await provider.save("a", 0, "t")
        repeating = _RepeatingMapping([("b", 1), ("a", 2), ("a", 1)])
        # A Mapping (if a broken one) that names "a" twice; and two keys equal as str, not as dict keys.
        assert (list(repeating), len(repeating), repeating["b"]) == (["b", "a", "a"], 3, 1)
        first, second = _IdentityKey("a"), _IdentityKey("a")
        assert (first == second, str(first) == str(second)) == (False, True)
        for batch in (repeating, {first: 1, second: 2}):
            with pytest.raises(ValidationError, match="key 'a' more than once"):
                await provider.save_many(batch, "t", tags={"x": "1"})  # type: ignore[arg-type]
            assert await keys_of(provider) == {"a"}
            assert (await provider.load("a")).data == 0
        await self.check_store(provider)

    @_in_own_loop
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
    @_in_own_loop
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
    @_in_own_loop
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
    @_in_own_loop
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

    @_in_own_loop
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
    @_in_own_loop
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

    @_in_own_loop
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

    @_in_own_loop
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

    @_in_own_loop
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

    # -- against the reference model ----------------------------------------------------------

    def test_search_matches_model(self, make_provider: Factory, conformance_settings: settings) -> None:
        """Random stores (saves and ``save_many`` batches) and a random query each: the
        search finds what the reference model finds (or ``min(limit, matches)`` of it)."""

        async def run(writes: list[kit.NewItem | kit.Batch], shape: kit.QueryShape) -> None:
            provider = make_provider()
            try:
                model = ReferenceModel()
                for write in writes:
                    check_saved(model, await perform(provider, write), write)
                await check_search(provider, model, shape.query(model.history))
            finally:
                await provider.cleanup()

        small = st.none() | st.integers(0, 9)  # the data plays no part in a search: the machine varies it
        writes = st.lists(kit.items(small) | kit.batches(max_size=4, values=small), max_size=6)

        @conformance_settings
        @given(writes=writes, shape=kit.query_shapes())
        def check(writes: list[kit.NewItem | kit.Batch], shape: kit.QueryShape) -> None:
            asyncio.run(run(writes, shape))

        check()

    def test_state_machine(self, make_provider: Factory, conformance_settings: settings) -> None:
        """The stateful machine (:class:`~unistore.testing.machine.ProviderMachine`): random
        steps, every answer held against the reference model."""
        run_machine(make_provider, self, conformance_settings)
