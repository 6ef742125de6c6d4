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
    async def test_fan_out_in_order(self, make_provider: Factory) -> None:
        """Over two providers, an ordered search, pages and count see one store: the
        providers' ordered results merged, a key held by both ordered by content type."""
        manager = UnifiedStorageManager(metrics=MetricsManager())
        manager.register_provider("x", make_provider())
        manager.register_provider("y", make_provider())
        await manager.save_many({"a": 1, "c": 2, "e": 3, "shared": 4}, "x")
        await manager.save_many({"b": 1, "d": 2, "shared": 5}, "y")
        both = ["a", "b", "c", "d", "e", "shared", "shared"]
        found = [
            (r.item.metadata.key, r.item.metadata.content_type)
            async for r in manager.search(StorageQuery(order_by="key"))
        ]
        assert found == [(key, "y" if key in "bd" else "x") for key in both[:5]] + [("shared", "x"), ("shared", "y")]
        descending = [r.item.metadata.key async for r in manager.search(StorageQuery(order_by="-key", limit=4))]
        assert descending == ["shared", "shared", "e", "d"]
        walked: list[tuple[str, str]] = []
        cursor: str | None = None
        pages = 0
        while pages == 0 or cursor is not None:
            assert pages < 10, f"the walk does not end: {walked}"  # (fails, not hangs)
            page = await manager.page(StorageQuery(), 2, cursor)
            walked += [(r.item.metadata.key, r.item.metadata.content_type) for r in page.results]
            cursor, pages = page.next, pages + 1
        assert walked == found
        assert await manager.count(StorageQuery()) == 7
        assert await manager.count(StorageQuery(limit=6)) == 6
        assert await manager.count(StorageQuery(limit=2)) == 2  # the first provider fills it
        assert await manager.count(StorageQuery(content_type="y")) == 3
        newest = [r.item.metadata.key async for r in manager.search(StorageQuery(order_by="-created_at", limit=3))]
        assert newest == ["shared", "d", "b"]

    @in_own_loop
    async def test_namespaces_are_separate_keyspaces(self, make_provider: Factory) -> None:
        """Two providers ``make_provider`` made do not see each other's items."""
        one, two = make_provider(), make_provider()
        await one.save("k", 1, "a")
        with pytest.raises(ItemNotFoundError):
            await two.load("k")
        assert await keys_of(two) == set()


__all__ = ["ManagerTests"]
