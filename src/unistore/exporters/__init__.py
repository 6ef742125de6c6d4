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

from ..errors import StorageError


class MissingExtraError(StorageError, ImportError):
    """An exporter's optional dependency is not installed; the message says how to install it.

    Both a :class:`~unistore.StorageError` (the CLI reports it as a user error)
    and an :class:`ImportError` (what ``import`` of a missing module raises).
    """


def missing_extra(module: str, package: str, extra: str) -> MissingExtraError:
    """The error for ``module``, which needs ``package``, installed by unistore's extra ``extra``."""
    return MissingExtraError(
        f"{module} needs {package}, which is not installed: pip install 'unistore[{extra}]'",
        {"module": module, "package": package, "extra": extra},
    )


__all__ = ["MissingExtraError", "missing_extra"]
