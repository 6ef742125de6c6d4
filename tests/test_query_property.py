"""Query semantics held against a plain-Python oracle on random stores and queries."""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from unistore import StorageProvider, StorageQuery
from unistore.providers import LmdbStorageProvider

UTC = timezone.utc
Factory = Callable[[], StorageProvider[Any]]


@dataclass
class Saved:
    key: str
    content_type: str
    tags: dict[str, str]
    created_at: datetime
    expires_at: datetime | None


def oracle(item: Saved, query: StorageQuery, now: datetime) -> bool:
    """R065's ``_matches_query`` made exact: every criterion ANDed, bounds inclusive."""
    if item.expires_at is not None and item.expires_at <= now:
        return False
    # For patterns of literals, '*', '?' and '[ab]', fnmatch and Redis agree.
    if query.pattern is not None and not fnmatch.fnmatchcase(item.key, query.pattern):
        return False
    if query.content_type is not None and item.content_type != query.content_type:
        return False
    if any(item.tags.get(k) != v for k, v in (query.tags or {}).items()):
        return False
    if query.created_after is not None and item.created_at < query.created_after:
        return False
    if query.created_before is not None and item.created_at > query.created_before:
        return False
    if query.expires_after is not None and (item.expires_at is None or item.expires_at < query.expires_after):
        return False
    return not (
        query.expires_before is not None and (item.expires_at is None or item.expires_at > query.expires_before)
    )


# Expiry offsets in minutes from the start of the example; negative ones are already expired.
items = st.lists(
    st.tuples(
        st.text("ab:1", min_size=1, max_size=5),
        st.sampled_from(["ta", "tb"]),
        st.dictionaries(st.sampled_from(["t", "u"]), st.sampled_from(["x", "y", ""]), max_size=2),
        st.none() | st.integers(-2, 5),
    ),
    max_size=12,
)
pattern_parts = st.sampled_from(["a", "b", ":", "1", "*", "?", "[ab]", "[1:]"])
tag_queries = st.none() | st.dictionaries(st.sampled_from(["t", "u"]), st.sampled_from(["x", "y", ""]), max_size=2)
# A bound is picked relative to the saved items' times, so equality (inclusiveness) is hit often.
bounds = st.none() | st.tuples(st.integers(0, 11), st.sampled_from([-1, 0, 1]))


def pick(times: list[datetime], bound: tuple[int, int] | None) -> datetime | None:
    if bound is None or not times:
        return None
    index, nudge = bound
    return times[index % len(times)] + timedelta(microseconds=nudge)


def test_search_equals_oracle(provider_factory: Factory, property_settings: settings) -> None:
    @property_settings
    @given(
        batch=items,
        pattern=st.none() | st.lists(pattern_parts, max_size=5).map("".join),
        content_type=st.none() | st.sampled_from(["ta", "tb"]),
        tags=tag_queries,
        created=st.tuples(bounds, bounds),
        expires=st.tuples(bounds, bounds),
        limit=st.none() | st.integers(0, 4),
    )
    def check(
        batch: list[tuple[str, str, dict[str, str], int | None]],
        pattern: str | None,
        content_type: str | None,
        tags: dict[str, str] | None,
        created: tuple[Any, Any],
        expires: tuple[Any, Any],
        limit: int | None,
    ) -> None:
        async def run() -> None:
            provider = provider_factory()
            start = datetime.now(UTC)
            saved: dict[str, Saved] = {}
            for key, ctype, item_tags, minutes in batch:
                expires_at = None if minutes is None else start + timedelta(minutes=minutes)
                item = await provider.save(key, {"k": key}, ctype, expires_at=expires_at, tags=item_tags)
                saved[key] = Saved(key, ctype, item_tags, item.metadata.created_at, item.metadata.expires_at)
            created_times = sorted(s.created_at for s in saved.values())
            expiry_times = sorted(s.expires_at for s in saved.values() if s.expires_at is not None)
            query = StorageQuery(
                pattern=pattern,
                content_type=content_type,
                tags=tags,
                created_after=pick(created_times, created[0]),
                created_before=pick(created_times, created[1]),
                expires_after=pick(expiry_times, expires[0]),
                expires_before=pick(expiry_times, expires[1]),
                limit=limit,
            )
            now = datetime.now(UTC)
            found = [r.item async for r in provider.search(query)]
            expected = {key for key, item in saved.items() if oracle(item, query, now)}
            keys = [item.metadata.key for item in found]
            assert len(keys) == len(set(keys))
            if limit is None:
                assert set(keys) == expected
            else:
                assert set(keys) <= expected
                assert len(keys) == min(limit, len(expected))
            for item in found:  # each hit is the item as saved
                assert item.data == {"k": item.metadata.key}
                assert item.metadata.created_at == saved[item.metadata.key].created_at
            await provider.cleanup()

        asyncio.run(run())

    check()


# Batches for save_many: distinct keys in mapping order, one content type, tags and expiry each.
batches = st.lists(
    st.tuples(
        st.lists(st.text("ab:1", min_size=1, max_size=5), max_size=4, unique=True),
        st.sampled_from(["ta", "tb"]),
        st.dictionaries(st.sampled_from(["t", "u"]), st.sampled_from(["x", "y", ""]), max_size=2),
        st.none() | st.integers(-2, 5),
    ),
    max_size=5,
)
probe_keys = st.lists(st.text("ab:1", min_size=1, max_size=5), max_size=8)


def test_bulk_operations_equal_oracle(provider_factory: Factory, property_settings: settings) -> None:
    """``delete_matching`` removes what ``search`` finds (and the oracle matches), and
    ``load_many`` then returns exactly the oracle's live items among random keys."""

    @property_settings
    @given(
        groups=batches,
        pattern=st.none() | st.lists(pattern_parts, max_size=5).map("".join),
        content_type=st.none() | st.sampled_from(["ta", "tb"]),
        tags=tag_queries,
        created=st.tuples(bounds, bounds),
        expires=st.tuples(bounds, bounds),
        limit=st.none() | st.integers(0, 4),
        probes=probe_keys,
        probe_type=st.none() | st.sampled_from(["ta", "tb"]),
    )
    def check(
        groups: list[tuple[list[str], str, dict[str, str], int | None]],
        pattern: str | None,
        content_type: str | None,
        tags: dict[str, str] | None,
        created: tuple[Any, Any],
        expires: tuple[Any, Any],
        limit: int | None,
        probes: list[str],
        probe_type: str | None,
    ) -> None:
        async def run() -> None:
            provider = provider_factory()
            start = datetime.now(UTC)
            saved: dict[str, Saved] = {}
            for keys, ctype, item_tags, minutes in groups:
                expires_at = None if minutes is None else start + timedelta(minutes=minutes)
                items = await provider.save_many({key: {"k": key} for key in keys}, ctype, expires_at, item_tags)
                assert [item.metadata.key for item in items] == keys
                for item in items:
                    key = item.metadata.key
                    saved[key] = Saved(key, ctype, item_tags, item.metadata.created_at, item.metadata.expires_at)
            created_times = sorted(s.created_at for s in saved.values())
            expiry_times = sorted(s.expires_at for s in saved.values() if s.expires_at is not None)
            query = StorageQuery(
                pattern=pattern,
                content_type=content_type,
                tags=tags,
                created_after=pick(created_times, created[0]),
                created_before=pick(created_times, created[1]),
                expires_after=pick(expiry_times, expires[0]),
                expires_before=pick(expiry_times, expires[1]),
                limit=limit,
            )
            now = datetime.now(UTC)
            expected = {key for key, item in saved.items() if oracle(item, query, now)}
            found = {r.item.metadata.key async for r in provider.search(query)}
            live_before = {key for key, item in saved.items() if oracle(item, StorageQuery(), now)}
            removed = await provider.delete_matching(query)
            after = await provider.load_many(list(saved), content_type=None)
            gone = live_before - set(after)
            assert set(after) <= live_before  # nothing expired or absent comes back
            assert removed == len(gone)
            if limit is None:
                assert gone == found == expected
            else:  # which matches go is unspecified, as is the order of search results
                assert gone <= expected
                assert len(gone) == len(found) == min(limit, len(expected))
            assert {r.item.metadata.key async for r in provider.search(dataclasses.replace(query, limit=None))} == (
                expected - gone
            )
            # load_many of random keys (repeats, misses, a type or not): the model's live items.
            now = datetime.now(UTC)
            wanted = StorageQuery(content_type=probe_type)
            loaded = await provider.load_many(probes + list(saved)[:2], content_type=probe_type)
            model = {
                key
                for key in probes + list(saved)[:2]
                if key in saved and key not in gone and oracle(saved[key], wanted, now)
            }
            assert set(loaded) == model
            for key, item in loaded.items():
                entry = saved[key]
                assert item.data == {"k": key}
                assert (item.metadata.key, item.metadata.content_type, item.metadata.tags) == (
                    key,
                    entry.content_type,
                    entry.tags,
                )
                assert (item.metadata.created_at, item.metadata.expires_at) == (entry.created_at, entry.expires_at)
            if isinstance(provider, LmdbStorageProvider):
                report = provider.engine.check()
                assert report.ok, report.problems
            await provider.cleanup()

        asyncio.run(run())

    check()
