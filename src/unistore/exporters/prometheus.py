"""Prometheus exporter: every metric of a :class:`~unistore.metrics.MetricsManager`
as a ``prometheus_client`` collector, and its text exposition.

Names and labels are kept as recorded (the registry only takes names that
Prometheus accepts, and none whose exposition clashes with another's); a
counter ``x`` is exposed as ``x_total``, a histogram ``h`` as
``h_bucket{le=...}`` (cumulative, over the registry's own bucket bounds),
``h_sum`` and ``h_count``. Values are read at each scrape.

Examples:
    >>> from unistore.metrics import MetricsManager
    >>> metrics = MetricsManager()
    >>> metrics.counter("storage_operations", 1, operation="save", content_type="note", success="true")
    >>> print(exposition(metrics).splitlines()[2])
    storage_operations_total{content_type="note",operation="save",success="true"} 1.0

Needs ``prometheus_client``: ``pip install 'unistore[prometheus]'``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

from . import missing_extra

try:
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric
except ImportError as exc:  # the extra is not installed
    raise missing_extra(__name__, "prometheus_client", "prometheus") from exc

from ..metrics import STANDARD_METRICS, HistogramSnapshot, MetricFamily, MetricsManager, family_name


def _le(bound: float) -> str:
    """A bucket bound as Prometheus spells it (``+Inf`` for the last)."""
    return "+Inf" if bound == math.inf else repr(bound)


def _metric(family: MetricFamily) -> Metric:
    """One family as prometheus_client's ``Metric``, with its samples."""
    name = family_name(family.name, family.kind)  # prometheus_client's rule: a counter's without _total
    metric = Metric(name, family.description or f"{family.name} (a {family.kind})", family.kind)
    for series in family.series:
        value = series.value
        if isinstance(value, HistogramSnapshot):
            for bound, count in value.buckets:
                metric.add_sample(f"{name}_bucket", {**series.labels, "le": _le(bound)}, count)
            metric.add_sample(f"{name}_count", series.labels, value.count)
            metric.add_sample(f"{name}_sum", series.labels, value.total)
        else:
            metric.add_sample(f"{name}_total" if family.kind == "counter" else name, series.labels, value)
    return metric


class MetricsCollector:
    """A ``prometheus_client`` collector of every metric in ``metrics``.

    Register it in a ``CollectorRegistry`` (or use :func:`register`) and serve
    that registry as usual, e.g. with ``prometheus_client.start_http_server``.

    Args:
        metrics: the registry to export; the process-wide one by default.
    """

    def __init__(self, metrics: MetricsManager | None = None) -> None:
        self.metrics = metrics if metrics is not None else MetricsManager.get_instance()

    def collect(self) -> Iterator[Metric]:
        """Every metric family with its current samples (prometheus_client calls it at each scrape)."""
        for family in self.metrics.collect():
            yield _metric(family)

    def describe(self) -> Iterator[Metric]:
        """The families this collector exposes: unistore's own, and any recorded so far
        (so that a registry can tell clashing collectors apart without collecting)."""
        present = {family.name: family for family in self.metrics.collect()}
        for name, info in STANDARD_METRICS.items():
            present.setdefault(name, MetricFamily(name, info.kind, info.unit, info.description, ()))
        for family in present.values():
            yield _metric(dataclasses.replace(family, series=()))


def register(metrics: MetricsManager | None = None, registry: CollectorRegistry | None = None) -> MetricsCollector:
    """Add a :class:`MetricsCollector` of ``metrics`` to ``registry`` (prometheus_client's
    default ``REGISTRY`` when None) and return it; ``registry.unregister`` removes it.

    Raises:
        ValueError: the registry already has a collector of these metric names.
    """
    collector = MetricsCollector(metrics)
    (registry if registry is not None else REGISTRY).register(collector)
    return collector


def exposition(metrics: MetricsManager | None = None) -> str:
    """Every metric of ``metrics`` (the process-wide registry by default) in
    Prometheus's text exposition format (version 0.0.4), as a scrape would get it."""
    registry = CollectorRegistry()
    registry.register(MetricsCollector(metrics))
    return generate_latest(registry).decode()


__all__ = ["MetricsCollector", "exposition", "register"]
