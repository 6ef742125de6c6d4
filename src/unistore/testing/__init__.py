"""The conformance kit: prove that a storage provider behaves like unistore's own.

``pip install unistore[testing]`` (hypothesis, pytest). Importing this package
needs them; ``import unistore`` does not.

- :class:`ProviderConformance`: the pytest base class. Subclass it in a test
  module with one fixture, ``make_provider`` (a function returning a fresh, empty
  provider), and pytest runs the whole suite on your provider: plain tests of
  every pinned behaviour, a property test of search and the stateful machine,
  both held against the reference model.
- :class:`ReferenceModel` (:mod:`unistore.testing.model`): the semantics as
  plain Python, with :func:`glob_matches`, an independent Redis glob.
- :mod:`unistore.testing.strategies`: hypothesis strategies for keys, tags,
  data, items and queries.
- :class:`ProviderMachine`, :func:`machine_class` and :func:`run_machine` (:mod:`unistore.testing.machine`):
  the stateful test on its own.

unistore's own providers (memory, LMDB, Redis, Redis Cluster) run this same kit
in their test suite (tests/providers/test_conformance.py). docs/testing-kit.md shows a
provider's test module, lists what the suite checks and how to tune it.
"""

from ..errors import missing_extra

try:
    import hypothesis  # noqa: F401  (the kit's dependencies, named at once if missing)
    import pytest  # noqa: F401
except ImportError as exc:
    raise missing_extra(__name__, exc.name or "hypothesis", "testing") from exc

from . import strategies
from .glob import glob_matches
from .machine import ProviderMachine, machine_class, run_machine
from .model import ReferenceModel, query_matches, same_data, same_item, stored_form
from .suite import ProviderConformance

__all__ = [
    "ProviderConformance",
    "ProviderMachine",
    "ReferenceModel",
    "glob_matches",
    "machine_class",
    "query_matches",
    "run_machine",
    "same_data",
    "same_item",
    "stored_form",
    "strategies",
]
