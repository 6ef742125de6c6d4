"""The conformance suite: a pytest base class a provider's test module subclasses.

:class:`ProviderConformance` holds plain tests of every pinned behaviour, a
property test of search against the reference model, and the stateful
:class:`~unistore.testing.machine.ProviderMachine`. A subclass gives it one
fixture, ``make_provider``: a function that returns a fresh, empty provider (a
keyspace of its own) each time it is called. Tests call it once or more, and
the property tests once per example.

Every test runs in an event loop of its own and cleans up (``await
provider.cleanup()``) every provider it made, in that loop; so the suite needs no
pytest plugin, and the fixture needs no async teardown.

Hooks a subclass may override: :meth:`~ProviderConformance.check_store` (assert
the provider's own invariants, e.g. that its indexes match its records, after
tests that wrote) and :meth:`~ProviderConformance.purge` (its housekeeping); and
the fixture ``conformance_settings`` (the hypothesis settings of the property
tests: by default the active profile's).
"""

from .bulk import BulkTests
from .hooks import ConformanceHooks
from .items import ItemTests
from .manager import ManagerTests
from .reference import ReferenceTests
from .search import SearchTests


class ProviderConformance(ItemTests, ManagerTests, SearchTests, BulkTests, ReferenceTests):
    """The conformance suite: subclass it in a test module (its name starting with
    ``Test``) and give it a ``make_provider`` fixture that returns a function making
    fresh, empty providers.

    Example (a whole test module)::

        import pytest
        from unistore.providers import MemoryStorageProvider
        from unistore.testing import ProviderConformance

        class TestMemoryProvider(ProviderConformance):
            @pytest.fixture
            def make_provider(self):
                return MemoryStorageProvider
    """


__all__ = ["ConformanceHooks", "ProviderConformance"]
