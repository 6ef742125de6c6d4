"""Ordered walks of an LMDB namespace (providers/lmdb/walk.py): the planner's choice between
walking an order and sorting the matches, and the stored orders that differ from the
order a query names (long keys kept by digest, instants kept by id)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from helpers import UTC
from unistore import StorageItem, StorageMetadata, StorageQuery
from unistore.providers import LmdbStorageProvider
from unistore.providers.lmdb.layout import KEPT_KEY_BYTES, SHORT_KEY

AT = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
async def provider(tmp_path: Path) -> Any:
    provider = LmdbStorageProvider(tmp_path / "store", durability="none")
    yield provider
    await provider.cleanup()


async def walk(provider: LmdbStorageProvider, query: StorageQuery, size: int) -> list[str]:
    """Every page of ``query``, ``size`` a page, concatenated."""
    keys, cursor = [], None
    for _ in range(1000):
        page = await provider.page(query, size, cursor)
        keys += [result.item.metadata.key for result in page.results]
        if page.next is None:
            return keys
        cursor = page.next
    raise AssertionError("the walk does not end")


async def test_the_planner_walks_an_order_where_matches_are_dense(provider: LmdbStorageProvider) -> None:
    await provider.save_many({f"k{n:05}": n for n in range(4000)}, "t")
    await provider.save_many({f"k{n:05}": n for n in range(0, 4000, 2)}, "t", tags={"half": "yes"})
    await provider.save_many({f"k{n:05}": n for n in range(1, 4000, 100)}, "t", tags={"rare": "yes"})
    newest: dict[str, Any] = {"order_by": "-created_at", "limit": 21}
    # A 1% tag: its posting list is read and its 40 matches sorted; a 50% tag: the time index is walked.
    assert (await provider.explain(StorageQuery(tags={"rare": "yes"}, **newest))).walk is None
    assert (await provider.explain(StorageQuery(tags={"half": "yes"}, **newest))).walk == "created_at"
    by_key = await provider.explain(StorageQuery(pattern="k01*", order_by="key", limit=21))
    assert (by_key.path, by_key.walk, by_key.literal) == ("keys", "key", b"k01")
    assert (await provider.explain(StorageQuery(order_by="key"))).walk is None  # no limit: every match
    assert (await provider.explain(StorageQuery(order_by="updated_at", limit=5))).walk == "updated_at"
    # Either way, the same results.
    rare = list(range(1, 4000, 100))
    found = [r.item.data async for r in provider.search(StorageQuery(tags={"rare": "yes"}, **newest))]
    assert found == sorted(rare, reverse=True)[:21]
    half = [r.item.data async for r in provider.search(StorageQuery(tags={"half": "yes"}, **newest))]
    assert half == list(range(3998, 3998 - 42, -2))
    assert await walk(provider, StorageQuery(pattern="k01*", order_by="-key"), 7) == [
        f"k{n:05}" for n in range(1999, 999, -1)
    ]


async def test_keys_stored_by_digest_come_in_key_order(provider: LmdbStorageProvider) -> None:
    stem = "x" * KEPT_KEY_BYTES
    keys = [
        stem + "a" * 40,  # long: stored as the stem and a digest
        stem + "b",  # short, beside them
        stem + "a" * (SHORT_KEY - KEPT_KEY_BYTES),  # the longest short key
        stem + "b" * 40,
        stem + "ab" * 30,
        stem[:-1] + "y",  # after the stem: another group
        stem[:-1] + "w" + "z" * 100,
        "a",
        "z",
    ]
    await provider.save_many({key: index for index, key in enumerate(keys)}, "t")
    ascending = sorted(keys, key=str.encode)
    for size in (1, 2, 5):
        assert await walk(provider, StorageQuery(order_by="key"), size) == ascending
        assert await walk(provider, StorageQuery(order_by="-key"), size) == ascending[::-1]
        assert await walk(provider, StorageQuery(pattern=stem + "*", order_by="-key"), size) == [
            key for key in ascending[::-1] if key.startswith(stem)
        ]


async def test_an_instant_s_items_come_by_key_across_pages(provider: LmdbStorageProvider) -> None:
    def made(key: str, created: datetime) -> StorageItem[Any]:
        metadata = StorageMetadata(uuid.uuid4(), key, "t", created, created, None, {})
        return StorageItem(key, metadata)

    # Ids are given in the order of the batch: the index keeps an instant's items by id, not by key.
    keys = [f"k{n}" for n in (5, 3, 9, 1, 7, 2, 8)]
    await provider.restore_many([made(key, AT) for key in keys])
    await provider.restore_many([made("early", AT - timedelta(seconds=1)), made("late", AT + timedelta(seconds=1))])
    ordered = ["early", *sorted(keys), "late"]
    for size in (1, 2, 3, 4):
        for field in ("created_at", "updated_at"):  # (restored with the two times equal)
            assert await walk(provider, StorageQuery(order_by=field), size) == ordered
            assert await walk(provider, StorageQuery(order_by="-" + field), size) == ordered[::-1]
        bounded = StorageQuery(order_by="-created_at", created_after=AT, created_before=AT)
        assert await walk(provider, bounded, size) == sorted(keys, reverse=True)
        bounded = StorageQuery(order_by="updated_at", created_after=AT, created_before=AT)
        assert await walk(provider, bounded, size) == sorted(keys)
    for field in ("created_at", "updated_at"):
        assert (await provider.explain(StorageQuery(order_by=field, limit=2))).walk == field


async def test_a_walk_by_update_time_follows_saves(provider: LmdbStorageProvider) -> None:
    await provider.save_many({f"k{n:03}": n for n in range(300)}, "t")
    for key in ("k150", "k007", "k299"):  # saved again, one after another: the newest updates
        await provider.save(key, "again", "t")
    query = StorageQuery(order_by="-updated_at", limit=4)
    assert (await provider.explain(query)).walk == "updated_at"
    found = [r.item.metadata.key async for r in provider.search(query)]
    assert found == ["k299", "k007", "k150", "k298"]
    assert (await provider.check()).updated_entries == 300
    assert await walk(provider, StorageQuery(order_by="updated_at"), 7) == [
        *(f"k{n:03}" for n in range(300) if n not in (7, 150, 299)),
        "k150",
        "k007",
        "k299",
    ]


async def test_walks_that_find_nothing(provider: LmdbStorageProvider) -> None:
    for order_by in (
        "key",
        "-key",
        "created_at",
        "-created_at",
        "updated_at",
        "-updated_at",
    ):  # an empty store: nothing to start at
        assert await walk(provider, StorageQuery(order_by=order_by), 2) == []
    await provider.save_many({"b": 1, "c": 2}, "t")
    # Before every key, descending, and after every key, ascending: the walk starts nowhere.
    assert await walk(provider, StorageQuery(pattern="a*", order_by="-key"), 2) == []
    assert await walk(provider, StorageQuery(pattern="d*", order_by="key"), 2) == []


async def test_a_walk_from_a_position_no_key_is_left_beyond(provider: LmdbStorageProvider) -> None:
    # The walk starts past the last key (ascending) or before the first (descending): the
    # keys beyond the cursor, itself included, went meanwhile; the others are behind it.
    keys = [f"a{n}" for n in range(10)] + ["b", "c", "d"]
    for order_by, gone in (("key", ["c", "d"]), ("-key", ["a0", "a1"])):
        await provider.save_many(dict.fromkeys(keys, 1), "t")
        first = await provider.page(StorageQuery(order_by=order_by), 12)
        assert first.next is not None
        await provider.delete_many(gone)
        assert (await provider.explain(StorageQuery(order_by=order_by, limit=13))).walk == "key"
        last = await provider.page(StorageQuery(order_by=order_by), 12, first.next)
        assert (last.results, last.next) == ([], None)
        await provider.delete_many(keys)


async def test_a_walk_that_ends_on_a_chunk_s_edge(provider: LmdbStorageProvider) -> None:
    keys = [f"k{n:03}" for n in range(256)]  # a search chunk's worth exactly
    await provider.save_many(dict.fromkeys(keys, 1), "t")
    assert (await provider.explain(StorageQuery(order_by="key", limit=301))).walk == "key"
    page = await provider.page(StorageQuery(order_by="key"), 300)
    assert ([r.item.metadata.key for r in page.results], page.next) == (keys, None)


async def test_a_walk_sifted_by_the_posting_lists_reads_only_their_items(provider: LmdbStorageProvider) -> None:
    # Every item its own instant, k0000 the oldest; a tenth tagged, a fifth of those twice.
    for n in range(4000):
        tags = {"tenth": "yes", **({"fiftieth": "yes"} if n % 50 == 0 else {})} if n % 10 == 0 else {}
        await provider.save(f"k{n:04}", n, "t", tags=tags)
    newest = StorageQuery(tags={"tenth": "yes"}, order_by="-created_at", limit=5)
    plan = await provider.explain(newest)
    assert (plan.walk, plan.sifted) == ("created_at", True)
    dense = await provider.explain(StorageQuery(order_by="-created_at", limit=5))
    assert (dense.walk, dense.sifted) == ("created_at", False)  # no posting list to sift by
    before = provider.engine.candidates_examined
    found = [r.item.data async for r in provider.search(newest)]
    assert found == [3990, 3980, 3970, 3960, 3950]
    assert provider.engine.candidates_examined - before <= 5 + 256 // 10  # the tagged records alone
    tenths = list(range(0, 4000, 10))
    assert await walk(provider, StorageQuery(tags={"tenth": "yes"}, order_by="updated_at"), 7) == [
        f"k{n:04}" for n in tenths
    ]
    both = StorageQuery(tags={"tenth": "yes", "fiftieth": "yes"}, order_by="-updated_at")
    assert await walk(provider, both, 3) == [f"k{n:04}" for n in range(3950, -1, -50)]
    await provider.delete("k3990")  # an id in the lists read, its item gone by the walk: passed over
    assert [r.item.data async for r in provider.search(newest)] == [3980, 3970, 3960, 3950, 3940]


async def test_a_stale_time_entry_left_by_a_damaged_record_misplaces_nothing(provider: LmdbStorageProvider) -> None:
    # A record too damaged to show its header is replaced by a save: its time entries cannot
    # be told apart and stay (check --repair removes them), and the new item takes its id.
    # A walk passes over an entry whose record has another time, however it got there.
    engine = provider.engine
    await provider.save_many({f"f{n:05}": n for n in range(300)}, "t")
    for key in ("a", "m", "k"):
        await asyncio.sleep(0.002)
        await provider.save(key, 0, "t")
    record_key = engine.record_key(b"k")
    engine.write(lambda txn, dbs: txn.put(record_key, b"\x01\x02\x03", db=dbs.records))
    await asyncio.sleep(0.002)
    await provider.save("a", 1, "t")
    await asyncio.sleep(0.002)
    await provider.save("k", 2, "t")
    for field in ("updated_at", "created_at"):
        everything = [r.item.metadata.key async for r in provider.search(StorageQuery(order_by=field))]
        for order_by in (field, "-" + field):
            assert (await provider.explain(StorageQuery(order_by=order_by, limit=2))).walk == field
            keys = await walk(provider, StorageQuery(order_by=order_by), 1)
            assert keys == (everything if order_by == field else everything[::-1]), order_by
    assert (await walk(provider, StorageQuery(order_by="-updated_at"), 1))[:3] == ["k", "a", "m"]


async def test_a_record_too_short_for_a_header_met_by_a_walk_is_reported(
    provider: LmdbStorageProvider, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(300):
        await provider.save(f"k{n:03}", n, "t")
    record_key = provider.engine.record_key(b"k002")
    provider.engine.write(lambda txn, dbs: txn.put(record_key, b"\x01\x02", db=dbs.records))
    assert (await provider.explain(StorageQuery(order_by="updated_at", limit=6))).walk == "updated_at"
    keys = [r.item.metadata.key async for r in provider.search(StorageQuery(order_by="updated_at", limit=6))]
    assert keys == ["k000", "k001", "k003", "k004", "k005", "k006"]
    assert "k002" in caplog.text
