"""Search: every query field, limits, refused queries, searching while saving."""

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
]


class SearchTests(ConformanceHooks):
    """Search: every query field, limits, refused queries, searching while saving."""

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
