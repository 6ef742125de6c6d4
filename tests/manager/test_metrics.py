"""The in-process metrics registry and R065's StorageMonitor."""

from __future__ import annotations

import math
import threading

import pytest

from unistore import MetricsManager, StorageMonitor, ValidationError
from unistore.metrics import (
    DEFAULT_BUCKETS,
    STANDARD_METRICS,
    Counter,
    Gauge,
    Histogram,
    HistogramSnapshot,
    kind_of,
)


def test_counter_gauge_and_value() -> None:
    metrics = MetricsManager()
    assert metrics.value("never") == 0.0
    metrics.counter("c", 2, a="1", b="2")
    metrics.counter("c", b="2", a="1")  # labels in any order, default step 1
    metrics.counter("c", 5, a="other", b="2")
    assert metrics.value("c", b="2", a="1") == 3.0
    assert metrics.value("c", a="other", b="2") == 5.0
    assert metrics.value("c") == 0.0
    metrics.gauge("g", 10)
    metrics.gauge("g", -2.5)
    assert metrics.value("g") == -2.5


def test_histogram_buckets_are_cumulative() -> None:
    metrics = MetricsManager()
    for seconds in (5e-6, 1e-5, 3e-3, 100.0):
        metrics.histogram("h", seconds, op="x")
    snapshot = metrics.histogram_snapshot("h", op="x")
    assert snapshot.count == 4 and snapshot.total == pytest.approx(100.003015)
    buckets = dict(snapshot.buckets)
    assert buckets[1e-5] == 2 and buckets[2.5e-3] == 2 and buckets[5e-3] == 3
    assert buckets[10.0] == 3 and buckets[math.inf] == 4
    assert [bound for bound, _ in snapshot.buckets] == list(DEFAULT_BUCKETS)
    empty = metrics.histogram_snapshot("h", op="never")
    assert (empty.count, empty.total, empty.buckets[-1]) == (0, 0.0, (math.inf, 0))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.counter("", 1), "metric name must be a str of ASCII letters"),
        (lambda m: m.counter(None, 1), "metric name must be a str of ASCII letters"),
        (lambda m: m.counter("storage-ops", 1), "metric name must be a str of ASCII letters"),
        (lambda m: m.counter("_private", 1), "metric name must be a str of ASCII letters"),
        (lambda m: m.counter("ação", 1), "metric name must be a str of ASCII letters"),
        (lambda m: m.counter("x" * 256, 1), "at most 255 characters"),
        (lambda m: m.counter("c", 1, **{"bad-label": "x"}), "label name 'bad-label' is not a Prometheus label name"),
        (lambda m: m.counter("c", 1, __name="x"), "label name '__name' is not a Prometheus label name"),
        (lambda m: m.histogram("h", 1, le="x"), "label name 'le' is not a Prometheus label name"),
        (lambda m: m.counter("c", -1), "a counter only goes up"),
        (lambda m: m.counter("c", True), "value must be a finite-sized number"),
        (lambda m: m.gauge("g", "3"), "value must be a finite-sized number"),
        (lambda m: m.histogram("h", math.nan), "value must be a finite-sized number"),
        (lambda m: m.gauge("g", 10**400), "value must be a finite-sized number"),
        (lambda m: m.counter("c", 1, label=3), "label 'label' must be a str"),
        (lambda m: m.gauge("c", 1), "metric 'c' is a counter, not a gauge"),
        (lambda m: m.histogram("c", 1), "metric 'c' is a counter, not a histogram"),
    ],
)
def test_bad_metrics_are_refused(call: object, message: str) -> None:
    metrics = MetricsManager()
    metrics.counter("c", 1)
    with pytest.raises(ValidationError, match=message):
        call(metrics)  # type: ignore[operator]
    assert metrics.value("c") == 1.0


def test_names_both_exporters_accept_are_taken() -> None:
    metrics = MetricsManager()
    metrics.counter("a" * 255, 1, _private="x", Mixed_9="y")
    metrics.gauge("le", 1, le="fine on a gauge")
    assert metrics.value("a" * 255, _private="x", Mixed_9="y") == 1.0
    assert metrics.value("le", le="fine on a gauge") == 1.0


def test_collect_reads_every_series_sorted_with_standard_descriptions() -> None:
    metrics = MetricsManager()
    assert metrics.collect() == []
    metrics.counter("storage_operations", 2, operation="save", content_type="t", success="true")
    metrics.counter("storage_operations", 1, operation="load", content_type="t", success="false")
    metrics.gauge("zeta", 4.5)
    metrics.histogram("storage_operation_seconds", 0.002, operation="load", content_type="t")
    families = metrics.collect()
    assert [family.name for family in families] == ["storage_operation_seconds", "storage_operations", "zeta"]
    seconds, operations, zeta = families
    assert (operations.kind, operations.unit) == ("counter", "{operation}")
    assert operations.description == STANDARD_METRICS["storage_operations"].description
    assert [(s.labels, s.value) for s in operations.series] == [
        ({"content_type": "t", "operation": "load", "success": "false"}, 1.0),
        ({"content_type": "t", "operation": "save", "success": "true"}, 2.0),
    ]
    assert (seconds.kind, seconds.unit) == ("histogram", "s")
    (series,) = seconds.series
    assert isinstance(series.value, HistogramSnapshot) and series.value.count == 1
    assert dict(series.value.buckets)[2.5e-3] == 1 and dict(series.value.buckets)[1e-3] == 0
    assert (zeta.kind, zeta.unit, zeta.description, zeta.series[0].value) == ("gauge", "", "", 4.5)
    assert [family.name for family in metrics.collect("zeta")] == ["zeta"]
    assert metrics.collect("never") == []


def test_every_standard_metric_states_its_labels_kind_and_unit() -> None:
    for name, info in STANDARD_METRICS.items():
        assert info.kind in ("counter", "gauge", "histogram") and info.unit and info.labels and info.description
        metrics = MetricsManager()
        bind = {"counter": metrics.bind_counter, "gauge": metrics.bind_gauge, "histogram": metrics.bind_histogram}
        instrument = bind[info.kind](name)
        assert isinstance(instrument, {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[info.kind])


def test_watch_reports_each_instrument_once_now_and_later() -> None:
    metrics = MetricsManager()
    metrics.counter("before", 1, a="1")
    seen: list[tuple[str, dict[str, str], str]] = []
    unwatch = metrics.watch(lambda name, labels, instrument: seen.append((name, labels, kind_of(instrument))))
    assert seen == [("before", {"a": "1"}, "counter")]
    metrics.counter("before", 1, a="1")  # not new: not reported again
    metrics.gauge("after", 3, b="2")
    metrics.histogram("timing", 0.1)
    assert seen[1:] == [("after", {"b": "2"}, "gauge"), ("timing", {}, "histogram")]
    unwatch()
    unwatch()  # twice is harmless
    metrics.counter("unseen", 1)
    assert len(seen) == 3


def test_histogram_listeners_see_each_later_observation() -> None:
    metrics = MetricsManager()
    histogram = metrics.bind_histogram("h")
    histogram.observe(1.0)
    heard: list[float] = []
    histogram.add_listener(heard.append)
    histogram.observe(0.5)
    metrics.histogram("h", 0.25)
    histogram.remove_listener(heard.append)
    histogram.remove_listener(print)  # never added: ignored
    histogram.observe(2.0)
    assert heard == [0.5, 0.25]
    assert histogram.snapshot().count == 4


def test_process_wide_instance() -> None:
    assert MetricsManager.get_instance() is MetricsManager.get_instance()
    assert isinstance(MetricsManager.get_instance(), MetricsManager)


def test_counters_are_thread_safe() -> None:
    metrics = MetricsManager()

    def bump() -> None:
        for _ in range(2000):
            metrics.counter("n", 1)
            metrics.histogram("h", 0.001)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert metrics.value("n") == 8000
    assert metrics.histogram_snapshot("h").count == 8000


async def test_storage_monitor_records_what_r065_names() -> None:
    metrics = MetricsManager()
    monitor = StorageMonitor(metrics)
    await monitor.record_operation("doc", "save")
    await monitor.record_operation("doc", "save", False, region="eu")
    await monitor.record_size("doc", 1000)
    assert metrics.value("storage_operations", content_type="doc", operation="save", success="true") == 1
    assert metrics.value("storage_operations", content_type="doc", operation="save", success="false", region="eu") == 1
    assert metrics.value("storage_size", content_type="doc") == 1000


async def test_storage_monitor_defaults_to_the_process_wide_registry() -> None:
    before = MetricsManager.get_instance().value("storage_size", content_type="monitor-default")
    await StorageMonitor().record_size("monitor-default", int(before) + 7)
    assert MetricsManager.get_instance().value("storage_size", content_type="monitor-default") == before + 7
