"""OpenTelemetry metrics bridge: every metric of a :class:`~unistore.metrics.MetricsManager`
published through an OpenTelemetry ``MeterProvider`` (the global one unless given).

- A counter becomes an ``ObservableCounter`` and a gauge an ``ObservableGauge``:
  their callbacks read the registry at each collection, so values recorded
  before the bridge existed are published too.
- A histogram becomes a synchronous ``Histogram`` whose bucket boundaries are
  the registry's own (:data:`~unistore.metrics.DEFAULT_BUCKETS`, given as
  ``explicit_bucket_boundaries_advisory``), fed each observation as it is made
  (through :meth:`~unistore.metrics.Histogram.add_listener`). OpenTelemetry's
  API has no asynchronous histogram, so this is the one way to publish real
  histogram points with our buckets: an SDK then aggregates exactly the counts
  the registry keeps. It counts the observations made *after* the bridge was
  created: create it at start-up. (A ``View`` that sets another aggregation
  overrides the advisory boundaries: that is the application's choice.)

Names, labels (as attributes), units and descriptions are kept
(see docs/observability.md). Needs ``opentelemetry-api``: ``pip install 'unistore[otel]'``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from . import missing_extra

try:
    from opentelemetry import metrics as otel_metrics
except ImportError as exc:  # the extra is not installed
    raise missing_extra(__name__, "opentelemetry-api", "otel") from exc

from .. import __version__
from ..metrics import DEFAULT_BUCKETS, STANDARD_METRICS, Histogram, Instrument, MetricKind, MetricsManager, kind_of

#: The explicit bucket boundaries of every published histogram: the registry's, without +inf
#: (OpenTelemetry's last bucket is unbounded by definition).
BUCKET_BOUNDARIES = tuple(bound for bound in DEFAULT_BUCKETS if bound != float("inf"))


class OpenTelemetryBridge:
    """Publishes the metrics of ``metrics`` through ``meter_provider``, until :meth:`close`.

    Use it as a context manager, or keep it for the life of the process.

    Args:
        metrics: the registry to publish; the process-wide one by default.
        meter_provider: where to publish; OpenTelemetry's global provider by default.
    """

    def __init__(
        self, metrics: MetricsManager | None = None, meter_provider: otel_metrics.MeterProvider | None = None
    ) -> None:
        provider = meter_provider if meter_provider is not None else otel_metrics.get_meter_provider()
        self.metrics = metrics if metrics is not None else MetricsManager.get_instance()
        self._meter = provider.get_meter("unistore", __version__)
        self._lock = threading.Lock()
        self._published: dict[str, Any] = {}
        self._forwarding: list[tuple[Histogram, Callable[[float], None]]] = []
        self._closed = False
        self._unwatch = self.metrics.watch(self._follow)

    def _follow(self, name: str, labels: dict[str, str], instrument: Instrument) -> None:
        """Publish ``name`` when first seen; forward a histogram's observations."""
        with self._lock:
            if self._closed:
                return
            published = self._published.get(name)
            if published is None:
                published = self._published[name] = self._publish(name, kind_of(instrument))
            if isinstance(instrument, Histogram):

                def forward(value: float, record: Any = published.record, attributes: dict[str, str] = labels) -> None:
                    record(value, attributes)

                instrument.add_listener(forward)
                self._forwarding.append((instrument, forward))

    def _publish(self, name: str, kind: MetricKind) -> Any:
        info = STANDARD_METRICS.get(name)
        unit, description = (info.unit, info.description) if info is not None else ("", "")
        if kind == "histogram":
            return self._meter.create_histogram(
                name, unit, description, explicit_bucket_boundaries_advisory=BUCKET_BOUNDARIES
            )
        create = self._meter.create_observable_counter if kind == "counter" else self._meter.create_observable_gauge
        return create(name, [self._observer(name)], unit, description)

    def _observer(self, name: str) -> Callable[[otel_metrics.CallbackOptions], Iterable[otel_metrics.Observation]]:
        def observe(options: otel_metrics.CallbackOptions) -> list[otel_metrics.Observation]:
            if self._closed:
                return []
            return [
                otel_metrics.Observation(series.value, series.labels)  # type: ignore[arg-type]  # never a histogram
                for family in self.metrics.collect(name)
                for series in family.series
            ]

        return observe

    def close(self) -> None:
        """Stop publishing: observable instruments report nothing more and histograms stop
        forwarding (OpenTelemetry's API cannot remove an instrument from its meter)."""
        with self._lock:
            self._closed = True
            forwarding, self._forwarding = self._forwarding, []
        self._unwatch()
        for histogram, forward in forwarding:
            histogram.remove_listener(forward)

    def __enter__(self) -> OpenTelemetryBridge:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


__all__ = ["BUCKET_BOUNDARIES", "OpenTelemetryBridge"]
