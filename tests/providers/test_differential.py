"""Differential: an LMDB and a Redis provider, given the same writes, answer every read alike.

Neither side is the model: whatever one finds, the other must find too, with the same
data, tags, content type and expiry, and the same item identity (an upsert keeps its
id on both or on neither). Keys are odd on purpose (glob characters, braces, colons,
non-ASCII, keys past LMDB's 506-byte limit), so the providers' different ways of
matching a pattern (LMDB: the core's glob over a key range; Redis: ``SCAN MATCH`` on
the server, then the core's glob) are held against each other.

Expiries are fixed instants, far in the past or the future, never near now: an
expiry that falls during a run would make the two sides disagree by timing alone.
Creation times differ between the stores, so a ``created_*`` bound names a save
(each store uses the time its own copy of that save got), and is dropped when the
two stores' times would not split their items alike.

``redis_factory`` builds the Redis side; a Redis Cluster variant joins as one more param.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from helpers import Factory
from unistore import ItemNotFoundError, StorageItem, StorageProvider, StorageQuery
from unistore.providers import LmdbStorageProvider, RedisStorageProvider
from unistore.testing import strategies as kit
from unistore.testing.machine import perform

pytestmark = pytest.mark.redis

T = TypeVar("T")

# -- providers -------------------------------------------------------------------

#: The Redis deployments the LMDB provider is held against.
REDIS_KINDS = ["redis", "redis-shards", "redis-cluster"]


@pytest.fixture(params=REDIS_KINDS)
def redis_factory(request: pytest.FixtureRequest) -> Factory:
    """Makes fresh Redis providers of one kind, each in a namespace of its own (one database
    shared by every test). The caller cleans each up in the event loop that used it."""
    if request.param == "redis-cluster":  # 3 masters, a namespace over all of them
        nodes = [f"127.0.0.1:{port}" for port in request.getfixturevalue("redis_cluster")]
        where: dict[str, Any] = {"cluster_nodes": nodes, "shards": 4}
    else:  # 3 shards: a save_many and a search span shards
        port = request.getfixturevalue("redis_port")
        where = {"host": "127.0.0.1", "port": port, "shards": 3 if request.param == "redis-shards" else 1}

    def make() -> StorageProvider[Any]:
        return RedisStorageProvider({**where, "namespace": uuid.uuid4().hex})

    return make


@pytest.fixture
def lmdb_factory(tmp_path: Path) -> Iterator[Factory]:
    """Makes fresh LMDB providers, each in a store of its own (as ``provider_factory`` does:
    hypothesis makes one per example)."""
    numbers = itertools.count()
    made: list[LmdbStorageProvider] = []

    def make() -> StorageProvider[Any]:
        number = next(numbers)
        provider = LmdbStorageProvider(tmp_path / f"store{number}", namespace=f"ns{number}")
        made.append(provider)
        return provider

    yield make
    for provider in made:  # each was cleaned up in its loop already: this only makes sure
        provider.engine.close()


# -- what the two sides are given --------------------------------------------------

# The conformance kit's strategies (unistore.testing.strategies): odd keys (glob
# characters, braces, colons, non-ASCII, keys past LMDB's 506-byte limit), a few
# content types and tags, data of every storable kind, and expiries at fixed
# instants far from now (past ones are accepted and invisible at once).
keys = kit.keys()
content_types = kit.content_types()
tags = kit.tag_sets()
expiries = kit.expiries()
data = kit.data()
FAR = kit.FAR


@dataclass
class Delete:
    key: str
    content_type: str | None

    async def run(self, provider: StorageProvider[Any]) -> bool:
        return await provider.delete(self.key, content_type=self.content_type)


@dataclass
class DeleteMany:
    keys: list[str]
    content_type: str | None

    async def run(self, provider: StorageProvider[Any]) -> int:
        return await provider.delete_many(self.keys, content_type=self.content_type)


@dataclass
class Purge:
    async def run(self, provider: StorageProvider[Any]) -> None:
        await provider.purge_expired()  # type: ignore[attr-defined]  # how many it met differs by design


#: Writes: the kit's saves and batches (its ``perform`` runs them), deletes and purges.
saves = kit.items()
bulk_saves = kit.batches()
Write = kit.NewItem | kit.Batch | Delete | DeleteMany | Purge


async def run_write(write: Write, provider: StorageProvider[Any]) -> Any:
    """What ``provider`` answers to ``write``: a save's items, a delete's count or bool."""
    if isinstance(write, (kit.NewItem, kit.Batch)):
        return await perform(provider, write)
    return await write.run(provider)


deletes = st.one_of(
    st.builds(Delete, keys, st.none() | content_types),
    st.builds(DeleteMany, st.lists(keys, max_size=4), st.none() | content_types),
    st.builds(Purge),
)

#: Queries of up to three criteria and a limit, whose key patterns, tags and ``created_*``
#: bounds are picked from each side's saves when they run (the kit's :class:`QueryShape`).
shapes = kit.query_shapes
QueryShape = kit.QueryShape
EVERYTHING = kit.EVERYTHING


# -- one side --------------------------------------------------------------------


@dataclass
class Side:
    """One provider, and what its own saves returned: item identity is compared between
    the two sides by the order in which each side's ids first appeared."""

    provider: StorageProvider[Any]
    ids: dict[UUID, int] = field(default_factory=dict)
    #: The latest item saved under each key and not known to be deleted (live or not).
    latest: dict[str, StorageItem[Any]] = field(default_factory=dict)
    #: Every item a save returned, in order.
    history: list[StorageItem[Any]] = field(default_factory=list)

    def saved(self, items: list[StorageItem[Any]]) -> list[tuple[Any, ...]]:
        for item in items:
            self.ids.setdefault(item.metadata.id, len(self.ids))
            self.latest[item.metadata.key] = item
            self.history.append(item)
        return [self.view(item) for item in items]

    def deleted(self, keys: list[str], content_type: str | None) -> None:
        for key in keys:
            item = self.latest.get(key)
            if item is not None and content_type in (None, item.metadata.content_type):
                del self.latest[key]

    def view(self, item: StorageItem[Any]) -> tuple[Any, ...]:
        """What must be the same on both sides: everything but the times the clock gave
        (an item's id as the order it first appeared in)."""
        meta = item.metadata
        return (meta.key, item.data, meta.content_type, meta.tags, meta.expires_at, self.ids[meta.id])

    def found(self, items: list[StorageItem[Any]]) -> dict[str, tuple[Any, ...]]:
        """The views of the items a read returned, by key, each checked to be the item as
        its latest save returned it (what a save returns is what a load returns)."""
        keys = [item.metadata.key for item in items]
        assert len(keys) == len(set(keys)), f"an item came back twice: {sorted(keys)}"
        for item in items:
            assert item == self.latest.get(item.metadata.key), f"not the item as saved: {item}"
        return {item.metadata.key: self.view(item) for item in items}

    def created_split(self, shape: QueryShape) -> tuple[list[bool], list[bool]]:
        """Which saved items each ``created_*`` bound of ``shape`` admits, here."""
        after, before = shape.created_bounds(self.history)
        times = [item.metadata.created_at for item in self.history]
        return [after is None or t >= after for t in times], [before is None or t <= before for t in times]

    async def search(self, query: StorageQuery) -> list[StorageItem[Any]]:
        return [result.item async for result in self.provider.search(query)]

    async def plan(self, query: StorageQuery) -> str:
        return await plan_of(self.provider, query)


async def plan_of(provider: StorageProvider[Any], query: StorageQuery) -> str:
    """The access path a search of ``query`` takes (in shard 0 on Redis)."""
    if isinstance(provider, LmdbStorageProvider):
        return provider.engine.explain(query).path
    if isinstance(provider, RedisStorageProvider):
        return (await provider.explain(query)).path
    return "?"


async def loaded(provider: StorageProvider[Any], key: str, content_type: str | None) -> list[StorageItem[Any]]:
    """The item ``load`` returns, or none."""
    try:
        return [await provider.load(key, content_type=content_type)]
    except ItemNotFoundError:
        return []


async def keys_of(provider: StorageProvider[Any], query: StorageQuery) -> list[str]:
    return [result.item.metadata.key async for result in provider.search(query)]


async def items_of(provider: StorageProvider[Any], query: StorageQuery) -> dict[str, StorageItem[Any]]:
    items = {result.item.metadata.key: result.item async for result in provider.search(query)}
    assert len(items) == len(await keys_of(provider, query)), "an item came back twice"
    return items


# -- the machine -------------------------------------------------------------------


class ProvidersAgree(RuleBasedStateMachine):
    """Random writes go to both sides; after each step every read must agree."""

    make_lmdb: Callable[[], StorageProvider[Any]]
    make_redis: Callable[[], StorageProvider[Any]]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.lmdb = Side(self.make_lmdb())
        self.redis = Side(self.make_redis())
        self.written = False  # since the stores were last compared whole

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def pair(self, lmdb: Coroutine[Any, Any, T], redis: Coroutine[Any, Any, T]) -> tuple[T, T]:
        """Both sides' outcomes, run at once."""

        async def together() -> tuple[T, T]:
            first, second = await asyncio.gather(lmdb, redis)
            return first, second

        return self.run(together())

    def both(self, call: Callable[[Side], Coroutine[Any, Any, T]]) -> tuple[T, T]:
        return self.pair(call(self.lmdb), call(self.redis))

    def queries(self, shape: QueryShape, limit: int | None) -> tuple[StorageQuery, StorageQuery]:
        """The query each side runs (both sides saved the same keys and tags, so a pattern
        or tags taken from a save are the same); a ``created_*`` bound that would split
        the two sides' saves differently (their clocks tied or not alike) is left out of both."""
        shape = dataclasses.replace(shape, limit=limit)
        split_lmdb, split_redis = self.lmdb.created_split(shape), self.redis.created_split(shape)
        if split_lmdb[0] != split_redis[0]:
            event("created_after dropped: the two clocks split the saves differently")
            shape = dataclasses.replace(shape, created_after=None)
        if split_lmdb[1] != split_redis[1]:
            event("created_before dropped: the two clocks split the saves differently")
            shape = dataclasses.replace(shape, created_before=None)
        return shape.query(self.lmdb.history), shape.query(self.redis.history)

    def matches(self, shape: QueryShape) -> dict[str, tuple[Any, ...]]:
        """What both sides find for ``shape`` without its limit, checked to be the same."""
        query_lmdb, query_redis = self.queries(shape, None)
        if shape != EVERYTHING:  # the statistics are of the random queries
            note(f"query: {query_lmdb} / {query_redis}")
            plans = self.pair(self.lmdb.plan(query_lmdb), self.redis.plan(query_redis))
            event(f"plans: lmdb {plans[0]}, redis {plans[1]}")
        found_lmdb, found_redis = self.pair(self.lmdb.search(query_lmdb), self.redis.search(query_redis))
        lmdb, redis = self.lmdb.found(found_lmdb), self.redis.found(found_redis)
        assert set(lmdb) == set(redis), (
            f"{query_lmdb}: found only by LMDB {sorted(set(lmdb) - set(redis))}, only by Redis "
            f"{sorted(set(redis) - set(lmdb))}"
        )
        assert lmdb == redis
        if shape != EVERYTHING:
            event(f"matches: {min(len(lmdb), 3)}{'+' if len(lmdb) > 3 else ''}")
        return lmdb

    # -- writes --------------------------------------------------------------------

    @initialize(
        write=st.builds(kit.Batch, st.dictionaries(keys, data, min_size=3, max_size=8), content_types, st.none(), tags)
    )
    def seed(self, write: kit.Batch) -> None:
        """A store that holds something from the start, so the first queries can find it."""
        self.write(write)

    # Saves are drawn most often (three rules of seven), so the stores hold something.
    @rule(write=saves)
    def save(self, write: kit.NewItem) -> None:
        self.write(write)

    @rule(write=bulk_saves)
    def save_many(self, write: kit.Batch) -> None:
        self.write(write)

    @rule(write=saves, which=st.integers(0, 63))
    def upsert(self, write: kit.NewItem, which: int) -> None:
        """A save over a key saved before (when there is one)."""
        if self.lmdb.history:
            old = self.lmdb.history[which % len(self.lmdb.history)].metadata.key
            write = dataclasses.replace(write, key=old)
        self.write(write)

    @rule(write=deletes)
    def delete(self, write: Delete | DeleteMany | Purge) -> None:
        self.write(write)

    def write(self, write: Write) -> None:
        self.written = True
        lmdb, redis = self.both(lambda side: run_write(write, side.provider))
        if isinstance(lmdb, list) and isinstance(redis, list):  # a save's items
            assert self.lmdb.saved(lmdb) == self.redis.saved(redis)
            return
        assert lmdb == redis, f"{write}: LMDB says {lmdb!r}, Redis {redis!r}"
        if isinstance(write, (Delete, DeleteMany)):
            removed = [write.key] if isinstance(write, Delete) else write.keys
            for side in (self.lmdb, self.redis):
                side.deleted(removed, write.content_type)

    @rule(shape=shapes())
    def delete_matching(self, shape: QueryShape) -> None:
        self.written = True
        matched = self.matches(shape)
        query_lmdb, query_redis = self.queries(shape, shape.limit)
        counts = self.pair(
            self.lmdb.provider.delete_matching(query_lmdb), self.redis.provider.delete_matching(query_redis)
        )
        expected = len(matched) if shape.limit is None else min(shape.limit, len(matched))
        assert counts == (expected, expected), f"{query_lmdb}: {len(matched)} match, deleted {counts} (LMDB, Redis)"
        gone = []
        for side in (self.lmdb, self.redis):
            left = self.run(side.provider.load_many(list(matched)))
            gone.append(set(matched) - set(left))
            side.deleted(sorted(gone[-1]), None)
        assert [len(keys) for keys in gone] == [expected, expected]
        # Which matches a limited delete takes is unspecified: each side loses the other's too.
        extra_lmdb, extra_redis = sorted(gone[1] - gone[0]), sorted(gone[0] - gone[1])
        self.pair(self.lmdb.provider.delete_many(extra_lmdb), self.redis.provider.delete_many(extra_redis))
        self.lmdb.deleted(extra_lmdb, None)
        self.redis.deleted(extra_redis, None)

    # -- reads ---------------------------------------------------------------------

    @rule(shape=shapes())
    def search(self, shape: QueryShape) -> None:
        matched = self.matches(shape)
        if shape.limit is None:
            return
        query_lmdb, query_redis = self.queries(shape, shape.limit)
        found = self.pair(self.lmdb.search(query_lmdb), self.redis.search(query_redis))
        for side, items in zip((self.lmdb, self.redis), found, strict=True):
            views = side.found(items)
            assert len(views) == min(shape.limit, len(matched)), f"{query_lmdb}: {len(views)} of {len(matched)}"
            assert views.items() <= matched.items()

    @rule(probes=st.lists(keys, min_size=1, max_size=6), content_type=st.none() | content_types)
    def load_many(self, probes: list[str], content_type: str | None) -> None:
        """``load_many`` of some keys (repeats, misses), and ``load`` of the first."""
        lmdb, redis = self.both(lambda side: side.provider.load_many(probes, content_type=content_type))
        assert self.lmdb.found(list(lmdb.values())) == self.redis.found(list(redis.values()))
        ones = self.both(lambda side: loaded(side.provider, probes[0], content_type))
        assert self.lmdb.found(ones[0]) == self.redis.found(ones[1])

    @invariant()
    def stores_agree(self) -> None:
        """Everything either side holds, by a search of everything and by loading every key
        ever saved, after every step that wrote."""
        if not self.written:
            return
        self.written = False
        everything = self.matches(EVERYTHING)
        every_key = sorted({item.metadata.key for item in self.lmdb.history})
        lmdb, redis = self.both(lambda side: side.provider.load_many(every_key))
        assert self.lmdb.found(list(lmdb.values())) == self.redis.found(list(redis.values())) == everything

    def teardown(self) -> None:
        async def close() -> None:
            try:  # leave nothing in the shared database
                await self.redis.provider.delete_matching(StorageQuery())
                await self.redis.provider.purge_expired()  # type: ignore[attr-defined]
            finally:
                await self.redis.provider.cleanup()
                await self.lmdb.provider.cleanup()

        try:
            self.run(close())
        finally:
            self.loop.close()


def test_providers_agree(lmdb_factory: Factory, redis_factory: Factory, request: pytest.FixtureRequest) -> None:
    """Interleaved saves, bulk saves, upserts, deletes, purges, searches (limited or not),
    ``load_many`` and ``delete_matching``: LMDB and Redis agree after every step."""

    class Machine(ProvidersAgree):
        make_lmdb = staticmethod(lmdb_factory)
        make_redis = staticmethod(redis_factory)

    # At most 50 runs (20 over several shards: a run there costs about 1 s): a run costs 0.2 to
    # 0.4 s on one shard, so the ci profile's 300 would take minutes of CI's budget. Each
    # provider also runs the conformance kit's own machine against the reference model
    # (tests/providers/test_conformance.py).
    most = 50 if request.node.callspec.params["redis_factory"] == "redis" else 20
    run_state_machine_as_test(
        Machine, settings=settings(max_examples=min(settings().max_examples, most), stateful_step_count=20)
    )


# -- patterns ------------------------------------------------------------------------

#: Every key of up to two characters from glob characters and a few others, and the odd keys.
PATTERN_KEYS = sorted(
    set(kit.ODD_KEYS)
    | {"".join(chars) for size in (1, 2) for chars in itertools.product("a*?[]\\-^é\x00", repeat=size)}
)
#: More pattern pieces: negation, ranges, empty and unterminated classes.
MORE_PARTS = ["[^", "[a-", "-", "^", "[]", "[]a]", "[^]]", "[a-\\]", "[!a]", "\x00", "[\x00-b]", "[é-a]"]


def test_patterns_agree(lmdb_factory: Factory, redis_factory: Factory) -> None:
    """One store of odd keys, many patterns: LMDB (the core's glob over the key range of a
    pattern's literal prefix) and Redis (SCAN MATCH, then the core's glob) find the same keys."""
    loop = asyncio.new_event_loop()
    lmdb, redis = lmdb_factory(), redis_factory()

    parts = st.sampled_from(kit.PATTERN_PARTS + MORE_PARTS) | st.sampled_from(PATTERN_KEYS) | st.sampled_from("*?")

    @given(st.lists(parts, max_size=6))
    def check(parts: list[str]) -> None:
        query = StorageQuery(pattern="".join(parts))
        found = [set(loop.run_until_complete(keys_of(provider, query))) for provider in (lmdb, redis)]
        assert found[0] == found[1], (
            f"{query.pattern!r}: only LMDB {found[0] - found[1]}, only Redis {found[1] - found[0]}"
        )
        event(f"keys found: {min(len(found[0]), 3)}{'+' if len(found[0]) > 3 else ''}")

    async def fill() -> None:
        for provider in (lmdb, redis):
            await provider.save_many(dict.fromkeys(PATTERN_KEYS, None), "ta")

    async def close() -> None:
        try:
            await redis.delete_matching(StorageQuery())
        finally:
            await redis.cleanup()
            await lmdb.cleanup()

    try:
        loop.run_until_complete(fill())
        check()
    finally:
        try:
            loop.run_until_complete(close())
        finally:
            loop.close()


# -- past one chunk ----------------------------------------------------------------

#: Items that match the queries below, per Redis shard: past one search chunk (256) in each.
HOT_PER_SHARD = 300
#: Items that match none of them: enough that both planners take their indexes for the hot
#: ones (Redis prices a scan by its whole database: 0.5 µs a key, against 10 µs an indexed item).
FILLER = 7_000


async def test_chunks_agree(lmdb_factory: Factory, redis_factory: Factory) -> None:
    """Searches that read many chunks, on every access path, with ties in the time orders
    (one ``save_many``: one creation time and one expiry): both sides find every match,
    a limit cuts each at the same count, and limited deletes remove as many."""
    async with lmdb_factory() as lmdb, redis_factory() as redis:
        filler = {f"f:{number}": number for number in range(FILLER)}
        hot = {f"hot:{number}": [number] for number in range(HOT_PER_SHARD * getattr(redis, "shards", 1))}
        created = []
        for provider in (lmdb, redis):
            await provider.save_many(filler, "ta", None, {"t": "cold"})
            times = {item.metadata.created_at for item in await provider.save_many(hot, "tb", FAR, {"t": "hot"})}
            created.append((min(times), max(times)))  # Redis: a time per shard
        queries = {  # by the access path each is meant to take; each side's creation times its own
            "postings": [StorageQuery(tags={"t": "hot"})] * 2,
            "keys": [StorageQuery(pattern="hot:*")] * 2,
            "created": [StorageQuery(created_after=low, created_before=high) for low, high in created],
            "expires": [StorageQuery(expires_after=FAR, expires_before=FAR)] * 2,
        }
        for path, pair in queries.items():
            plans = [await plan_of(lmdb, pair[0]), await plan_of(redis, pair[1])]
            assert plans == [path, path], f"grow FILLER: a search is to take the {path} path"
            found = [await items_of(lmdb, pair[0]), await items_of(redis, pair[1])]
            assert [{key: item.data for key, item in each.items()} for each in found] == [hot, hot], path
            for limit in (1, 257):
                limited = [dataclasses.replace(query, limit=limit) for query in pair]
                keys = [await keys_of(lmdb, limited[0]), await keys_of(redis, limited[1])]
                assert [len(each) for each in keys] == [limit, limit], (path, limit)
                assert all(len(set(each)) == limit and set(each) <= set(hot) for each in keys), (path, limit)
        for path, pair in queries.items():  # each path deletes a part of what is left
            limited = [dataclasses.replace(query, limit=50) for query in pair]
            counts = [await lmdb.delete_matching(limited[0]), await redis.delete_matching(limited[1])]
            assert counts == [50, 50], path
        everything = StorageQuery()
        assert [await lmdb.delete_matching(everything), await redis.delete_matching(everything)] == [
            FILLER + len(hot) - 200
        ] * 2
        await redis.purge_expired()  # type: ignore[attr-defined]
