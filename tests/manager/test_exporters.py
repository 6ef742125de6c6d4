"""The Prometheus exporter and the OpenTelemetry bridge, read back by the real parsers:
prometheus_client's text parser and opentelemetry-sdk's InMemoryMetricReader."""

from __future__ import annotations

import importlib
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge as OtelGauge,
)
from opentelemetry.sdk.metrics.export import (
    Histogram as OtelHistogram,
)
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
)
from opentelemetry.sdk.metrics.export import (
    Sum as OtelSum,
)
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from helpers import ROOT
from unistore import (
    MetricsManager,
    StorageError,
    StorageItem,
    StorageMonitor,
    StorageQuery,
    UnifiedStorageManager,
    ValidationError,
)
from unistore.cli import ITEMS_GAUGE
from unistore.codec import item_record
from unistore.exporters import MissingExtraError
from unistore.exporters.otel import BUCKET_BOUNDARIES, OpenTelemetryBridge
from unistore.exporters.prometheus import MetricsCollector, exposition, register
from unistore.metrics import DEFAULT_BUCKETS, STANDARD_METRICS, Histogram, HistogramSnapshot
from unistore.providers import LmdbStorageProvider
from unistore.providers.redis.nearcache import NearCache

DOCS = ROOT / "docs" / "observability.md"


async def record_everything(metrics: MetricsManager, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every operation of the manager (each outcome) and of the monitor, on a real LMDB store,
    and a damaged record that a search passes over (counted by the provider itself in the
    process-wide registry, which ``metrics`` is made to be here)."""
    monkeypatch.setattr(MetricsManager, "_instance", metrics)
    async with UnifiedStorageManager(metrics=metrics) as manager:
        provider = LmdbStorageProvider(store)
        manager.register_provider("note", provider)
        await manager.save("a", {"text": "hello world"}, "note", tags={"t": "1"})
        await manager.save("z", "to be damaged", "note", tags={"t": "1"})
        record_key = provider.engine.record_key(b"z")
        provider.engine.write(lambda txn, dbs: txn.put(record_key, b"\x01garbage", db=dbs.records))
        await manager.load("a", "note")
        with pytest.raises(KeyError):
            await manager.load("missing", "note")
        with pytest.raises(StorageError):
            await manager.load("a", "unknown")
        await manager.save_many({"b": 1, "c": 2}, "note", tags={"t": "2"})
        await manager.load_many(["b", "c"], "note")
        await manager.delete_many(["b"], "note")
        assert [r.item.metadata.key async for r in manager.search(StorageQuery(tags={"t": "1"}))] == ["a"]
        await manager.delete("z", "note")  # a delete removes the damaged record
        [r async for r in manager.retrieve(StorageQuery(content_type="note"), "hello")]
        await manager.delete_matching(StorageQuery(tags={"t": "2"}))
        await manager.delete("a", "note")
    monitor = StorageMonitor(metrics)
    await monitor.record_operation("note", "export", False, region="eu")
    await monitor.record_size("note", 4096)
    metrics.gauge(ITEMS_GAUGE, 2, content_type="note")  # as `unistore stats` sets it
    # A Redis provider's near cache keeps its counts there too (its bookkeeping, without a server).
    near = NearCache(1, 1 << 20, 1, "shared")
    near.trust([0])
    saved = (await provider.save("n", 1, "note")).metadata
    record = item_record(StorageItem(1, saved))
    for key in (b"one", b"two"):  # the second evicts the first
        near.end(near.begin(key, 0), record)
    near.get(b"two", 0, 0)
    near.get(b"one", 0, 0)
    near.invalidate([b"two"])


def parsed(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


async def test_the_exposition_carries_every_metric_and_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = MetricsManager()
    await record_everything(metrics, tmp_path / "store", monkeypatch)
    families = metrics.collect()
    assert {family.name for family in families} == set(STANDARD_METRICS)
    exposed = parsed(exposition(metrics))
    assert set(exposed) == set(STANDARD_METRICS)
    for family in families:
        read = exposed[family.name]
        assert (read.type, read.documentation) == (family.kind, family.description)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in read.samples}
        for series in family.series:
            labels = tuple(sorted(series.labels.items()))
            if isinstance(series.value, HistogramSnapshot):
                assert samples[(f"{family.name}_count", labels)] == series.value.count
                assert samples[(f"{family.name}_sum", labels)] == pytest.approx(series.value.total)
                buckets = [
                    (bound, samples[(f"{family.name}_bucket", tuple(sorted({**series.labels, "le": le}.items())))])
                    for bound, le in ((b, "+Inf" if b == math.inf else repr(b)) for b in DEFAULT_BUCKETS)
                ]
                assert buckets == list(series.value.buckets)  # every bucket kept, cumulative
            else:
                suffix = "_total" if family.kind == "counter" else ""
                assert samples[(family.name + suffix, labels)] == series.value
        assert len(samples) == sum(len(DEFAULT_BUCKETS) + 2 if family.kind == "histogram" else 1 for _ in family.series)
    operations = exposed["storage_operations"].samples
    extra = [s for s in operations if s.labels.get("region") == "eu"]
    assert [(s.labels, s.value) for s in extra] == [
        ({"content_type": "note", "operation": "export", "success": "false", "region": "eu"}, 1.0)
    ]
    misses = [s for s in operations if s.labels["operation"] == "load" and s.labels["success"] == "false"]
    assert {s.labels["content_type"] for s in misses} == {"note", "unknown"}
    assert [(s.labels, s.value) for s in exposed["storage_corrupt_records"].samples] == [
        ({"operation": "search"}, 1.0)  # the search by tag met the damaged record; the delete removed it
    ]


def test_a_counter_named_total_is_exposed_once_suffixed() -> None:
    metrics = MetricsManager()
    metrics.counter("requests_total", 3, route="a")
    metrics.gauge("queue", 2)
    text = exposition(metrics)
    assert 'requests_total{route="a"} 3.0' in text and "requests_total_total" not in text
    assert parsed(text)["queue"].documentation == "queue (a gauge)"


def test_a_registered_collector_is_scraped_live_and_described_up_front() -> None:
    metrics = MetricsManager()
    registry = CollectorRegistry(auto_describe=True)
    collector = register(metrics, registry)
    assert isinstance(collector, MetricsCollector) and collector.metrics is metrics
    assert {m.name for m in collector.describe()} == set(STANDARD_METRICS)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register(metrics, registry)  # the names are taken
    assert generate_latest(registry) == b""
    metrics.gauge("storage_size", 7, content_type="x")
    assert parsed(generate_latest(registry).decode())["storage_size"].samples[0].value == 7.0
    registry.unregister(collector)


def test_the_default_registries_are_the_process_wide_ones() -> None:
    from prometheus_client import REGISTRY

    collector = register()
    try:
        assert collector.metrics is MetricsManager.get_instance()
        MetricsManager.get_instance().gauge("storage_size", 1, content_type="default-registry")
        assert 'storage_size{content_type="default-registry"} 1.0' in generate_latest(REGISTRY).decode()
        assert 'content_type="default-registry"' in exposition()
    finally:
        REGISTRY.unregister(collector)


@pytest.mark.parametrize(
    ("module", "blocked", "hint"),
    [
        ("unistore.exporters.prometheus", "prometheus_client", "pip install 'unistore[prometheus]'"),
        ("unistore.exporters.otel", "opentelemetry", "pip install 'unistore[otel]'"),
    ],
)
def test_a_missing_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, module: str, blocked: str, hint: str
) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, module)
    with pytest.raises(MissingExtraError, match=re.escape(hint)) as raised:
        importlib.import_module(module)
    assert isinstance(raised.value, ImportError) and isinstance(raised.value, StorageError)
    assert isinstance(raised.value.__cause__, ImportError)


def read_back(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    metrics = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "unistore"
            for metric in scope.metrics:
                metrics[metric.name] = metric
    return metrics


def points(metric: Any) -> dict[tuple[tuple[str, str], ...], Any]:
    return {tuple(sorted(point.attributes.items())): point for point in metric.data.data_points}


async def test_the_bridge_publishes_every_metric_with_its_buckets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = MetricsManager()
    metrics.counter("storage_operations", 5, operation="before", content_type="x", success="true")
    reader = InMemoryMetricReader()
    with OpenTelemetryBridge(metrics, MeterProvider(metric_readers=[reader])) as bridge:
        assert bridge.metrics is metrics
        await record_everything(metrics, tmp_path / "store", monkeypatch)
        published = read_back(reader)
        families = {family.name: family for family in metrics.collect()}
        assert set(published) == set(families) == set(STANDARD_METRICS)
        for name, family in families.items():
            metric = published[name]
            assert (metric.unit, metric.description) == (family.unit, family.description)
            read = points(metric)
            assert set(read) == {tuple(sorted(series.labels.items())) for series in family.series}
            for series in family.series:
                point = read[tuple(sorted(series.labels.items()))]
                if isinstance(series.value, HistogramSnapshot):
                    assert isinstance(metric.data, OtelHistogram)
                    assert tuple(point.explicit_bounds) == BUCKET_BOUNDARIES == DEFAULT_BUCKETS[:-1]
                    cumulative = [sum(point.bucket_counts[: n + 1]) for n in range(len(point.bucket_counts))]
                    assert cumulative == [count for _, count in series.value.buckets]
                    assert (point.count, point.sum) == (series.value.count, pytest.approx(series.value.total))
                elif family.kind == "counter":
                    assert isinstance(metric.data, OtelSum) and metric.data.is_monotonic
                    assert point.value == series.value
                else:
                    assert isinstance(metric.data, OtelGauge)
                    assert point.value == series.value
        assert (
            points(published["storage_operations"])[
                (("content_type", "x"), ("operation", "before"), ("success", "true"))
            ].value
            == 5
        )  # recorded before the bridge existed: published all the same
        histograms = [metrics.bind_histogram("storage_operation_seconds", operation="load", content_type="note")]
        assert len(histograms[0].listeners) == 1
    assert len(histograms[0].listeners) == 0  # closed: no more forwarding
    metrics.histogram("storage_operation_seconds", 0.5, operation="load", content_type="note")
    metrics.gauge("after_close", 1)
    after = read_back(reader)
    assert "after_close" not in after
    assert points(after["storage_operation_seconds"])[(("content_type", "note"), ("operation", "load"))].count == 2
    bridge.close()  # twice is harmless
    late = Histogram()
    bridge._follow("late", {}, late)  # a watcher call that raced with close: ignored
    assert late.listeners == ()


def test_the_bridge_counts_histograms_from_when_it_was_made() -> None:
    metrics = MetricsManager()
    metrics.histogram("timing", 1.0)
    reader = InMemoryMetricReader()
    bridge = OpenTelemetryBridge(metrics, MeterProvider(metric_readers=[reader]))
    metrics.histogram("timing", 0.003)
    metrics.histogram("timing", 20.0)  # beyond the last finite bound: the unbounded bucket
    metrics.gauge("depth", 3.5, queue="q")
    metric = read_back(reader)["timing"]
    (point,) = metric.data.data_points
    assert (point.count, point.sum) == (2, pytest.approx(20.003))
    assert point.bucket_counts[BUCKET_BOUNDARIES.index(5e-3)] == 1 and point.bucket_counts[-1] == 1
    assert (metric.unit, metric.description) == ("", "")
    assert points(read_back(reader)["depth"])[(("queue", "q"),)].value == 3.5
    bridge.close()


def test_the_bridge_defaults_to_the_global_provider_and_registry() -> None:
    with OpenTelemetryBridge() as bridge:  # OpenTelemetry's global (here a no-op) provider
        assert bridge.metrics is MetricsManager.get_instance()
        MetricsManager.get_instance().histogram("storage_operation_seconds", 0.001, operation="x", content_type="y")


def test_the_observability_page_names_every_metric() -> None:
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 5:
            rows[cells[0]] = cells[1:]
    assert set(rows) == set(STANDARD_METRICS)
    for name, info in STANDARD_METRICS.items():
        kind, unit, labels, _ = rows[name]
        assert kind == info.kind and unit.strip("` ") == info.unit, name
        assert [label.strip("` ") for label in labels.split(",")] == list(info.labels), name


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
