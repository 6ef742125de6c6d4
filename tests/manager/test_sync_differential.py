"""The synchronous manager against the async one: the same random operations through each,
every observation compared (results, errors, pages, counts) and then their metrics."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unistore import MetricsManager, StorageError, StorageQuery, SyncStorageManager, UnifiedStorageManager
from unistore.providers import LmdbStorageProvider, MemoryStorageProvider
from unistore.testing import strategies as kit

CONTENT_TYPES = ["doc", "note"]
KEYS = st.sampled_from(["a", "b", "c", "d", "bad key\x00"])  # one the providers refuse
QUERIES = st.builds(
    StorageQuery,
    content_type=st.sampled_from([None, "doc", "note", "nothing"]),
    tags=st.sampled_from([None, {"t": "x"}, {"t": "y"}]),
    pattern=st.sampled_from([None, "*", "[ab]*"]),
    order_by=st.sampled_from([None, "key", "-key", "created_at"]),
    limit=st.sampled_from([None, 1, 3]),
)
CONTENT_TYPE = st.sampled_from([*CONTENT_TYPES, "nothing"])
OPERATIONS = st.one_of(
    st.tuples(st.just("save"), KEYS, kit.data(), CONTENT_TYPE, st.sampled_from([None, {"t": "x"}, {"t": "y"}])),
    st.tuples(st.just("save_many"), st.dictionaries(KEYS, kit.data(), max_size=3), CONTENT_TYPE),
    st.tuples(st.just("load"), KEYS, CONTENT_TYPE),
    st.tuples(st.just("load_many"), st.lists(KEYS, max_size=3), CONTENT_TYPE),
    st.tuples(st.just("delete"), KEYS, CONTENT_TYPE),
    st.tuples(st.just("delete_many"), st.lists(KEYS, max_size=3), CONTENT_TYPE),
    st.tuples(st.just("delete_matching"), QUERIES),
    st.tuples(st.just("search"), QUERIES),
    st.tuples(st.just("retrieve"), QUERIES, st.sampled_from([None, "1", "a b", ""])),
    st.tuples(st.just("count"), QUERIES),
    st.tuples(st.just("page"), QUERIES, st.integers(0, 3)),
)


def seen(value: Any) -> Any:
    """What a result says, less what differs between two stores (ids, times)."""
    if isinstance(value, list):
        return [seen(one) for one in value]
    if isinstance(value, dict):
        return {key: seen(one) for key, one in value.items()}
    item = getattr(value, "item", None)
    if item is not None:  # a search result: its item, and a retrieval's score and highlights
        return ("result", seen(item), value.score, value.highlights)
    metadata = getattr(value, "metadata", None)
    if metadata is not None:
        return ("item", metadata.key, metadata.content_type, metadata.tags, value.data)
    return value


async def on_async(manager: UnifiedStorageManager, operation: tuple[Any, ...]) -> Any:
    name, *args = operation
    try:
        if name in ("search", "retrieve"):
            return seen([result async for result in getattr(manager, name)(*args)])
        if name == "page":
            query, size = args
            pages, cursor = [], None
            for _ in range(10):
                page = await manager.page(query, size, cursor)
                pages.append(seen(page.results))
                cursor = page.next
                if cursor is None:
                    break
            return pages
        if name == "save":
            key, data, content_type, tags = args
            return seen(await manager.save(key, data, content_type, tags=tags))
        return seen(await getattr(manager, name)(*args))
    except (StorageError, ValueError, TypeError) as exc:
        return ("error", type(exc).__name__)


def on_sync(manager: SyncStorageManager, operation: tuple[Any, ...]) -> Any:
    name, *args = operation
    try:
        if name in ("search", "retrieve"):
            return seen(list(getattr(manager, name)(*args)))
        if name == "page":
            query, size = args
            pages, cursor = [], None
            for _ in range(10):
                page = manager.page(query, size, cursor)
                pages.append(seen(page.results))
                cursor = page.next
                if cursor is None:
                    break
            return pages
        if name == "save":
            key, data, content_type, tags = args
            return seen(manager.save(key, data, content_type, tags=tags))
        return seen(getattr(manager, name)(*args))
    except (StorageError, ValueError, TypeError) as exc:
        return ("error", type(exc).__name__)


def counted(metrics: MetricsManager, operations: list[tuple[Any, ...]]) -> dict[tuple[str, str, str], float]:
    """Every ``storage_operations`` count the operations may have touched."""
    labels = [*CONTENT_TYPES, "nothing", "*"]
    names = {operation[0] for operation in operations}
    return {
        (name, label, success): metrics.value("storage_operations", operation=name, content_type=label, success=success)
        for name, label, success in itertools.product(names, labels, ("true", "false"))
    }


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
def test_the_sync_manager_observes_what_the_async_one_does(kind: str, tmp_path: Path) -> None:
    runs = itertools.count()

    def providers(side: str, run: int) -> Callable[[str], Any]:
        if kind == "memory":
            return lambda content_type: MemoryStorageProvider(namespace=content_type)
        return lambda content_type: LmdbStorageProvider(
            tmp_path / f"{side}{run}", namespace=content_type, durability="none"
        )

    @settings(max_examples=max(settings().max_examples // 3, 20))
    @given(st.lists(OPERATIONS, max_size=25))
    def check(operations: list[tuple[Any, ...]]) -> None:
        run = next(runs)
        async_metrics, sync_metrics = MetricsManager(), MetricsManager()
        asynchronous = UnifiedStorageManager(metrics=async_metrics)
        synchronous = SyncStorageManager(metrics=sync_metrics)
        make_async, make_sync = providers("async", run), providers("sync", run)
        for content_type in CONTENT_TYPES:
            asynchronous.register_provider(content_type, make_async(content_type))
            synchronous.register_provider(content_type, make_sync(content_type))
        loop = asyncio.new_event_loop()
        try:
            for operation in operations:
                expected = loop.run_until_complete(on_async(asynchronous, operation))
                assert on_sync(synchronous, operation) == expected, operation
            assert counted(sync_metrics, operations) == counted(async_metrics, operations)
        finally:
            loop.run_until_complete(asynchronous.cleanup())
            loop.close()
            synchronous.close()

    check()
