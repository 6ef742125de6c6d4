"""Pages and count on LMDB: a page costs what it reads, not the pages before it.

A store of ``UNISTORE_BENCH_LARGE_ITEMS`` items (200,000 by default), 1% of them tagged
``one=yes``: page 1 and page 50 (or the last there is, in a smaller store) of the tag's
items newest first, and of the keys under a literal prefix in key order, each reached by
its cursor; and ``count`` of the tag against iterating ``search`` over it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unistore import StorageQuery
from unistore.providers import LmdbStorageProvider
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


def cursor_of(provider: LmdbStorageProvider, loop: asyncio.AbstractEventLoop, query: StorageQuery, page: int) -> Any:
    """The cursor of page ``page`` (None: the first), walked to page by page; and the page's number."""
    cursor, number = None, 1
    while number < page:
        following = loop.run_until_complete(provider.page(query, SIZE, cursor)).next
        if following is None:
            break
        cursor, number = following, number + 1
    return cursor, number


def one_page(provider: LmdbStorageProvider, loop: asyncio.AbstractEventLoop, query: StorageQuery, cursor: Any) -> int:
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
