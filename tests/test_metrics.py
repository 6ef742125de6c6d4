"""The in-process metrics registry and R065's StorageMonitor."""

from __future__ import annotations

import math
import threading

import pytest

from unistore import MetricsManager, StorageMonitor, ValidationError
from unistore.metrics import DEFAULT_BUCKETS


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
        (lambda m: m.counter("", 1), "metric name must be a non-empty str"),
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
    await StorageMonitor().record_size("monitor-default", before + 7)
    assert MetricsManager.get_instance().value("storage_size", content_type="monitor-default") == before + 7
