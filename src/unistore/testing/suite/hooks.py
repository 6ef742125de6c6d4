"""What every part of the conformance suite shares: the hooks a provider's test module
may override, the loop each test runs in, and helpers that read a provider."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import settings

from ...manager import UnifiedStorageManager
from ...metrics import MetricsManager
from ...model import StorageItem, StorageQuery
from ...providers.base import StorageProvider

Factory = Callable[[], StorageProvider[Any]]
UTC = timezone.utc


def in_own_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a loop of its own, giving it a ``make_provider`` that
    remembers what it made, and clean each provider up in that loop after."""

    @functools.wraps(test)
    def run(self: ConformanceHooks, make_provider: Factory, **arguments: Any) -> None:
        made: list[StorageProvider[Any]] = []

        def make() -> StorageProvider[Any]:
            provider = make_provider()
            made.append(provider)
            return provider

        async def body() -> None:
            try:
                await test(self, make, **arguments)
            finally:
                for provider in made:
                    await provider.cleanup()

        asyncio.run(body())

    return run


async def keys_of(provider: StorageProvider[Any] | UnifiedStorageManager, **criteria: Any) -> set[str]:
    """The keys a search of ``StorageQuery(**criteria)`` finds."""
    return {result.item.metadata.key async for result in provider.search(StorageQuery(**criteria))}


async def live_items(provider: StorageProvider[Any]) -> dict[str, StorageItem[Any]]:
    """Every live item, by key: what a reader of the whole store sees."""
    return {r.item.metadata.key: r.item async for r in provider.search(StorageQuery())}


async def expiries_of(provider: StorageProvider[Any]) -> dict[str, datetime]:
    """The expiry of every live item that has one, by key."""
    items = await live_items(provider)
    return {key: moment for key, item in items.items() if (moment := item.metadata.expires_at) is not None}


async def seed_for_queries(provider: StorageProvider[Any]) -> dict[str, datetime]:
    """Five items with distinct created times; returns each one's created_at."""
    now = datetime.now(UTC)
    plan = [
        ("user:1", "user", {"role": "admin", "team": "red"}, now + timedelta(hours=1)),
        ("user:2", "user", {"role": "dev", "team": "red"}, now + timedelta(hours=2)),
        ("user:10", "user", {"role": "dev", "team": "blue"}, None),
        ("doc:1", "doc", {"team": "red"}, now + timedelta(hours=3)),
        ("doc:2", "doc", {}, None),
    ]
    created = {}
    for key, content_type, tags, expires in plan:
        item = await provider.save(key, {"key": key}, content_type, expires_at=expires, tags=tags)
        created[key] = item.metadata.created_at
        await asyncio.sleep(0.001)
    return created


def ops(metrics: MetricsManager, operation: str, content_type: str) -> float:
    """How many ``operation`` calls on ``content_type`` succeeded."""
    return metrics.value("storage_operations", operation=operation, content_type=content_type, success="true")


class ConformanceHooks:
    """The hooks a provider's test module may override; every part of the suite has them."""

    # -- hooks -------------------------------------------------------------------

    @pytest.fixture
    def conformance_settings(self) -> settings:
        """The hypothesis settings of the property tests (the stateful machine takes a
        quarter of their ``max_examples`` runs): the active profile's, without a
        deadline (a networked store's latency is no failure). Override this fixture
        to run more or fewer."""
        return settings(deadline=None)

    async def check_store(self, provider: StorageProvider[Any]) -> None:
        """Assert the provider's own invariants (e.g. that its indexes match its
        records); called after the tests that write in bulk and after each run of the
        machine. Does nothing unless overridden."""

    async def purge(self, provider: StorageProvider[Any]) -> None:
        """The provider's housekeeping, which must change nothing a reader sees:
        ``purge_expired()`` if it implements one (one that keeps the contract's, which
        refuses, has none). Override to call yours."""
        if type(provider).purge_expired is not StorageProvider.purge_expired:
            await provider.purge_expired()


__all__ = [
    "UTC",
    "ConformanceHooks",
    "Factory",
    "expiries_of",
    "in_own_loop",
    "keys_of",
    "live_items",
    "ops",
    "seed_for_queries",
]
