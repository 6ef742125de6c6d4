"""Pages and count: a page costs what it reads, not the pages before it.

LMDB: a store of ``UNISTORE_BENCH_LARGE_ITEMS`` items (200,000 by default), 1% of them
tagged ``one=yes``: page 1 and page 50 (or the last there is, in a smaller store) of the
tag's items newest first, and of the keys under a literal prefix in key order, each
reached by its cursor; and ``count`` of the tag against iterating ``search`` over it.

Redis: a namespace of half as many items (100,000 by default; each its own creation
time, written by ``restore_many``), 1% tagged ``one=yes`` and half ``half=yes``: page 1
and page 50 of the 1% tag newest first (the planner orders the posting set's matches by
their headers), of the half tag and of every item (it walks the creation order from the
cursor's position). Before each is timed, one page is counted on the server (``INFO
commandstats``: calls by command, those a script makes included): page 50 sends what
page 1 sends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from unistore import StorageItem, StorageMetadata, StorageProvider, StorageQuery
from unistore.providers import LmdbStorageProvider, RedisStorageProvider
from unistore.providers.lmdb import LmdbEngine

SIZE = 20
PAGE = 50
TAGGED = StorageQuery(tags={"one": "yes"}, order_by="-created_at")
PREFIXED = StorageQuery(pattern="item:000*", order_by="key")  # 10,000 keys (half of a small store)


@pytest.fixture(scope="module")
def pages_store(workdir: Path, record: dict[str, Any], large_items: int) -> Path:
    """``large_items`` items saved one by one (so each has its own creation time); every
    hundredth tagged one=yes."""
    path = workdir / "pages"
    engine = LmdbEngine(path, namespace="bench", durability="none")
    batch = 10_000
    for start in range(0, large_items, batch):

        def write(txn: Any, dbs: Any, start: int = start) -> None:
            for n in range(start, min(start + batch, large_items)):
                tags = {"one": "yes"} if n % 100 == 0 else {}
                engine.writes.save(f"item:{n:07d}", record, "item", None, tags)(txn, dbs)

        engine.write(write)
    engine.close()
    return path


@pytest.fixture(scope="module")
def pages(pages_store: Path, loop: asyncio.AbstractEventLoop) -> Iterator[LmdbStorageProvider]:
    provider = LmdbStorageProvider(pages_store, namespace="bench", durability="none")
    yield provider
    loop.run_until_complete(provider.cleanup())


def cursor_of(provider: StorageProvider[Any], loop: asyncio.AbstractEventLoop, query: StorageQuery, page: int) -> Any:
    """The cursor of page ``page`` (None: the first), walked to page by page; and the page's number."""
    cursor, number = None, 1
    while number < page:
        following = loop.run_until_complete(provider.page(query, SIZE, cursor)).next
        if following is None:
            break
        cursor, number = following, number + 1
    return cursor, number


def one_page(provider: StorageProvider[Any], loop: asyncio.AbstractEventLoop, query: StorageQuery, cursor: Any) -> int:
    return len(loop.run_until_complete(provider.page(query, SIZE, cursor)).results)


@pytest.mark.benchmark(group="pages-tag-newest")
@pytest.mark.parametrize("page", [1, PAGE])
def test_page_of_a_1pct_tag_newest_first(
    benchmark: Any, pages: LmdbStorageProvider, loop: asyncio.AbstractEventLoop, page: int
) -> None:
    cursor, number = cursor_of(pages, loop, TAGGED, page)
    benchmark.extra_info["page"] = number
    benchmark.extra_info["walk"] = loop.run_until_complete(
        pages.explain(dataclasses.replace(TAGGED, limit=SIZE + 1))
    ).walk
    assert benchmark(one_page, pages, loop, TAGGED, cursor) > 0


@pytest.mark.benchmark(group="pages-key-prefix")
@pytest.mark.parametrize("page", [1, PAGE])
def test_page_of_a_key_prefix_in_key_order(
    benchmark: Any, pages: LmdbStorageProvider, loop: asyncio.AbstractEventLoop, page: int
) -> None:
    cursor, number = cursor_of(pages, loop, PREFIXED, page)
    benchmark.extra_info["page"] = number
    assert benchmark(one_page, pages, loop, PREFIXED, cursor) > 0


@pytest.mark.benchmark(group="count-1pct-tag")
def test_search_of_a_1pct_tag_iterated(
    benchmark: Any, pages: LmdbStorageProvider, loop: asyncio.AbstractEventLoop, large_items: int
) -> None:
    async def iterate() -> int:
        return sum([1 async for _ in pages.search(StorageQuery(tags={"one": "yes"}))])

    assert benchmark(lambda: loop.run_until_complete(iterate())) == large_items // 100


@pytest.mark.benchmark(group="count-1pct-tag")
def test_count_of_a_1pct_tag(
    benchmark: Any, pages: LmdbStorageProvider, loop: asyncio.AbstractEventLoop, large_items: int
) -> None:
    count = lambda: loop.run_until_complete(pages.count(StorageQuery(tags={"one": "yes"})))  # noqa: E731
    assert benchmark(count) == large_items // 100


# -- Redis ---------------------------------------------------------------------------

HALF = StorageQuery(tags={"half": "yes"}, order_by="-created_at")
EVERY = StorageQuery(order_by="-created_at")
#: Items per restore_many while filling the Redis namespace.
FILL_CHUNK = 5000


@pytest.fixture(scope="module")
def redis_pages(
    redis_port: int, loop: asyncio.AbstractEventLoop, record: dict[str, Any], large_items: int
) -> Iterator[RedisStorageProvider]:
    """``large_items // 2`` items, each created a second after the one before; every
    hundredth tagged one=yes, every other half=yes."""
    provider = RedisStorageProvider(port=redis_port, namespace="bench-pages")
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    size = large_items // 2
    for first in range(0, size, FILL_CHUNK):
        items = []
        for n in range(first, min(first + FILL_CHUNK, size)):
            tags = {"half": "yes" if n % 2 else "no"} | ({"one": "yes"} if n % 100 == 0 else {})
            at = start + timedelta(seconds=n)
            metadata = StorageMetadata(uuid.uuid4(), f"item:{n:07d}", "item", at, at, None, tags)
            items.append(StorageItem(record, metadata))
        loop.run_until_complete(provider.restore_many(items))
    yield provider
    loop.run_until_complete(provider.drop_namespace())
    loop.run_until_complete(provider.cleanup())


def server_calls(port: int) -> Counter[str]:
    """Calls so far on the server, by command (``INFO commandstats``), without this client's own."""
    with redis.Redis(port=port) as client:
        info = client.info("commandstats")
    calls = Counter({name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()})
    del calls["info"], calls["hello"]  # (this client's own)
    return calls


def redis_page(
    benchmark: Any,
    provider: RedisStorageProvider,
    port: int,
    loop: asyncio.AbstractEventLoop,
    query: StorageQuery,
    page: int,
) -> None:
    """Time page ``page`` of ``query``, reached by its cursor, with the commands one sends."""
    cursor, number = cursor_of(provider, loop, query, page)
    one_page(provider, loop, query, cursor)  # (the scripts loaded: this one is not counted)
    before = server_calls(port)
    assert one_page(provider, loop, query, cursor) == SIZE
    commands = server_calls(port) - before
    benchmark.extra_info["page"] = number
    benchmark.extra_info["walk"] = loop.run_until_complete(
        provider.explain(dataclasses.replace(query, limit=SIZE + 1))
    ).walk
    benchmark.extra_info["commands"] = sum(commands.values())
    benchmark.extra_info["by_command"] = " ".join(f"{name}:{calls}" for name, calls in sorted(commands.items()))
    assert benchmark(one_page, provider, loop, query, cursor) == SIZE


@pytest.mark.benchmark(group="redis-pages-1pct-tag-newest")
@pytest.mark.parametrize("page", [1, PAGE])
def test_redis_page_of_a_1pct_tag_newest_first(
    benchmark: Any, redis_pages: RedisStorageProvider, redis_port: int, loop: asyncio.AbstractEventLoop, page: int
) -> None:
    redis_page(benchmark, redis_pages, redis_port, loop, TAGGED, page)


@pytest.mark.benchmark(group="redis-pages-half-tag-newest")
@pytest.mark.parametrize("page", [1, PAGE])
def test_redis_page_of_a_half_tag_newest_first(
    benchmark: Any, redis_pages: RedisStorageProvider, redis_port: int, loop: asyncio.AbstractEventLoop, page: int
) -> None:
    redis_page(benchmark, redis_pages, redis_port, loop, HALF, page)


@pytest.mark.benchmark(group="redis-pages-every-item-newest")
@pytest.mark.parametrize("page", [1, PAGE])
def test_redis_page_of_every_item_newest_first(
    benchmark: Any, redis_pages: RedisStorageProvider, redis_port: int, loop: asyncio.AbstractEventLoop, page: int
) -> None:
    redis_page(benchmark, redis_pages, redis_port, loop, EVERY, page)
