"""The conformance kit (:mod:`unistore.testing`) run on every provider of ours.

The suite is the one a third party's provider runs (docs/testing-kit.md): this
module only adapts ``provider_factory`` (memory, LMDB, Redis, Redis Cluster) to
its one fixture, gives the property tests ``property_settings`` (fewer examples
on the cluster), and checks each store's own integrity where the kit asks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings

from helpers import Factory
from unistore import StorageProvider
from unistore.providers import LmdbStorageProvider
from unistore.testing import ProviderConformance
from unistore.testing.sync import ThroughSyncManager


class TestProviders(ProviderConformance):
    """Every test of the kit, on each kind of ``provider_factory``."""

    @pytest.fixture
    def make_provider(self, provider_factory: Factory) -> Factory:
        return provider_factory

    @pytest.fixture
    def conformance_settings(self, property_settings: settings) -> settings:
        return property_settings

    async def check_store(self, provider: StorageProvider[Any]) -> None:
        """On LMDB, every index entry points at its record and every record is indexed.

        (Not Redis's: it SCANs the whole database, which every test here shares and leaves
        keys in, and it reports an expiry after 2255 as damage, as its scores round it.)"""
        await super().check_store(provider)
        if isinstance(provider, LmdbStorageProvider):
            report = await provider.check()
            assert report.ok, report.problems


@pytest.mark.parametrize("provider_factory", ["redis-near-cache", "redis-cluster-near-cache"], indirect=True)
class TestNearCache(TestProviders):
    """Every test of the kit on a Redis provider with a near cache (one server, the
    cluster): loads served from memory where they can be change no observable result."""


@pytest.mark.parametrize("provider_factory", ["memory", "lmdb", "redis"], indirect=True)
class TestThroughSyncManager(ProviderConformance):
    """Every test of the kit through a SyncStorageManager (:class:`ThroughSyncManager`):
    inline on memory and LMDB, on the manager's loop thread on Redis. A quarter of the
    profile's examples: each call hops to a worker thread, and the paths under the manager
    are the ones the first class runs in full."""

    @pytest.fixture
    def make_provider(self, provider_factory: Factory) -> Iterator[Factory]:
        made: list[ThroughSyncManager] = []

        def make() -> ThroughSyncManager:
            made.append(ThroughSyncManager(provider_factory()))
            return made[-1]

        yield make
        for provider in made:  # (its loop thread; provider_factory closes the provider)
            provider.manager.close()

    @pytest.fixture
    def conformance_settings(self) -> settings:
        return settings(settings(), max_examples=max(settings().max_examples // 4, 20))
