"""Items through a UnifiedStorageManager: content types as identity, namespaces."""

from __future__ import annotations

import pytest

from ...errors import ItemNotFoundError, ProviderNotFoundError
from ...manager import UnifiedStorageManager
from ...metrics import MetricsManager
from ...model import StorageQuery
from .hooks import (
    ConformanceHooks,
    Factory,
    in_own_loop,
    keys_of,
)


class ManagerTests(ConformanceHooks):
    """Items through a UnifiedStorageManager: content types as identity, namespaces."""

    # -- the manager ---------------------------------------------------------------------

    @in_own_loop
    async def test_content_type_is_identity_through_the_manager(self, make_provider: Factory) -> None:
        """Through the manager, content type is part of an item's identity."""
        provider = make_provider()
        manager = UnifiedStorageManager(metrics=MetricsManager())
        manager.register_provider("x", provider)
        manager.register_provider("y", provider)
        await manager.save("k", "stored as x", "x")
        with pytest.raises(ItemNotFoundError):
            await manager.load("k", "y")
        assert await manager.delete("k", "y") is False
        assert (await manager.load("k", "x")).data == "stored as x"
        # Fan-out visits the provider once even though two types route to it.
        assert [r.item.metadata.key async for r in manager.search(StorageQuery())] == ["k"]
        assert await manager.delete("k", "x") is True
        with pytest.raises(ProviderNotFoundError):
            await manager.load("k", "z")

    @in_own_loop
    async def test_content_types_may_be_str_subclasses(self, make_provider: Factory) -> None:
        """A content type that is a str subclass is the plain str it equals."""

        class ContentType(str):
            pass

        doc = ContentType("doc")
        manager = UnifiedStorageManager(metrics=MetricsManager())
        manager.register_provider(doc, make_provider())
        await manager.save("k", 1, doc)
        assert (await manager.load("k", "doc")).data == 1  # the plain str finds it too
        assert (await manager.load("k", doc)).metadata.content_type == "doc"
        assert [r.item.data async for r in manager.search(StorageQuery(content_type=doc))] == [1]
        assert await manager.delete("k", doc) is True

    @in_own_loop
    async def test_namespaces_are_separate_keyspaces(self, make_provider: Factory) -> None:
        """Two providers ``make_provider`` made do not see each other's items."""
        one, two = make_provider(), make_provider()
        await one.save("k", 1, "a")
        with pytest.raises(ItemNotFoundError):
            await two.load("k")
        assert await keys_of(two) == set()


__all__ = ["ManagerTests"]
