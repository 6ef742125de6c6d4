"""Search: every query field, limits, order, pages and count, refused queries, searching while saving."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from ...errors import ValidationError
from ...model import StorageQuery
from .hooks import (
    UTC,
    ConformanceHooks,
    Factory,
    expiries_of,
    in_own_loop,
    keys_of,
    seed_for_queries,
)

#: Query fields ``search`` and ``delete_matching`` must refuse (building the query never does).
BAD_QUERIES = [
    pytest.param({"limit": -1}, id="negative-limit"),
    pytest.param({"pattern": 5}, id="int-pattern"),
    pytest.param({"tags": {"t": 1}}, id="int-tag-value"),
    pytest.param({"content_type": ""}, id="empty-content-type"),
    pytest.param({"created_after": "yesterday"}, id="str-time-bound"),
    pytest.param({"order_by": "size"}, id="unknown-order"),
    pytest.param({"order_by": "--key"}, id="doubled-minus"),
]


class SearchTests(ConformanceHooks):
    """Search: every query field, limits, order, pages and count, refused queries, searching while saving."""

    # -- search ----------------------------------------------------------------------------

    @in_own_loop
    async def test_every_query_field(self, make_provider: Factory) -> None:
        """Each criterion alone and all ANDed; time bounds inclusive; no expiry meets no expires_* bound."""
        provider = make_provider()
        created = await seed_for_queries(provider)
        expiry = await expiries_of(provider)
        assert await keys_of(provider) == set(created)
        assert await keys_of(provider, pattern="user:?") == {"user:1", "user:2"}
        assert await keys_of(provider, pattern="user:*") == {"user:1", "user:2", "user:10"}
        assert await keys_of(provider, pattern="*:[12]") == {"user:1", "user:2", "doc:1", "doc:2"}
        assert await keys_of(provider, pattern="*:[^1]") == {"user:2", "doc:2"}
        assert await keys_of(provider, pattern="user") == set()
        assert await keys_of(provider, content_type="doc") == {"doc:1", "doc:2"}
        assert await keys_of(provider, tags={"team": "red"}) == {"user:1", "user:2", "doc:1"}
        assert await keys_of(provider, tags={"team": "red", "role": "dev"}) == {"user:2"}
        assert await keys_of(provider, tags={"team": "green"}) == set()
        assert await keys_of(provider, tags={}) == set(created)
        # Time bounds are inclusive at both ends.
        assert await keys_of(provider, created_after=created["user:10"]) == {"user:10", "doc:1", "doc:2"}
        assert await keys_of(provider, created_before=created["user:2"]) == {"user:1", "user:2"}
        assert await keys_of(provider, created_after=created["user:2"], created_before=created["user:2"]) == {"user:2"}
        assert await keys_of(provider, created_after=created["doc:2"] + timedelta(microseconds=1)) == set()
        # Items without expiry never meet an expires_* bound.
        assert await keys_of(provider, expires_after=datetime(1970, 1, 1, tzinfo=UTC)) == {
            "user:1",
            "user:2",
            "doc:1",
        }
        assert await keys_of(provider, expires_before=expiry["user:2"]) == {"user:1", "user:2"}
        assert await keys_of(provider, expires_after=expiry["user:2"], expires_before=expiry["user:2"]) == {"user:2"}
        assert await keys_of(provider, expires_after=expiry["doc:1"] + timedelta(microseconds=1)) == set()
        # Everything ANDs.
        assert await keys_of(
            provider, pattern="user:*", content_type="user", tags={"team": "red"}, expires_before=expiry["user:1"]
        ) == {"user:1"}

    @in_own_loop
    async def test_limit(self, make_provider: Factory) -> None:
        """A search with a limit yields exactly ``min(limit, matches)`` results."""
        provider = make_provider()
        for n in range(10):
            await provider.save(f"k{n}", n, "a", tags={"all": "yes"})
        assert len([r async for r in provider.search(StorageQuery(tags={"all": "yes"}, limit=3))]) == 3
        assert [r async for r in provider.search(StorageQuery(limit=0))] == []
        assert len([r async for r in provider.search(StorageQuery(limit=100))]) == 10

    # -- order, pages, count --------------------------------------------------------------

    @in_own_loop
    async def test_order_by(self, make_provider: Factory) -> None:
        """Every ``order_by``, both directions: the matches in that order, ties by key then
        content type; ``limit`` takes the first."""
        provider = make_provider()
        saved = {}
        for key in ["m", "b", "z", "a", "é", "k"]:
            saved[key] = await provider.save(key, 1, "t" if key != "k" else "u", tags={"all": "yes"})
        saved["b"] = await provider.save("b", 2, "t", tags={"all": "yes"})  # b: created early, updated last
        for order_by in ["key", "created_at", "updated_at"]:

            def position(key: str, field: str = order_by) -> tuple[Any, ...]:
                meta = saved[key].metadata
                moment = () if field == "key" else (getattr(meta, field),)
                return (*moment, key.encode(), meta.content_type.encode())

            ascending = sorted(saved, key=position)
            for descending in (False, True):
                expected = ascending[::-1] if descending else ascending
                query = StorageQuery(tags={"all": "yes"}, order_by=("-" if descending else "") + order_by)
                assert [r.item.metadata.key async for r in provider.search(query)] == expected, query
                query.limit = 3
                assert [r.item.metadata.key async for r in provider.search(query)] == expected[:3], query
        found = [r.item.metadata.key async for r in provider.search(StorageQuery(order_by="key", pattern="[a-m]*"))]
        assert found == ["a", "b", "k", "m"]

    @in_own_loop
    async def test_pages(self, make_provider: Factory) -> None:
        """Pages walk the ordered matches: each full but the last, whose ``next`` is None;
        a cursor works only with its own query, and not once altered."""
        provider = make_provider()
        await provider.save_many({f"k{n}": n for n in range(7)}, "t", tags={"all": "yes"})
        query = StorageQuery(tags={"all": "yes"})
        walked: list[str] = []
        sizes: list[int] = []
        cursor: str | None = None
        while not sizes or cursor is not None:
            assert len(sizes) < 10, f"the walk does not end: {walked}"  # (fails, not hangs)
            page = await provider.page(query, 3, cursor)
            walked += [r.item.metadata.key for r in page.results]
            sizes.append(len(page.results))
            cursor = page.next
        assert (walked, sizes) == ([f"k{n}" for n in range(7)], [3, 3, 1])
        first = await provider.page(StorageQuery(order_by="-key", limit=5), 2)
        assert [r.item.metadata.key for r in first.results] == ["k6", "k5"]
        assert first.next is not None
        second = await provider.page(StorageQuery(order_by="-key", limit=5), 2, first.next)
        third = await provider.page(StorageQuery(order_by="-key", limit=5), 2, second.next)
        assert [r.item.metadata.key for r in second.results + third.results] == ["k4", "k3", "k2"]
        assert third.next is None  # the limit ends the walk
        for other in (StorageQuery(order_by="key", limit=5), StorageQuery(order_by="-key"), StorageQuery()):
            with pytest.raises(ValidationError):
                await provider.page(other, 2, first.next)
        altered = first.next[:-3] + ("A" if first.next[-3] != "A" else "B") + first.next[-2:]
        for bad in (altered, first.next[:-1], "", "not a cursor", 5):
            with pytest.raises(ValidationError):
                await provider.page(StorageQuery(order_by="-key", limit=5), 2, bad)  # type: ignore[arg-type]
        for size in (0, -1, 1.5, True):
            with pytest.raises(ValidationError):
                await provider.page(query, size)  # type: ignore[arg-type]
        empty = await provider.page(StorageQuery(pattern="nothing*"), 3)
        assert (empty.results, empty.next) == ([], None)

    @in_own_loop
    async def test_count(self, make_provider: Factory) -> None:
        """``count``: the live matches, up to ``limit``; the order plays no part."""
        provider = make_provider()
        await seed_for_queries(provider)
        assert await provider.count(StorageQuery()) == 5
        assert await provider.count(StorageQuery(tags={"team": "red"})) == 3
        assert await provider.count(StorageQuery(tags={"team": "red"}, limit=2, order_by="-key")) == 2
        assert await provider.count(StorageQuery(pattern="user:*", content_type="doc")) == 0
        await provider.delete("user:1")
        assert await provider.count(StorageQuery(tags={"team": "red"})) == 2
        with pytest.raises(ValidationError):
            await provider.count(StorageQuery(limit=-1))

    @pytest.mark.parametrize("fields", BAD_QUERIES)
    @in_own_loop
    async def test_a_bad_query_is_refused(self, make_provider: Factory, fields: dict[str, Any]) -> None:
        """Building a bad query never raises; ``search`` and ``delete_matching`` raise
        ValidationError, and delete nothing."""
        query = StorageQuery(**fields)
        provider = make_provider()
        await provider.save_many({"a": 1, "b": 2}, "x", tags={"t": "1"})
        with pytest.raises(ValidationError):
            [r async for r in provider.search(query)]
        with pytest.raises(ValidationError):
            await provider.delete_matching(query)
        with pytest.raises(ValidationError):
            await provider.count(query)
        with pytest.raises(ValidationError):
            await provider.page(query, 2)
        assert await keys_of(provider) == {"a", "b"}

    @in_own_loop
    async def test_results_carry_score_and_highlights(self, make_provider: Factory) -> None:
        """Exact matching: every result's score is 1.0 and it has no highlights."""
        provider = make_provider()
        await provider.save("k", 1, "a")
        [result] = [r async for r in provider.search(StorageQuery())]
        assert (result.score, result.highlights) == (1.0, [])

    @in_own_loop
    async def test_saving_during_search_is_safe(self, make_provider: Factory) -> None:
        """Saving and deleting while a search runs neither fails it nor loses the writes."""
        provider = make_provider()
        for n in range(5):
            await provider.save(f"k{n}", n, "a")
        seen = set()
        async for result in provider.search(StorageQuery(pattern="k*")):
            seen.add(result.item.metadata.key)
            await provider.save(f"new{result.item.data}", 0, "a")
            await provider.delete(f"k{(result.item.data + 1) % 5}")
        assert seen  # whatever it saw, it finished without error
        assert await keys_of(provider, pattern="new*") == {f"new{n}" for n in range(5) if f"k{n}" in seen}

    @in_own_loop
    async def test_provider_is_usable_after_cleanup(self, make_provider: Factory) -> None:
        """``async with`` cleans up on exit, and a cleaned-up provider works again."""
        provider = make_provider()
        async with provider as entered:
            assert entered is provider
            await provider.save("k", 1, "a")
        await provider.cleanup()
        await provider.save("k2", 2, "a")
        assert (await provider.load("k2")).data == 2


__all__ = ["BAD_QUERIES", "SearchTests"]
