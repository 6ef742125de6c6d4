"""Exporters of a :class:`~unistore.metrics.MetricsManager`'s metrics to
monitoring systems, each behind an optional dependency (an "extra"):

- :mod:`unistore.exporters.prometheus`: a ``prometheus_client`` collector and
  the text exposition (``pip install 'unistore[prometheus]'``);
- :mod:`unistore.exporters.otel`: an OpenTelemetry metrics bridge
  (``pip install 'unistore[otel]'``).

Importing one without its extra raises :class:`MissingExtraError`, which
names the command that installs it. docs/observability.md lists the metrics.
"""

from __future__ import annotations

from ..errors import MissingExtraError, missing_extra

__all__ = ["MissingExtraError", "missing_extra"]
