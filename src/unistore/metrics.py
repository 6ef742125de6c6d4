"""In-process metrics: counters, gauges and histograms, readable where they are kept.

:class:`MetricsManager` is a thread-safe registry keyed by metric name and
labels; :meth:`MetricsManager.get_instance` returns the process-wide one that
the storage manager reports to by default. A name holds one kind of metric.
:class:`StorageMonitor` is the framework's small monitoring API on top of it.

Exporters (``unistore.exporters.prometheus``, ``unistore.exporters.otel``)
read a registry through :meth:`MetricsManager.collect` and
:meth:`MetricsManager.watch`; :data:`STANDARD_METRICS` names, describes and
gives the unit of every metric unistore itself records. Metric and label
names are limited to what both Prometheus and OpenTelemetry accept, so an
exporter never has to rename one, and a name whose Prometheus exposition
would clash with another metric's (``x`` and ``x_total`` as counters, a gauge
``h_count`` beside a histogram ``h``) is refused.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar

from .errors import ValidationError

_bucket_of = bisect.bisect_left

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
"""Upper bounds (seconds) of the histogram buckets; suited to latencies from microseconds (an
embedded read) to seconds (a stalled backend).
"""

_LabelKey = tuple[tuple[str, str], ...]
_MetricKey = tuple[str, _LabelKey]

#: A metric name both exporters accept as it is: Prometheus allows ``[a-zA-Z_:][a-zA-Z0-9_:]*``,
#: OpenTelemetry ``[a-zA-Z][a-zA-Z0-9_.\-/]{0,254}``; this is what the two share.
_METRIC_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_]{0,254}", re.ASCII)
#: A Prometheus label name (OpenTelemetry takes any attribute key); ``__`` names are Prometheus's own.
_LABEL_NAME = re.compile(r"(?!__)[a-zA-Z_][a-zA-Z0-9_]*", re.ASCII)

MetricKind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is: its kind, unit, labels and meaning.

    ``unit`` is spelled as OpenTelemetry wants it (UCUM: ``s``, ``By``,
    ``{operation}``); Prometheus carries the unit in the name instead.
    """

    kind: MetricKind
    unit: str
    labels: tuple[str, ...]
    description: str


STANDARD_METRICS: dict[str, MetricInfo] = {
    "storage_operations": MetricInfo(
        "counter",
        "{operation}",
        ("operation", "content_type", "success"),
        "Storage operations that ended, by operation, content type and outcome.",
    ),
    "storage_operation_seconds": MetricInfo(
        "histogram",
        "s",
        ("operation", "content_type"),
        "How long storage operations took, in seconds, by operation and content type.",
    ),
    "storage_size": MetricInfo(
        "gauge",
        "By",
        ("content_type",),
        "Bytes of the stored records of a content type, as last recorded.",
    ),
    "storage_items": MetricInfo(
        "gauge",
        "{item}",
        ("content_type",),
        "Live items of a content type, as last counted.",
    ),
    "storage_corrupt_records": MetricInfo(
        "counter",
        "{record}",
        ("operation",),
        "Damaged records and index entries that searches, deletes by query and migrations passed over, by operation.",
    ),
    "storage_near_cache_hits": MetricInfo(
        "counter", "{load}", ("namespace",), "Loads a Redis provider served from its near cache, by namespace."
    ),
    "storage_near_cache_misses": MetricInfo(
        "counter", "{load}", ("namespace",), "Loads a Redis provider with a near cache read from Redis, by namespace."
    ),
    "storage_near_cache_invalidations": MetricInfo(
        "counter",
        "{item}",
        ("namespace",),
        "Near-cache entries dropped because their items changed (or tracking was lost), by namespace.",
    ),
    "storage_near_cache_evictions": MetricInfo(
        "counter", "{item}", ("namespace",), "Near-cache entries dropped to keep within its bounds, by namespace."
    ),
    "storage_near_cache_items": MetricInfo(
        "gauge", "{item}", ("namespace",), "Items a Redis provider's near cache holds, by namespace."
    ),
}
"""Every metric unistore records (the manager, :class:`StorageMonitor` and the CLI's ``stats``), by
name. Callers may record others; docs/observability.md lists these.
"""


@dataclass(frozen=True)
class HistogramSnapshot:
    """A histogram's state: observation count, their sum, and cumulative
    ``(upper bound, count)`` pairs as Prometheus exposes them."""

    count: int
    total: float
    buckets: tuple[tuple[float, int], ...]


class Counter:
    """One counter (a name and a set of labels), bound once and bumped cheaply."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (the caller vouches it is a number >= 0)."""
        # acquire/release rather than `with`: measurably cheaper, and nothing between can raise.
        self._lock.acquire()
        self.value += amount
        self._lock.release()


class Gauge:
    """One gauge, bound once."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        """Set the gauge (a plain assignment: atomic as it is)."""
        self.value = value


class Histogram:
    """One histogram over :data:`DEFAULT_BUCKETS`, bound once.

    ``listeners`` (empty unless an exporter forwards observations, as the
    OpenTelemetry bridge does) are called with each observed value.
    """

    __slots__ = ("_lock", "count", "counts", "listeners", "total")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = [0] * len(DEFAULT_BUCKETS)
        self.count = 0
        self.total = 0.0
        self.listeners: tuple[Callable[[float], None], ...] = ()

    def observe(self, value: float) -> None:
        """Record one observation (the caller vouches it is a number)."""
        # The first bucket whose bound is >= value; the last bound is inf.
        index = _bucket_of(DEFAULT_BUCKETS, value)
        self._lock.acquire()  # as in Counter.inc
        self.counts[index] += 1
        self.count += 1
        self.total += value
        self._lock.release()
        for listener in self.listeners:  # an empty tuple costs a few ns: no flag to test first
            listener(value)

    def add_listener(self, listener: Callable[[float], None]) -> None:
        """Call ``listener(value)`` after each later observation."""
        with self._lock:
            self.listeners = (*self.listeners, listener)

    def remove_listener(self, listener: Callable[[float], None]) -> None:
        """Stop calling ``listener`` (a listener never added is ignored)."""
        with self._lock:
            self.listeners = tuple(known for known in self.listeners if known != listener)

    def snapshot(self) -> HistogramSnapshot:
        """Count, sum and cumulative buckets, read together."""
        with self._lock:
            counts, count, total = list(self.counts), self.count, self.total
        cumulative, running = [], 0
        for bound, bucket in zip(DEFAULT_BUCKETS, counts, strict=True):
            running += bucket
            cumulative.append((bound, running))
        return HistogramSnapshot(count, total, tuple(cumulative))


_Instrument = TypeVar("_Instrument", Counter, Gauge, Histogram)
Instrument = Counter | Gauge | Histogram
Watcher = Callable[[str, dict[str, str], Instrument], None]
"""Called by :meth:`MetricsManager.watch` with a metric's name, labels and instrument."""


@dataclass(frozen=True)
class Series:
    """One series of a metric: its labels and its value (a histogram's is a snapshot)."""

    labels: dict[str, str]
    value: float | HistogramSnapshot


@dataclass(frozen=True)
class MetricFamily:
    """Every series of one metric name, read at one moment, with what the name means.

    ``unit`` and ``description`` come from :data:`STANDARD_METRICS`; empty for
    a metric unistore does not define.
    """

    name: str
    kind: MetricKind
    unit: str
    description: str
    series: tuple[Series, ...]


def kind_of(instrument: Instrument) -> MetricKind:
    """``"counter"``, ``"gauge"`` or ``"histogram"``."""
    if isinstance(instrument, Histogram):
        return "histogram"
    return "counter" if isinstance(instrument, Counter) else "gauge"


def family_name(name: str, kind: MetricKind) -> str:
    """The name Prometheus exposes a metric's family under: a counter's without a
    ``_total`` suffix (its sample adds it back), any other metric's as it is."""
    return name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name


def exposed_names(name: str, kind: MetricKind) -> frozenset[str]:
    """Every name Prometheus's exposition of a metric uses: its family's and its samples'
    (``x_total`` for a counter; ``h_bucket``, ``h_count`` and ``h_sum`` for a histogram)."""
    family = family_name(name, kind)
    if kind == "counter":
        return frozenset((family, f"{family}_total"))
    if kind == "histogram":
        return frozenset((family, f"{family}_bucket", f"{family}_count", f"{family}_sum"))
    return frozenset((family,))


def _number(value: object, name: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) and isinstance(value, (int, float)) else math.nan
    except OverflowError:  # an int beyond a float's range
        number = math.nan
    if math.isnan(number):
        raise ValidationError(f"metric {name!r}: value must be a finite-sized number, got {value!r}")
    return number


class MetricsManager:
    """A registry of counters, gauges and histograms.

    Examples:
        >>> metrics = MetricsManager()
        >>> metrics.counter("hits", 1, route="a")
        >>> metrics.counter("hits", 2, route="a")
        >>> metrics.value("hits", route="a")
        3.0

    Hot paths bind an instrument once (:meth:`bind_counter` and friends) and
    then update it without looking it up again.
    """

    _instance: ClassVar[MetricsManager | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kinds: dict[str, type] = {}
        #: Each name an exposition of the known metrics uses (see exposed_names), and whose it is.
        self._exposed: dict[str, str] = {}
        self._instruments: dict[_MetricKey, Instrument] = {}
        self._watchers: tuple[Watcher, ...] = ()

    @classmethod
    def get_instance(cls) -> MetricsManager:
        """The process-wide registry, created on first use."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _bind(self, kind: type[_Instrument], name: str, labels: dict[str, str]) -> _Instrument:
        if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
            raise ValidationError(
                "metric name must be a str of ASCII letters, digits and underscores that starts with a letter"
                f" (at most 255 characters: what Prometheus and OpenTelemetry both accept), got {name!r}"
            )
        for label, label_value in labels.items():
            if not _LABEL_NAME.fullmatch(label) or (label == "le" and kind is Histogram):
                raise ValidationError(
                    f"metric {name!r}: label name {label!r} is not a Prometheus label name"
                    " (ASCII letters, digits, underscores; not a leading digit or '__'; no 'le' on a histogram)"
                )
            if not isinstance(label_value, str):
                raise ValidationError(f"metric {name!r}: label {label!r} must be a str, got {label_value!r}")
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            known = self._kinds.get(name)
            if known is None:
                self._claim(name, kind)
                known = self._kinds[name] = kind
            if known is not kind:
                raise ValidationError(f"metric {name!r} is a {known.__name__.lower()}, not a {kind.__name__.lower()}")
            instrument = self._instruments.get(key)
            if instrument is not None:
                return instrument  # type: ignore[return-value]  # the kind check above
            instrument = self._instruments[key] = kind()
            watchers = self._watchers
        # Outside the lock: a watcher may call into an exporter's own locks.
        for watcher in watchers:
            watcher(name, dict(labels), instrument)
        return instrument

    def _claim(self, name: str, kind: type[Instrument]) -> None:
        """Reserve the names a new metric is exposed under (the caller holds the lock).

        Raises:
            ValidationError: another metric's exposition uses one of them (a counter
                ``x`` and a counter ``x_total`` are both exposed as ``x_total``; a
                gauge ``h_count`` would be read as a sample of the histogram ``h``).
        """
        names = exposed_names(name, kind_of(kind()))
        for exposed in sorted(names):
            owner = self._exposed.get(exposed)
            if owner is not None:
                raise ValidationError(
                    f"metric {name!r} would be exposed as {exposed!r}, which the {self._kinds[owner].__name__.lower()}"
                    f" {owner!r} already uses: pick a name Prometheus can tell apart"
                )
        self._exposed.update(dict.fromkeys(names, name))

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher(name, labels, instrument)`` for every instrument bound
        now and for each one bound later, until the returned function is called.

        Exporters use it to follow new series (the OpenTelemetry bridge adds a
        listener to each histogram). Every instrument is reported exactly once.
        """
        with self._lock:
            self._watchers = (*self._watchers, watcher)
            present = list(self._instruments.items())
        for (name, labels), instrument in present:
            watcher(name, dict(labels), instrument)

        def unwatch() -> None:
            with self._lock:
                self._watchers = tuple(known for known in self._watchers if known is not watcher)

        return unwatch

    def bind_counter(self, name: str, **labels: str) -> Counter:
        """The counter of ``name`` and ``labels``, created at 0 if new.

        Raises:
            ValidationError: a bad name or label, or ``name`` is another kind of metric.
        """
        return self._bind(Counter, name, labels)

    def bind_gauge(self, name: str, **labels: str) -> Gauge:
        """The gauge of ``name`` and ``labels`` (see :meth:`bind_counter`)."""
        return self._bind(Gauge, name, labels)

    def bind_histogram(self, name: str, **labels: str) -> Histogram:
        """The histogram of ``name`` and ``labels`` (see :meth:`bind_counter`)."""
        return self._bind(Histogram, name, labels)

    def counter(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` (>= 0) to a counter.

        Raises:
            ValidationError: a bad name, label or value, or ``name`` is not a counter.
        """
        amount = _number(value, name)
        if amount < 0:
            raise ValidationError(f"metric {name!r}: a counter only goes up, got {value!r}")
        self.bind_counter(name, **labels).inc(amount)

    def gauge(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge to ``value``.

        Raises:
            ValidationError: a bad name, label or value, or ``name`` is not a gauge.
        """
        self.bind_gauge(name, **labels).set(_number(value, name))

    def histogram(self, name: str, value: float, **labels: str) -> None:
        """Record one observation (seconds, for latencies) in a histogram.

        Raises:
            ValidationError: a bad name, label or value, or ``name`` is not a histogram.
        """
        self.bind_histogram(name, **labels).observe(_number(value, name))

    def _find(self, name: str, labels: dict[str, str]) -> Counter | Gauge | Histogram | None:
        with self._lock:
            return self._instruments.get((name, tuple(sorted(labels.items()))))

    def value(self, name: str, **labels: str) -> float:
        """The current value of a counter or gauge; 0.0 if it was never set."""
        instrument = self._find(name, labels)
        return instrument.value if isinstance(instrument, (Counter, Gauge)) else 0.0

    def histogram_snapshot(self, name: str, **labels: str) -> HistogramSnapshot:
        """A histogram's count, sum and buckets; all zero if it was never observed."""
        instrument = self._find(name, labels)
        return (instrument if isinstance(instrument, Histogram) else Histogram()).snapshot()

    def collect(self, name: str | None = None) -> list[MetricFamily]:
        """Every metric (or only ``name``) with all its series, sorted by name.

        Each value is read when collected; a family is consistent per series, not across them.
        """
        with self._lock:
            present = [(key, instrument) for key, instrument in self._instruments.items() if name in (None, key[0])]
        by_name: dict[str, list[Series]] = {}
        kinds: dict[str, MetricKind] = {}
        for (metric, labels), instrument in sorted(present, key=lambda entry: entry[0]):
            value = instrument.snapshot() if isinstance(instrument, Histogram) else instrument.value
            by_name.setdefault(metric, []).append(Series(dict(labels), value))
            kinds[metric] = kind_of(instrument)
        families = []
        for metric, series in by_name.items():
            info = STANDARD_METRICS.get(metric)
            unit, description = (info.unit, info.description) if info is not None else ("", "")
            families.append(MetricFamily(metric, kinds[metric], unit, description, tuple(series)))
        return families


class StorageMonitor:
    """Records storage operations and sizes (the framework's monitoring API).

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


__all__ = [
    "DEFAULT_BUCKETS",
    "STANDARD_METRICS",
    "Counter",
    "Gauge",
    "Histogram",
    "HistogramSnapshot",
    "Instrument",
    "MetricFamily",
    "MetricInfo",
    "MetricKind",
    "MetricsManager",
    "Series",
    "StorageMonitor",
    "Watcher",
    "exposed_names",
    "family_name",
    "kind_of",
]
