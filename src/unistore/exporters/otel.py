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

One bridge at a time publishes through a meter provider (a second would count
each observation twice); the instruments are made once per meter provider, so a
bridge made after another was closed publishes through them again.

Names, labels (as attributes), units and descriptions are kept
(see docs/observability.md). Needs ``opentelemetry-api``: ``pip install 'unistore[otel]'``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from . import missing_extra

try:
    from opentelemetry import metrics as otel_metrics
except ImportError as exc:  # the extra is not installed
    raise missing_extra(__name__, "opentelemetry-api", "otel") from exc

from .._version import __version__
from ..errors import ValidationError
from ..metrics import DEFAULT_BUCKETS, STANDARD_METRICS, Histogram, Instrument, MetricKind, MetricsManager, kind_of

BUCKET_BOUNDARIES = tuple(bound for bound in DEFAULT_BUCKETS if bound != float("inf"))
"""The explicit bucket boundaries of every published histogram: the registry's, without +inf
(OpenTelemetry's last bucket is unbounded by definition).
"""


class _Publication:
    """What a meter provider publishes for unistore, made once and kept for its life.

    OpenTelemetry's SDK keeps the first instrument made under a name (and its
    callbacks), so the instruments outlive any one bridge: a bridge made after
    another was closed publishes through them again, and at most one bridge is
    open on a meter provider at a time (two would count each observation twice).
    """

    def __init__(self, meter: otel_metrics.Meter) -> None:
        self.meter = meter
        self.instruments: dict[tuple[str, MetricKind], Any] = {}
        #: The bridge that publishes now; None between bridges.
        self.bridge: OpenTelemetryBridge | None = None

    def instrument(self, name: str, kind: MetricKind) -> Any:
        """The instrument of ``name``, made on first use (the caller holds the bridge lock)."""
        instrument = self.instruments.get((name, kind))
        if instrument is None:
            instrument = self.instruments[name, kind] = self._make(name, kind)
        return instrument

    def _make(self, name: str, kind: MetricKind) -> Any:
        info = STANDARD_METRICS.get(name)
        unit, description = (info.unit, info.description) if info is not None else ("", "")
        if kind == "histogram":
            return self.meter.create_histogram(
                name, unit, description, explicit_bucket_boundaries_advisory=BUCKET_BOUNDARIES
            )
        create = self.meter.create_observable_counter if kind == "counter" else self.meter.create_observable_gauge
        return create(name, [self._observer(name)], unit, description)

    def _observer(self, name: str) -> Callable[[otel_metrics.CallbackOptions], Iterable[otel_metrics.Observation]]:
        def observe(options: otel_metrics.CallbackOptions) -> list[otel_metrics.Observation]:
            bridge = self.bridge
            if bridge is None:
                return []
            return [
                otel_metrics.Observation(series.value, series.labels)  # type: ignore[arg-type]  # never a histogram
                for family in bridge.metrics.collect(name)
                for series in family.series
            ]

        return observe


#: Guards every publication and the bridges that open and close on them.
_lock = threading.Lock()
_publications: weakref.WeakKeyDictionary[otel_metrics.MeterProvider, _Publication] = weakref.WeakKeyDictionary()


class OpenTelemetryBridge:
    """Publishes the metrics of ``metrics`` through ``meter_provider``, until :meth:`close`.

    Use it as a context manager, or keep it for the life of the process. One
    bridge at a time publishes through a meter provider; once it is closed,
    another may (the instruments are made once per meter provider and reused).

    Args:
        metrics: the registry to publish; the process-wide one by default.
        meter_provider: where to publish; OpenTelemetry's global provider by default.

    Raises:
        ValidationError: another bridge is open on ``meter_provider``.
    """

    def __init__(
        self, metrics: MetricsManager | None = None, meter_provider: otel_metrics.MeterProvider | None = None
    ) -> None:
        provider = meter_provider if meter_provider is not None else otel_metrics.get_meter_provider()
        self.metrics = metrics if metrics is not None else MetricsManager.get_instance()
        self._forwarding: list[tuple[Histogram, Callable[[float], None]]] = []
        self._closed = False
        with _lock:
            publication = _publications.get(provider)
            if publication is None:
                publication = _publications[provider] = _Publication(provider.get_meter("unistore", __version__))
            if publication.bridge is not None:
                raise ValidationError(
                    f"an OpenTelemetryBridge is already open on {provider!r}: close it first"
                    " (two would publish every observation twice)"
                )
            publication.bridge = self
        self._publication = publication
        self._unwatch = self.metrics.watch(self._follow)

    def _follow(self, name: str, labels: dict[str, str], instrument: Instrument) -> None:
        """Publish ``name`` when first seen; forward a histogram's observations."""
        with _lock:
            if self._closed:
                return
            published = self._publication.instrument(name, kind_of(instrument))
            if isinstance(instrument, Histogram):

                def forward(value: float, record: Any = published.record, attributes: dict[str, str] = labels) -> None:
                    record(value, attributes)

                instrument.add_listener(forward)
                self._forwarding.append((instrument, forward))

    def close(self) -> None:
        """Stop publishing: observable instruments report nothing more and histograms stop
        forwarding (OpenTelemetry's API cannot remove an instrument from its meter); a
        new bridge may then publish on the same meter provider. Closing twice does nothing."""
        with _lock:
            if self._closed:
                return
            self._closed = True
            self._publication.bridge = None
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
