"""The manager's routing, instrumentation, fan-out and cleanup."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import pytest

from unistore import (
    MetricsManager,
    StorageError,
    StorageItem,
    StorageProvider,
    StorageQuery,
    StorageResult,
    UnifiedStorageManager,
    ValidationError,
)
from unistore.codec import decode_item
from unistore.index import CompiledQuery
from unistore.providers import MemoryStorageProvider


class Broken(StorageProvider[Any]):
    """A provider whose every operation fails, for the failure paths."""

    def __init__(self) -> None:
        self.cleanups = 0

    async def save(
        self,
        key: str,
        data: Any,
        content_type: str,
        expires_at: datetime | None = None,
        tags: dict[str, str] | None = None,
    ) -> StorageItem[Any]:
        raise StorageError("disk on fire")

    async def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        raise StorageError("disk on fire")

    async def delete(self, key: str, *, content_type: str | None = None) -> bool:
        raise StorageError("disk on fire")

    async def search(self, query: StorageQuery | CompiledQuery) -> AsyncIterator[StorageResult[Any]]:
        raise StorageError("search on fire")
        yield  # an async generator that fails when iterated

    async def save_many(
        self,
        items: Mapping[str, Any],
        content_type: str,
        expires_at: datetime | None = None,
        tags: dict[str, str] | None = None,
    ) -> list[StorageItem[Any]]:
        raise StorageError("disk on fire")

    async def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        raise StorageError("disk on fire")

    async def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        raise StorageError("disk on fire")

    async def delete_matching(self, query: StorageQuery | CompiledQuery) -> int:
        raise StorageError("disk on fire")

    async def cleanup(self) -> None:
        self.cleanups += 1
        raise StorageError(f"cleanup on fire {id(self)}")


class Counting(MemoryStorageProvider):
    """A memory provider that counts cleanups and open searches."""

    def __init__(self) -> None:
        super().__init__()
        self.cleanups = 0
        self.open_searches = 0

    async def search(self, query: StorageQuery | CompiledQuery) -> AsyncIterator[StorageResult[Any]]:
        self.open_searches += 1
        try:
            async for result in super().search(query):
                yield result
        finally:
            self.open_searches -= 1

    async def cleanup(self) -> None:
        self.cleanups += 1


class PlainIterator:
    """An async iterator without ``aclose``: R065 only promises an AsyncIterator."""

    def __init__(self, results: list[StorageResult[Any]]) -> None:
        self._results = iter(results)

    def __aiter__(self) -> PlainIterator:
        return self

    async def __anext__(self) -> StorageResult[Any]:
        try:
            return next(self._results)
        except StopIteration:
            raise StopAsyncIteration from None


class Plain(MemoryStorageProvider):
    """Searches with a plain iterator (ignoring the query: the test stores one item)."""

    def search(self, query: StorageQuery | CompiledQuery) -> AsyncIterator[StorageResult[Any]]:
        return PlainIterator([StorageResult(decode_item(r, k)) for k, r in self.engine._records.items()])


def ops(metrics: MetricsManager, operation: str, content_type: str, success: str) -> float:
    return metrics.value("storage_operations", operation=operation, content_type=content_type, success=success)


async def test_every_operation_is_counted_and_timed() -> None:
    metrics = MetricsManager()
    manager = UnifiedStorageManager(metrics=metrics)
    manager.register_provider("t", MemoryStorageProvider())
    await manager.save("k", 1, "t")
    await manager.load("k", "t")
    with pytest.raises(KeyError):
        await manager.load("missing", "t")
    await manager.delete("k", "t")
    [r async for r in manager.search(StorageQuery())]
    [r async for r in manager.search(StorageQuery(content_type="t"))]
    assert ops(metrics, "save", "t", "true") == 1
    assert ops(metrics, "load", "t", "true") == 1
    assert ops(metrics, "load", "t", "false") == 1
    assert ops(metrics, "delete", "t", "true") == 1
    assert ops(metrics, "search", "*", "true") == 1
    assert ops(metrics, "search", "t", "true") == 1
    timing = metrics.histogram_snapshot("storage_operation_seconds", operation="load", content_type="t")
    assert timing.count == 2 and timing.total > 0


async def test_failures_are_counted_logged_and_raised(caplog: pytest.LogCaptureFixture) -> None:
    metrics = MetricsManager()
    manager = UnifiedStorageManager(metrics=metrics)
    manager.register_provider("b", Broken())
    caplog.set_level(logging.DEBUG, logger="unistore")
    calls = (
        manager.save("k", 1, "b"),
        manager.load("k", "b"),
        manager.delete("k", "b"),
        manager.save_many({"k": 1}, "b"),
        manager.load_many(["k"], "b"),
        manager.delete_many(["k"], "b"),
        manager.delete_matching(StorageQuery(content_type="b")),
    )
    for call in calls:
        with pytest.raises(StorageError, match="disk on fire"):
            await call
    with pytest.raises(StorageError, match="search on fire"):
        [r async for r in manager.search(StorageQuery())]
    bulk = ["save_many", "load_many", "delete_many", "delete_matching"]
    for operation in ["save", "load", "delete", *bulk]:
        assert ops(metrics, operation, "b", "false") == 1
    assert ops(metrics, "search", "*", "false") == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.operation for r in errors] == ["save", "load", "delete", *bulk, "search"]  # type: ignore[attr-defined]
    assert all(r.content_type in ("b", "*") and "on fire" in r.error for r in errors)  # type: ignore[attr-defined]


async def test_a_miss_logs_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("t", MemoryStorageProvider())
    caplog.set_level(logging.DEBUG, logger="unistore")
    with pytest.raises(KeyError):
        await manager.load("missing", "t")
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


async def test_fan_out_visits_each_provider_once_and_honours_limit() -> None:
    metrics = MetricsManager()
    manager = UnifiedStorageManager(metrics=metrics)
    first, second = Counting(), Counting()
    for content_type, provider in (("a", first), ("b", first), ("c", second)):
        manager.register_provider(content_type, provider)
    for n in range(3):
        await manager.save(f"a{n}", n, "a")
        await manager.save(f"c{n}", n, "c")
    keys = [r.item.metadata.key async for r in manager.search(StorageQuery())]
    assert sorted(keys) == ["a0", "a1", "a2", "c0", "c1", "c2"]
    assert len([r async for r in manager.search(StorageQuery(limit=4))]) == 4
    assert len([r async for r in manager.search(StorageQuery(limit=3))]) == 3
    assert [r async for r in manager.search(StorageQuery(limit=0))] == []
    assert [r.item.metadata.key async for r in manager.search(StorageQuery(content_type="c", pattern="c1"))] == ["c1"]
    assert first.open_searches == second.open_searches == 0  # every provider search was closed


async def test_stopping_early_closes_the_provider_search_and_counts_success() -> None:
    metrics = MetricsManager()
    manager = UnifiedStorageManager(metrics=metrics)
    provider = Counting()
    manager.register_provider("t", provider)
    for n in range(5):
        await manager.save(f"k{n}", n, "t")
    results = manager.search(StorageQuery())
    await results.__anext__()
    assert provider.open_searches == 1
    await results.aclose()
    assert provider.open_searches == 0
    assert ops(metrics, "search", "*", "true") == 1


async def test_a_search_without_aclose_is_fine() -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    provider = Plain()
    manager.register_provider("t", provider)
    await manager.save("k", 1, "t")
    assert [r.item.data async for r in manager.search(StorageQuery())] == [1]


async def test_cancellation_is_not_counted() -> None:
    metrics = MetricsManager()
    manager = UnifiedStorageManager(metrics=metrics)

    class Slow(MemoryStorageProvider):
        async def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
            await asyncio.sleep(10)
            raise AssertionError("not reached")

    manager.register_provider("t", Slow())
    task = asyncio.create_task(manager.load("k", "t"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ops(metrics, "load", "t", "true") == ops(metrics, "load", "t", "false") == 0


async def test_cleanup_closes_each_provider_once() -> None:
    provider, other = Counting(), Counting()
    async with UnifiedStorageManager(metrics=MetricsManager()) as manager:
        manager.register_provider("a", provider)
        manager.register_provider("b", provider)
        manager.register_provider("c", other)
    assert (provider.cleanups, other.cleanups) == (1, 1)


async def test_cleanup_tries_every_provider_then_raises_the_first_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    broken_one, fine, broken_two = Broken(), Counting(), Broken()
    for content_type, provider in (("a", broken_one), ("b", fine), ("c", broken_two)):
        manager.register_provider(content_type, provider)
    with pytest.raises(StorageError, match=f"cleanup on fire {id(broken_one)}"):
        await manager.cleanup()
    assert (broken_one.cleanups, fine.cleanups, broken_two.cleanups) == (1, 1, 1)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2


async def test_default_metrics_are_the_process_wide_registry() -> None:
    manager = UnifiedStorageManager()
    manager.register_provider("process-wide", MemoryStorageProvider())
    before = ops(MetricsManager.get_instance(), "save", "process-wide", "true")
    await manager.save("k", 1, "process-wide")
    assert ops(MetricsManager.get_instance(), "save", "process-wide", "true") == before + 1


async def test_re_registering_replaces() -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    old, new = MemoryStorageProvider(), MemoryStorageProvider()
    manager.register_provider("t", old)
    manager.register_provider("t", new)
    await manager.save("k", 1, "t")
    assert (await new.load("k")).data == 1
    with pytest.raises(KeyError):
        await old.load("k")
    with pytest.raises(ValidationError):
        manager.register_provider(None, new)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="provider must be a StorageProvider, got dict"):
        manager.register_provider("t", {})  # type: ignore[arg-type]
    assert (await manager.load("k", "t")).data == 1  # the registration stands


async def test_bulk_operations_route_by_content_type_and_are_measured() -> None:
    metrics = MetricsManager()
    manager = UnifiedStorageManager(metrics=metrics)
    first, second = Counting(), Counting()
    for content_type, provider in (("a", first), ("b", first), ("c", second)):
        manager.register_provider(content_type, provider)
    saved = await manager.save_many({"x": 1, "y": 2, "z": 3}, "a", tags={"g": "1"})
    assert [item.metadata.key for item in saved] == ["x", "y", "z"]
    await manager.save_many({"w": 4}, "c", tags={"g": "1"})
    assert set(await manager.load_many(["x", "y", "w", "nope"], "a")) == {"x", "y"}  # w is a "c" item
    assert await manager.load_many(["x"], "b") == {}  # same provider, other content type
    assert await manager.delete_many(["x", "w"], "a") == 1
    assert await manager.delete_matching(StorageQuery(tags={"g": "1"}, limit=2)) == 2  # a limit counts over all
    assert await manager.delete_matching(StorageQuery(tags={"g": "1"})) == 1
    assert [r async for r in manager.search(StorageQuery())] == []
    for operation, content_type in (
        ("save_many", "a"),
        ("save_many", "c"),
        ("load_many", "a"),
        ("load_many", "b"),
        ("delete_many", "a"),
    ):
        assert ops(metrics, operation, content_type, "true") == 1
    assert ops(metrics, "delete_matching", "*", "true") == 2
    with pytest.raises(ValidationError, match="query must be a StorageQuery"):
        await manager.delete_matching("tag=x")  # type: ignore[arg-type]
    assert ops(metrics, "delete_matching", "*", "false") == 1


@pytest.mark.parametrize(
    ("query", "label"),
    [
        (StorageQuery(pattern=b"k*"), "*"),  # type: ignore[arg-type]
        (StorageQuery(content_type="t", limit=-1), "t"),
        (StorageQuery(content_type="t", created_after="yesterday"), "t"),  # type: ignore[arg-type]
        (StorageQuery(content_type="nobody"), "nobody"),
        ("k*", "*"),
    ],
)
@pytest.mark.parametrize("operation", ["search", "retrieve"])
async def test_a_search_with_a_bad_query_is_a_failed_operation(query: Any, label: str, operation: str) -> None:
    # Issue 12: like a save with a bad key, a search refused for its query is counted and timed as failed.
    metrics = MetricsManager()
    manager = UnifiedStorageManager(metrics=metrics)
    manager.register_provider("t", MemoryStorageProvider())
    with pytest.raises(StorageError):
        [r async for r in getattr(manager, operation)(query)]
    assert ops(metrics, operation, label, "false") == 1
    assert ops(metrics, operation, label, "true") == 0
    timing = metrics.histogram_snapshot("storage_operation_seconds", operation=operation, content_type=label)
    assert timing.count == 1


@pytest.mark.watchdog(120)
@pytest.mark.parametrize("provider_factory", ["memory", "lmdb", "redis", "redis-cluster"], indirect=True)
async def test_a_search_under_way_at_cleanup_finishes_or_fails_cleanly(
    provider_factory: Callable[[], StorageProvider[Any]],
) -> None:
    # Issue 12: on LMDB it failed after the first chunk (256 results) with py-lmdb's
    # "closed/deleted/dropped object"; now it finishes or fails with a StorageError
    # that says what happened, and the next search reopens the store.
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("t", provider_factory())
    await manager.save_many({f"k{number:04}": number for number in range(1000)}, "t")
    seen: list[int] = []
    failure: StorageError | None = None
    try:
        async for result in manager.search(StorageQuery()):
            seen.append(result.item.data)
            if len(seen) == 10:
                await manager.cleanup()
    except StorageError as exc:
        failure = exc
    if failure is not None:
        assert "closed (cleanup) during this operation" in str(failure)
        assert len(seen) < 1000
    else:
        assert sorted(seen) == list(range(1000))
    assert len(set(seen)) == len(seen)  # no result twice
    assert len([r async for r in manager.search(StorageQuery())]) == 1000
    await manager.cleanup()


@pytest.mark.watchdog(120)
@pytest.mark.parametrize("provider_factory", ["memory", "lmdb", "redis", "redis-cluster"], indirect=True)
async def test_a_cleanup_among_operations_in_flight_leaves_nothing_open(
    provider_factory: Callable[[], StorageProvider[Any]],
) -> None:
    # Operations in flight when cleanup() closes the connections either finish or fail
    # with a StorageError; none leaves a connection open (the suite turns an unclosed
    # socket's ResourceWarning into a failure) and the provider works on afterwards.
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("t", provider_factory())
    await manager.save_many({f"k{number:04}": number for number in range(600)}, "t")

    async def busy(number: int) -> None:
        for _ in range(5):
            found = [r.item.data async for r in manager.search(StorageQuery(pattern=f"k0{number % 6}*"))]
            assert len(found) == 100
            assert (await manager.load(f"k{number:04}", "t")).data == number

    tasks = [asyncio.ensure_future(busy(number)) for number in range(12)]
    for _ in range(3):
        await asyncio.sleep(0.005)
        await manager.cleanup()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        assert outcome is None or "closed (cleanup) during this operation" in str(outcome), repr(outcome)
    assert len([r async for r in manager.search(StorageQuery())]) == 600
    await manager.cleanup()
    gc.collect()  # an unclosed connection warns when collected
