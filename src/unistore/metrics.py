"""In-process metrics: counters, gauges and histograms, readable where they are kept.

:class:`MetricsManager` is a thread-safe registry keyed by metric name and
labels; :meth:`MetricsManager.get_instance` returns the process-wide one that
the storage manager reports to by default. A name holds one kind of metric.
:class:`StorageMonitor` is the requirement's (R065) small API on top of it.
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass
from typing import ClassVar

from .errors import ValidationError

#: Upper bounds (seconds) of the histogram buckets; suited to latencies from
#: microseconds (an embedded read) to seconds (a stalled backend).
DEFAULT_BUCKETS = (
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    math.inf,
)

_LabelKey = tuple[tuple[str, str], ...]
_MetricKey = tuple[str, _LabelKey]


@dataclass(frozen=True)
class HistogramSnapshot:
    """A histogram's state: observation count, their sum, and cumulative
    ``(upper bound, count)`` pairs as Prometheus exposes them."""

    count: int
    total: float
    buckets: tuple[tuple[float, int], ...]


class _Histogram:
    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(DEFAULT_BUCKETS)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bucket whose bound is >= value; the last bound is inf.
        self.counts[bisect.bisect_left(DEFAULT_BUCKETS, value)] += 1
        self.count += 1
        self.total += value

    def snapshot(self) -> HistogramSnapshot:
        cumulative, running = [], 0
        for bound, count in zip(DEFAULT_BUCKETS, self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramSnapshot(self.count, self.total, tuple(cumulative))


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValidationError(f"metric {name!r}: value must be a number, got {value!r}")
    return float(value)


class MetricsManager:
    """A registry of counters, gauges and histograms.

    >>> metrics = MetricsManager()
    >>> metrics.counter("hits", 1, route="a")
    >>> metrics.counter("hits", 2, route="a")
    >>> metrics.value("hits", route="a")
    3.0
    """

    _instance: ClassVar[MetricsManager | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kinds: dict[str, str] = {}
        self._values: dict[_MetricKey, float] = {}
        self._histograms: dict[_MetricKey, _Histogram] = {}

    @classmethod
    def get_instance(cls) -> MetricsManager:
        """The process-wide registry, created on first use."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _key(self, kind: str, name: str, labels: dict[str, str]) -> _MetricKey:
        if not isinstance(name, str) or not name:
            raise ValidationError(f"metric name must be a non-empty str, got {name!r}")
        for label, label_value in labels.items():
            if not isinstance(label_value, str):
                raise ValidationError(f"metric {name!r}: label {label!r} must be a str, got {label_value!r}")
        known = self._kinds.setdefault(name, kind)
        if known != kind:
            raise ValidationError(f"metric {name!r} is a {known}, not a {kind}")
        return name, tuple(sorted(labels.items()))

    def counter(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` (>= 0) to a counter.

        Raises:
            ValidationError: a bad name, label or value, or ``name`` is not a counter.
        """
        amount = _number(value, name)
        if amount < 0:
            raise ValidationError(f"metric {name!r}: a counter only goes up, got {value!r}")
        with self._lock:
            key = self._key("counter", name, labels)
            self._values[key] = self._values.get(key, 0.0) + amount

    def gauge(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge to ``value``.

        Raises:
            ValidationError: a bad name, label or value, or ``name`` is not a gauge.
        """
        amount = _number(value, name)
        with self._lock:
            self._values[self._key("gauge", name, labels)] = amount

    def histogram(self, name: str, value: float, **labels: str) -> None:
        """Record one observation (seconds, for latencies) in a histogram.

        Raises:
            ValidationError: a bad name, label or value, or ``name`` is not a histogram.
        """
        amount = _number(value, name)
        with self._lock:
            key = self._key("histogram", name, labels)
            histogram = self._histograms.get(key)
            if histogram is None:
                histogram = self._histograms[key] = _Histogram()
            histogram.observe(amount)

    def value(self, name: str, **labels: str) -> float:
        """The current value of a counter or gauge; 0.0 if it was never set."""
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def histogram_snapshot(self, name: str, **labels: str) -> HistogramSnapshot:
        """A histogram's count, sum and buckets; all zero if it was never observed."""
        with self._lock:
            histogram = self._histograms.get((name, tuple(sorted(labels.items()))), _Histogram())
            return histogram.snapshot()


class StorageMonitor:
    """Records storage operations and sizes, as R065 specifies.

    Args:
        metrics: where to record; the process-wide registry by default.
    """

    def __init__(self, metrics: MetricsManager | None = None) -> None:
        self._metrics = metrics if metrics is not None else MetricsManager.get_instance()

    async def record_operation(self, content_type: str, operation: str, success: bool = True, **labels: str) -> None:
        """Count one operation in ``storage_operations``."""
        self._metrics.counter(
            "storage_operations",
            1,
            content_type=content_type,
            operation=operation,
            success=str(success).lower(),
            **labels,
        )

    async def record_size(self, content_type: str, size: int, **labels: str) -> None:
        """Set the ``storage_size`` gauge of a content type."""
        self._metrics.gauge("storage_size", size, content_type=content_type, **labels)


__all__ = ["DEFAULT_BUCKETS", "HistogramSnapshot", "MetricsManager", "StorageMonitor"]
