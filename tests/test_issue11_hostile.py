"""A hostile review of issue 11's operator-facing parts (each test failed before its fix):
the ContentStorage adapter closed under a caller, metric names that clash once
exported, the OpenTelemetry bridge made twice or again, the legacy memory store
given a type it cannot read back, and a migration's edge cases that held."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from unistore import (
    StorageError,
    StorageItem,
    StorageMetadata,
    StorageQuery,
    UnifiedStorageManager,
    ValidationError,
)
from unistore.compat import ContentStorage
from unistore.compat.memory import MemoryEntry, MemoryQuery, UnifiedMemoryStore
from unistore.exporters.otel import OpenTelemetryBridge
from unistore.exporters.prometheus import exposition
from unistore.metrics import MetricsManager
from unistore.migrate import copy, prune
from unistore.providers import LmdbStorageProvider, MemoryStorageProvider, RedisStorageProvider

UTC = timezone.utc

# -- ContentStorage: closed while a call is in flight ---------------------------------


class SlowProvider(MemoryStorageProvider):
    """A real memory provider whose saves take a while (a slow backend)."""

    def __init__(self, started: threading.Event) -> None:
        super().__init__()
        self.started = started

    async def save(self, *args: Any, **kwargs: Any) -> Any:
        self.started.set()
        await asyncio.sleep(0.3)
        return await super().save(*args, **kwargs)


@pytest.mark.watchdog(30)
def test_close_waits_for_the_calls_in_flight() -> None:
    """close() used to stop the loop under a call in flight: its caller waited forever."""
    started = threading.Event()
    provider = SlowProvider(started)
    storage: ContentStorage[Any] = ContentStorage(provider)
    outcome: list[object] = []

    def save() -> None:
        try:
            outcome.append(storage.save("slow"))
        except BaseException as exc:  # pragma: no cover - reported by the assertion below
            outcome.append(exc)

    caller = threading.Thread(target=save, daemon=True)
    caller.start()
    assert started.wait(5)
    storage.close()
    caller.join(5)
    assert not caller.is_alive(), "the caller of save() never returned"
    [content_id] = outcome
    assert isinstance(content_id, uuid.UUID)
    assert asyncio.run(provider.load(str(content_id))).data == "slow"  # the call completed
    with pytest.raises(StorageError, match="closed"):
        storage.load(content_id)


@pytest.mark.watchdog(60)
def test_close_races_with_callers_from_many_threads(tmp_path: Path) -> None:
    """Callers racing close() each get a result or 'closed', never a hang or a raw error."""
    for round_ in range(5):
        storage: ContentStorage[Any] = ContentStorage(LmdbStorageProvider(tmp_path / str(round_), durability="none"))
        storage.save("warm")
        results: list[object] = []

        def hammer(storage: ContentStorage[Any] = storage, results: list[object] = results) -> None:
            for _ in range(50):
                try:
                    results.append(storage.save("x"))
                except StorageError as exc:
                    results.append(exc)
                    return

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.01)
        storage.close()
        for thread in threads:
            thread.join(10)
        assert not any(thread.is_alive() for thread in threads)
        assert all(isinstance(result, (uuid.UUID, StorageError)) for result in results), results
        errors = [result for result in results if isinstance(result, StorageError)]
        assert all("closed" in str(error) for error in errors)


# -- Prometheus: names that clash once exported --------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("counter", "x"), ("counter", "x_total")),  # both exposed as x_total
        (("counter", "x_total"), ("counter", "x")),
        (("gauge", "y_total"), ("counter", "y")),
        (("counter", "y"), ("gauge", "y_total")),
        (("histogram", "h"), ("gauge", "h_count")),
        (("gauge", "h_bucket"), ("histogram", "h")),
        (("histogram", "h"), ("counter", "h_sum")),  # h_sum_total is fine, but its family h_sum is h's sample
        (("counter", "h_sum"), ("histogram", "h")),
        (("histogram", "latency"), ("counter", "latency_total")),  # two families named latency
    ],
)
def test_a_name_that_would_clash_in_the_exposition_is_refused(first: tuple[str, str], second: tuple[str, str]) -> None:
    metrics = MetricsManager()
    getattr(metrics, first[0])(first[1], 1)
    with pytest.raises(ValidationError, match=first[1]):
        getattr(metrics, second[0])(second[1], 1)
    text = exposition(metrics)
    types = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == 1, text  # only the first metric, once


def test_names_that_only_look_alike_are_kept() -> None:
    metrics = MetricsManager()
    metrics.counter("requests", 1)
    metrics.gauge("requests_total_bytes", 2)
    metrics.histogram("latency", 0.1)
    metrics.gauge("latency_counts", 3)
    metrics.gauge("total", 1)
    metrics.counter("totals", 1)
    metrics.histogram("h_sum_of", 0.1)
    assert len([line for line in exposition(metrics).splitlines() if line.startswith("# TYPE")]) == 7


# -- OpenTelemetry: a bridge made twice, or again after a close ------------------------


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], float]]]:
    data = reader.get_metrics_data()
    points: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for resource in data.resource_metrics if data is not None else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = [
                    (dict(point.attributes or {}), getattr(point, "count", None) or point.value)  # type: ignore[union-attr]
                    for point in metric.data.data_points
                ]
    return points


def test_a_second_open_bridge_on_one_meter_provider_is_refused() -> None:
    """Two bridges on one MeterProvider counted each histogram observation twice."""
    metrics = MetricsManager()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with OpenTelemetryBridge(metrics, provider):
        with pytest.raises(ValidationError, match="already"):
            OpenTelemetryBridge(metrics, provider)
        metrics.histogram("h", 0.3)
        assert otel_points(reader)["h"] == [({}, 1)]
    provider.shutdown()


def test_a_bridge_made_again_after_a_close_publishes_everything() -> None:
    """The SDK keeps the first instrument of a name (with its callback): a bridge made
    after another was closed published no counter or gauge at all."""
    metrics = MetricsManager()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.counter("c", 5, a="x")
    metrics.gauge("g", 2)
    first = OpenTelemetryBridge(metrics, provider)
    metrics.histogram("h", 0.1)
    assert otel_points(reader) == {"c": [({"a": "x"}, 5.0)], "g": [({}, 2.0)], "h": [({}, 1)]}
    first.close()
    first.close()  # twice is fine
    metrics.histogram("h", 0.1)  # not forwarded: no bridge is open
    metrics.counter("c", 1, a="x")
    assert "c" not in otel_points(reader) and "g" not in otel_points(reader)
    with OpenTelemetryBridge(metrics, provider):
        metrics.histogram("h", 0.1)
        points = otel_points(reader)
        assert points["c"] == [({"a": "x"}, 6.0)] and points["g"] == [({}, 2.0)]
        assert points["h"] == [({}, 2)]  # one forwarded by the first bridge, one by this one
    provider.shutdown()


def test_bridges_on_two_meter_providers_are_independent() -> None:
    metrics = MetricsManager()
    readers = [InMemoryMetricReader(), InMemoryMetricReader()]
    providers = [MeterProvider(metric_readers=[reader]) for reader in readers]
    with OpenTelemetryBridge(metrics, providers[0]), OpenTelemetryBridge(metrics, providers[1]):
        metrics.histogram("h", 0.2)
        metrics.counter("c", 2)
        for reader in readers:
            assert otel_points(reader) == {"h": [({}, 1)], "c": [({}, 2.0)]}
    for provider in providers:
        provider.shutdown()


# -- the legacy memory store: a type or scope it could not read back ------------------


@pytest.mark.parametrize("field", ["type", "scope"])
async def test_a_memory_entry_of_an_unknown_type_or_scope_is_refused(field: str) -> None:
    """It was stored, and then every load and retrieve of the store raised a raw ValueError."""
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("memory", MemoryStorageProvider())
    store: UnifiedMemoryStore[Any] = UnifiedMemoryStore(manager)
    await store.store(MemoryEntry("good", "hello"))
    with pytest.raises(ValidationError, match=f"{field}.*bogus"):
        await store.store(MemoryEntry("bad", "hello", **{field: "bogus"}))
    await store.store(MemoryEntry("plain", "hello", type="long_term", scope="agent"))  # the values as str are fine
    assert [result.entry.key async for result in store.retrieve(MemoryQuery("hello"))] == ["good", "plain"]
    assert (await store.load("plain")).type.value == "long_term"


# -- migration: what held ------------------------------------------------------------


def odd_items() -> list[StorageItem[Any]]:
    def made(key: str, data: Any, **fields: Any) -> StorageItem[Any]:
        created = fields.pop("created", datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))
        metadata = StorageMetadata(
            uuid.uuid4(),
            key,
            fields.pop("content_type", "doc"),
            created,
            fields.pop("updated", datetime(2021, 1, 2, 3, 4, 5, 1, tzinfo=UTC)),
            fields.pop("expires", None),
            fields.pop("tags", {}),
        )
        return StorageItem(data, metadata)

    return [
        made("bytes", b"\x00\xff" * 10, tags={"t": "é\n\x00"}),
        made(
            "k" * 600 + "é" * 300,
            {
                "max": 2**64 - 1,
                "min": -(2**63),
                "u": uuid.uuid4(),
                "d": datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            },
        ),
        made("empty", "", content_type="x" * 1000, tags={"k" * 700: "v" * 700}),
        made("none", None, expires=datetime(2300, 1, 1, tzinfo=UTC)),
        made(
            "extremes",
            [],
            created=datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            updated=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        made("uni\x00key\U0001f600", {"\U0001f600": "\ud7ff"}),
    ]


async def test_lmdb_to_redis_to_lmdb_keeps_every_field(tmp_path: Path, redis_port: int) -> None:
    items = odd_items()
    source = LmdbStorageProvider(tmp_path / "a")
    middle = RedisStorageProvider({"host": "127.0.0.1", "port": redis_port, "namespace": uuid.uuid4().hex})
    back = LmdbStorageProvider(tmp_path / "b")
    try:
        assert await source.restore_many(items) == len(items)
        assert (await copy(source, middle)).ok
        assert (await copy(middle, back)).ok
        again = await copy(back, source)
        assert again.ok and again.written == 0 and again.unchanged == len(items)
        for item in items:
            loaded = await back.load(item.metadata.key)
            assert loaded.metadata == item.metadata and loaded.data == item.data
        # The index agrees to the microsecond at the extremes, on both backends.
        for provider in (middle, back):
            for bound in ("created_after", "created_before"):
                query = StorageQuery(**{bound: datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)})  # type: ignore[arg-type]
                found = {result.item.metadata.key async for result in provider.search(query)}
                assert ("extremes" in found) and (len(found) == (len(items) if bound == "created_after" else 1))
        assert (await back.check()).ok
    finally:
        for provider in (source, middle, back):
            await provider.cleanup()


async def test_an_item_that_left_the_query_in_the_source_is_found_and_pruned(tmp_path: Path) -> None:
    """The source's item under a key no longer matches the query (another type, another tag):
    the target's old copy did, and verification called the two sides equal while prune
    kept it for good, since the source still held *a* record under that key."""
    source = LmdbStorageProvider(tmp_path / "source")
    target = LmdbStorageProvider(tmp_path / "target")
    try:
        await source.save_many({"moved": 1, "kept": 2}, "doc", tags={"team": "a"})
        await source.save("retagged", 3, "doc", tags={"team": "a"})
        by_type = StorageQuery(content_type="doc", tags={"team": "a"})
        assert (await copy(source, target, by_type)).ok
        await source.save("moved", 1, "other", tags={"team": "a"})  # left the query by its type
        await source.save("retagged", 3, "doc", tags={"team": "b"})  # and by its tag
        report = await copy(source, target, by_type)
        assert report.verified is False
        assert "only in target: 'moved'" in report.problems and "only in target: 'retagged'" in report.problems
        assert await prune(source, target, by_type) == 2
        assert (await copy(source, target, by_type)).ok
        assert {result.item.metadata.key async for result in target.search(StorageQuery())} == {"kept"}
    finally:
        await source.cleanup()
        await target.cleanup()


def _damage(provider: LmdbStorageProvider, key: bytes) -> None:
    engine = provider.engine
    engine.write(lambda txn, dbs: txn.put(engine.record_key(key), b"garbage", db=dbs.records))


async def test_a_damaged_record_in_the_target_is_replaced_by_the_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 12: it stopped the copy (load_many raised); a copy replaces it, as a save
    would, reported as a search reports one, and the rest of the batch is copied."""
    source = MemoryStorageProvider()
    await source.save_many({"a": 1, "damaged": 2, "z": 3}, "doc")
    target = LmdbStorageProvider(tmp_path / "target")
    try:
        await target.save("damaged", 0, "doc")
        _damage(target, b"damaged")
        counted = MetricsManager.get_instance().value("storage_corrupt_records", operation="migrate")
        report = await copy(source, target)
        assert (report.written, report.ok) == (3, True)
        assert {k: v.data for k, v in (await target.load_many(["a", "damaged", "z"])).items()} == {
            "a": 1,
            "damaged": 2,
            "z": 3,
        }
        assert "migrate skipped the record under key 'damaged'" in caplog.text
        assert MetricsManager.get_instance().value("storage_corrupt_records", operation="migrate") == counted + 1
        await target.check(repair=True)  # the damaged record's own index entries could not be tied to it
        assert (await target.check()).ok and (await copy(source, target)).unchanged == 3
    finally:
        await target.cleanup()


async def test_a_damaged_record_in_the_source_is_reported_and_never_pruned(tmp_path: Path) -> None:
    source = LmdbStorageProvider(tmp_path / "source")
    target = MemoryStorageProvider()
    try:
        await source.save_many({"a": 1, "bad": 2}, "doc")
        assert (await copy(source, target)).ok
        _damage(source, b"bad")
        report = await copy(source, target)  # the source's search passes over it; the verification names it
        assert (report.read, report.ok) == (1, False)
        assert report.problems[0] == "damaged in source: 'bad'"
        assert await prune(source, target) == 0  # the target's copy may be all that is left of it
        assert (await target.load("bad")).data == 2
    finally:
        await source.cleanup()
