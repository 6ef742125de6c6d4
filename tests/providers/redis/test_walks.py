"""Ordered searches and pages on Redis: the walks of a shard's key, creation and update
orders from a page's position, the planner's choice between a walk and ordering a posting
set's matches, and the key and update orders' upkeep (check and repair)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from helpers import UTC
from unistore import StorageItem, StorageMetadata, StorageQuery
from unistore.model import datetime_to_micros
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import layout, search

pytestmark = pytest.mark.redis

AT = datetime(2026, 6, 1, tzinfo=UTC)
Make = Callable[..., RedisStorageProvider]


@pytest.fixture(params=["standalone", "sharded", "cluster"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """Makes fresh providers: on one server, one namespace in one shard or in four; on the cluster, in four."""
    made: list[RedisStorageProvider] = []

    def provider(**settings: Any) -> RedisStorageProvider:
        namespace = uuid.uuid4().hex
        if request.param == "cluster":
            nodes = [f"127.0.0.1:{port}" for port in request.getfixturevalue("redis_cluster")]
            made.append(RedisStorageProvider(cluster_nodes=nodes, namespace=namespace, shards=4, **settings))
        else:
            port = request.getfixturevalue("redis_port")
            shards = 4 if request.param == "sharded" else 1
            made.append(RedisStorageProvider(port=port, namespace=namespace, shards=shards, **settings))
        return made[-1]

    yield provider
    for each in made:
        await each.cleanup()


def item(key: str, created: datetime, updated: datetime, **tags: str) -> StorageItem[Any]:
    """An item as another store held it, with these times (for restore_many)."""
    return StorageItem({"key": key}, StorageMetadata(uuid.uuid4(), key, "t", created, updated, None, tags))


def expected(items: list[StorageItem[Any]], order_by: str, keep: Callable[[StorageItem[Any]], bool]) -> list[str]:
    """The reference model: the keys of the items ``keep`` keeps, in ``order_by``."""
    field = order_by.lstrip("-")

    def rank(each: StorageItem[Any]) -> tuple[Any, ...]:
        name = each.metadata.key.encode()
        return (name,) if field == "key" else (getattr(each.metadata, field), name)

    return [each.metadata.key for each in sorted(filter(keep, items), key=rank, reverse=order_by.startswith("-"))]


async def paged(provider: RedisStorageProvider, query: StorageQuery, size: int) -> list[str]:
    """The keys of every page of ``query``, walked by cursor (each page but the last full)."""
    keys: list[str] = []
    cursor = None
    for _ in range(1000):
        page = await provider.page(query, size, cursor)
        keys += [result.item.metadata.key for result in page.results]
        if page.next is None:
            return keys
        assert len(page.results) == size
        cursor = page.next
    raise AssertionError("the walk did not end")


#: The keys "k1[0-4]*" starts with.
TENS = {f"k1{n}" for n in range(5)}


def tens_half(each: StorageItem[Any]) -> bool:
    return each.metadata.key[:3] in TENS and each.metadata.tags["half"] == "yes"


ORDERS = ["key", "-key", "created_at", "-created_at", "updated_at", "-updated_at"]


@pytest.mark.watchdog(120)
async def test_pages_in_every_order_equal_the_reference(make: Make) -> None:
    provider = make()
    picks = random.Random(7)
    keys = [f"k{n:03d}" for n in range(120)] + ["é", "z", "Z", "k0", "k00é"]
    items = [
        item(
            key,
            AT + timedelta(seconds=picks.randrange(30)),  # many share an instant
            AT + timedelta(seconds=picks.randrange(30)),
            half="yes" if number % 2 else "no",
            few="yes" if number % 40 == 0 else "no",
        )
        for number, key in enumerate(keys)
    ]
    await provider.restore_many(items)
    middle = AT + timedelta(seconds=10)
    late = middle + timedelta(seconds=9)
    filters: list[tuple[dict[str, Any], Callable[[StorageItem[Any]], bool]]] = [
        ({}, lambda each: True),
        ({"tags": {"half": "yes"}}, lambda each: each.metadata.tags["half"] == "yes"),
        ({"tags": {"few": "yes"}}, lambda each: each.metadata.tags["few"] == "yes"),
        ({"pattern": "k0*"}, lambda each: each.metadata.key.startswith("k0")),
        ({"pattern": "k1[0-4]*", "tags": {"half": "yes"}}, tens_half),
        ({"created_after": middle, "created_before": late}, lambda each: middle <= each.metadata.created_at <= late),
    ]
    walks: set[Any] = set()
    for criteria, keep in filters:
        for order_by in ORDERS:
            query = StorageQuery(**criteria, order_by=order_by)
            want = expected(items, order_by, keep)
            assert await paged(provider, query, 7) == want, (criteria, order_by)
            found = [r.item.metadata.key async for r in provider.search(StorageQuery(**criteria, order_by=order_by))]
            assert found == want
            limited = StorageQuery(**criteria, order_by=order_by, limit=9)
            assert [r.item.metadata.key async for r in provider.search(limited)] == want[:9]
            walks.add((await provider.explain(limited)).walk)
    assert walks >= {None, "key", "created_at", "updated_at"}  # both ways of reading were taken


@pytest.mark.watchdog(120)
async def test_pages_across_a_run_of_items_saved_in_one_microsecond(make: Make) -> None:
    provider = make()
    items = [item(f"same{n:04d}", AT, AT, all="yes") for n in range(250)]
    items += [item(f"before{n}", AT - timedelta(microseconds=1), AT + timedelta(microseconds=1)) for n in range(5)]
    items += [item(f"after{n}", AT + timedelta(microseconds=1), AT - timedelta(microseconds=1)) for n in range(5)]
    await provider.restore_many(items)
    for order_by in ("created_at", "-created_at", "updated_at", "-updated_at"):
        want = expected(items, order_by, lambda each: True)
        assert await paged(provider, StorageQuery(order_by=order_by), 20) == want, order_by
        assert await paged(provider, StorageQuery(order_by=order_by), 33) == want, order_by
        tagged = expected(items, order_by, lambda each: "all" in each.metadata.tags)
        assert await paged(provider, StorageQuery(tags={"all": "yes"}, order_by=order_by), 20) == tagged


async def test_the_planner_walks_a_dense_tag_and_orders_a_rare_ones_matches(make: Make) -> None:
    provider = make()
    await provider.save_many({f"k{n:04d}": n for n in range(0, 2000, 2)}, "t", tags={"half": "yes"})
    await provider.save_many({f"k{n:04d}": n for n in range(1, 2000, 20)}, "t", tags={"rare": "yes"})
    await provider.save_many({f"k{n:04d}": n for n in range(3, 2000, 20)}, "t", tags={"other": "yes"})
    dense = StorageQuery(tags={"half": "yes"}, order_by="-created_at", limit=21)
    rare = StorageQuery(tags={"rare": "yes"}, order_by="-created_at", limit=21)
    assert (await provider.explain(dense)).walk == "created_at"
    plan = await provider.explain(rare)
    assert plan.walk is None
    assert plan.path == "postings"
    assert (await provider.explain(StorageQuery(tags={"rare": "yes"}, order_by="key"))).walk is None  # no limit
    stored = list((await provider.load_many(f"k{n:04d}" for n in range(1, 2000, 20))).values())
    newest = expected(stored, "-created_at", lambda each: True)
    assert [r.item.metadata.key async for r in provider.search(rare)] == newest[:21]
    assert await paged(provider, StorageQuery(tags={"rare": "yes"}, order_by="-created_at"), 21) == newest


async def test_a_page_while_other_tasks_save_and_delete(make: Make) -> None:
    provider = make()
    stable = {f"s{n:03d}" for n in range(0, 300, 3)}
    await provider.save_many(dict.fromkeys(stable, 0), "t")
    done = asyncio.Event()

    async def churn() -> None:
        number = 0
        while not done.is_set():
            key = f"s{number % 300:03d}x"  # between the stable keys
            await provider.save(key, number, "t")
            if number % 2:
                await provider.delete(key)
            number += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(churn())
    try:
        for order_by in ("key", "-key", "created_at", "-updated_at"):
            walked = await paged(provider, StorageQuery(order_by=order_by), 11)
            seen = [key for key in walked if key in stable]
            assert sorted(seen) == sorted(stable), order_by  # each unchanged item exactly once
    finally:
        done.set()
        await task


async def test_check_reports_and_repairs_the_key_and_update_orders(make: Make) -> None:
    provider = make()
    await provider.save_many({f"k{n}": n for n in range(10)}, "t", tags={"a": "1"})
    report = await provider.check()
    assert report.ok, report.problems
    assert (report.ids, report.updated_entries) == (10, 10)
    client = await _client(provider)
    prefix = layout.shard_prefix(provider.namespace.encode(), 0, provider.shards)
    shard_of = {key: shard for shard in range(provider.shards) for key in await _members(provider, client, shard)}
    target = layout.shard_prefix(provider.namespace.encode(), shard_of[b"k3"], provider.shards)
    await client.zrem(target + layout.KEY_ORDER, b"k3")
    await client.zadd(target + layout.UPDATED, {b"k3": 1})  # a wrong time
    await client.zadd(prefix + layout.KEY_ORDER, {b"nobody": 0})
    report = await provider.check()
    assert sorted(report.problems) == sorted(
        [
            "keys index lacks entry (b'k3', 0)",
            "keys index entry (b'nobody', 0) points at no record that has it",
            "updated index entry (b'k3', 1) points at no record that has it",
            f"updated index lacks entry (b'k3', {_updated(await provider.load('k3'))})",
        ]
    )
    assert not (await provider.check(repair=True)).ok
    assert (await provider.check()).ok
    assert [r.item.metadata.key async for r in provider.search(StorageQuery(order_by="key", limit=5))] == [
        "k0",
        "k1",
        "k2",
        "k3",
        "k4",
    ]
    await client.aclose()


async def test_a_namespace_written_before_the_key_and_update_orders_is_repaired_by_check(make: Make) -> None:
    provider = make()
    await provider.save_many({f"k{n}": n for n in range(12)}, "t")
    client = await _client(provider)
    for shard in range(provider.shards):  # as a namespace written before them
        prefix = layout.shard_prefix(provider.namespace.encode(), shard, provider.shards)
        await client.delete(prefix + layout.KEY_ORDER, prefix + layout.UPDATED)
    report = await provider.check()
    assert len(report.problems) == 24
    assert (report.ids, report.updated_entries) == (0, 0)
    await provider.check(repair=True)
    assert (await provider.check()).ok
    query = StorageQuery(order_by="-updated_at")
    stored = list((await provider.load_many(f"k{n}" for n in range(12))).values())
    assert await paged(provider, query, 5) == expected(stored, "-updated_at", lambda each: True)
    await client.aclose()


async def test_delete_and_purge_remove_the_key_and_update_entries(make: Make) -> None:
    provider = make()
    soon = datetime.now(UTC) + timedelta(milliseconds=300)
    await provider.save_many({f"e{n}": n for n in range(5)}, "t", expires_at=soon)
    await provider.save_many({f"k{n}": n for n in range(5)}, "t")
    await provider.delete("k0")
    assert await provider.delete_matching(StorageQuery(pattern="k1")) == 1
    await asyncio.sleep(0.4)  # Redis expires the e* records itself; their heads name their entries
    assert await provider.purge_expired() == 5
    report = await provider.check()
    assert report.ok, report.problems
    assert (report.ids, report.updated_entries, report.created_entries) == (3, 3, 3)
    assert await paged(provider, StorageQuery(order_by="-key"), 2) == ["k4", "k3", "k2"]


def _updated(stored: StorageItem[Any]) -> int:
    return datetime_to_micros(stored.metadata.updated_at)


async def _client(provider: RedisStorageProvider) -> Any:
    """A plain redis-py client of the provider's server or cluster."""
    connection = await provider._connection()
    host, port = connection.settings.nodes[0]
    if connection.topology.cluster:
        return aioredis.RedisCluster(host=host, port=port)
    return aioredis.Redis(host=host, port=port)


async def _members(provider: RedisStorageProvider, client: Any, shard: int) -> list[bytes]:
    prefix = layout.shard_prefix(provider.namespace.encode(), shard, provider.shards)
    return list(await client.zrange(prefix + layout.CREATED, 0, -1))


async def test_an_item_saved_between_a_walk_s_entries_and_its_records_loses_no_other(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = make()
    names = [f"a{n:02}" for n in range(10)] + ["b00"] + [f"a{n:02}" for n in range(10, 15)]
    names += [f"b{n:02}" for n in range(1, 10)]
    moments = [AT + timedelta(seconds=n) for n in range(len(names))]
    await provider.restore_many([item(name, at, at) for name, at in zip(names, moments, strict=True)])
    original = search.TimeWalk._entries
    saved: list[bool] = []

    async def racing(self: Any, position: Any, size: int) -> Any:
        got = await original(self, position, size)
        if not saved and b"b00" in [entry if isinstance(entry, bytes) else entry[0] for entry in got[0]]:
            saved.append(True)  # another writer, between the entries read and their records
            await provider.save("b00", {"key": "b00", "again": True}, "t")
        return got

    monkeypatch.setattr(search.TimeWalk, "_entries", racing)
    keys = await paged(provider, StorageQuery(pattern="b*", order_by="updated_at"), 1)
    assert saved
    assert [key for key in keys if key != "b00"] == [
        f"b{n:02}" for n in range(1, 10)
    ]  # each unchanged one, once, in order


async def test_times_a_score_cannot_hold_exactly_are_paged_in_order(make: Make) -> None:
    # Past 2**53 µs (the year 2255) a score rounds: items a few µs apart share one. The
    # provider orders them by their records, not by a walk of their scores.
    far = datetime(9000, 1, 1, tzinfo=UTC)
    provider = make()
    items = [
        item(f"k{n:02}", far + timedelta(microseconds=(n * 7) % 40), far + timedelta(microseconds=(n * 11) % 40))
        for n in range(40)
    ]
    await provider.restore_many(items)
    for order_by in ("created_at", "-created_at", "updated_at", "-updated_at"):
        assert (await provider.explain(StorageQuery(order_by=order_by, limit=3))).walk is None
        for size in (1, 3):
            assert await paged(provider, StorageQuery(order_by=order_by), size) == expected(
                items, order_by, lambda _: True
            ), (order_by, size)
    assert (await provider.explain(StorageQuery(order_by="key", limit=3))).walk == "key"  # (no score in a key order)


async def test_a_namespace_lacking_an_order_s_entries_is_not_walked_by_it(make: Make) -> None:
    provider = make()
    await provider.restore_many([item(f"k{n:02}", AT + timedelta(seconds=n), AT) for n in range(30)])
    client = await _client(provider)
    for shard in range(provider.shards):  # as a namespace written by 0.1 has them: no key or update order
        prefix = layout.shard_prefix(provider.namespace.encode(), shard, provider.shards)
        await client.delete(prefix + layout.KEY_ORDER, prefix + layout.UPDATED)
    await client.aclose()
    for order_by in ("key", "-updated_at"):
        assert (await provider.explain(StorageQuery(order_by=order_by, limit=3))).walk is None
        assert len(await paged(provider, StorageQuery(order_by=order_by), 7)) == 30
    assert (await provider.explain(StorageQuery(order_by="created_at", limit=3))).walk == "created_at"
