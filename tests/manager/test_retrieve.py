"""The legacy memory store's retrieval: ``UnifiedStorageManager.retrieve`` (score and
highlights) and the ``unistore.compat.memory`` adapter, on LMDB and on Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from unistore import (
    ItemNotFoundError,
    MetricsManager,
    StorageProvider,
    StorageQuery,
    UnifiedStorageManager,
    ValidationError,
)
from unistore.compat.memory import (
    MemoryEntry,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemorySearchResult,
    MemoryType,
    UnifiedMemoryStore,
)
from unistore.providers import LmdbStorageProvider, MemoryStorageProvider, RedisStorageProvider
from unistore.ranking import HIGHLIGHT_CONTEXT, MAX_HIGHLIGHTS

NOTES = {
    "n1": {"title": "The quick brown fox", "body": "jumps over the lazy dog"},
    "n2": {"title": "A quick note", "tags": ["shopping", "list"]},
    "n3": {"title": "Foxes and dogs", "count": 3},
    "n4": "quick QUICK brown",
    "n5": {"nested": {"deeper": ["brown bread", 7, None]}},
}


@pytest.fixture(params=["lmdb", "redis"])
async def provider(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageProvider[Any]]:
    """A fresh provider on a real LMDB store or a real redis-server."""
    made: StorageProvider[Any]
    if request.param == "lmdb":
        made = LmdbStorageProvider(tmp_path / "store")
    else:
        port = request.getfixturevalue("redis_port")
        made = RedisStorageProvider({"host": "127.0.0.1", "port": port, "namespace": uuid.uuid4().hex})
    yield made
    await made.cleanup()


@pytest.fixture
async def manager(provider: StorageProvider[Any]) -> UnifiedStorageManager:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("note", provider)
    for key, data in NOTES.items():
        await manager.save(key, data, "note", tags={"kind": "even" if key in ("n2", "n4") else "odd"})
    return manager


async def ranked(manager: UnifiedStorageManager, query: StorageQuery, text: str | None, **options: Any) -> list[Any]:
    return [(r.item.metadata.key, r.score, r.highlights) async for r in manager.retrieve(query, text, **options)]


# -- UnifiedStorageManager.retrieve ----------------------------------------------------


async def test_without_text_it_is_search_with_score_one(manager: UnifiedStorageManager) -> None:
    results = await ranked(manager, StorageQuery(tags={"kind": "odd"}), None)
    assert sorted(results) == [("n1", 1.0, []), ("n3", 1.0, []), ("n5", 1.0, [])]
    assert len(await ranked(manager, StorageQuery(limit=2), None)) == 2
    assert await ranked(manager, StorageQuery(limit=0), "quick") == []


async def test_score_is_the_share_of_words_found_best_first(manager: UnifiedStorageManager) -> None:
    results = await ranked(manager, StorageQuery(content_type="note"), "Quick brown fox")
    assert [(key, round(score, 4)) for key, score, _ in results] == [
        ("n1", 1.0),  # quick, brown, fox
        ("n4", 0.6667),  # quick (twice, any case), brown
        ("n2", 0.3333),  # quick; equal scores in key order
        ("n5", 0.3333),  # brown, nested in a dict and a list
    ]  # n3 has "Foxes": whole words only, so it is not a match
    highlights = {key: found for key, _, found in results}
    assert highlights["n1"] == ["The quick brown fox"]
    assert highlights["n4"] == ["quick QUICK brown"]
    assert highlights["n5"] == ["brown bread"]


async def test_an_order_applies_without_text_and_is_refused_with_it(manager: UnifiedStorageManager) -> None:
    results = await ranked(manager, StorageQuery(tags={"kind": "odd"}, order_by="-key"), None)
    assert [key for key, _, _ in results] == ["n5", "n3", "n1"]
    with pytest.raises(ValidationError, match="a retrieval with text orders its results by score"):
        await ranked(manager, StorageQuery(order_by="key"), "quick")


async def test_limit_is_exact_after_ranking(manager: UnifiedStorageManager) -> None:
    results = await ranked(manager, StorageQuery(limit=2), "quick brown fox")
    assert [key for key, _, _ in results] == ["n1", "n4"]
    assert [key for key, _, _ in await ranked(manager, StorageQuery(limit=10), "dog")] == ["n1"]


async def test_min_score_and_other_criteria_narrow_the_results(manager: UnifiedStorageManager) -> None:
    results = await ranked(manager, StorageQuery(), "quick brown fox", min_score=0.5)
    assert [key for key, _, _ in results] == ["n1", "n4"]
    results = await ranked(manager, StorageQuery(tags={"kind": "even"}), "quick brown fox")
    assert [key for key, _, _ in results] == ["n4", "n2"]
    assert await ranked(manager, StorageQuery(), "absent words") == []


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("", {}, "text must contain a word"),
        ("?! ...", {}, "text must contain a word"),
        (42, {}, "text must be a str"),
        ("x", {"min_score": 1.5}, "min_score must be a number from 0.0 to 1.0"),
        (None, {"min_score": -0.1}, "min_score must be a number from 0.0 to 1.0"),
        ("x", {"min_score": True}, "min_score must be a number"),
        ("x", {"min_score": "0.5"}, "min_score must be a number"),
    ],
)
async def test_bad_arguments_are_refused_and_counted(text: Any, options: dict[str, Any], message: str) -> None:
    metrics = MetricsManager()
    manager = UnifiedStorageManager(metrics=metrics)
    manager.register_provider("t", MemoryStorageProvider())
    with pytest.raises(ValidationError, match=message):
        await ranked(manager, StorageQuery(content_type="t"), text, **options)
    assert metrics.value("storage_operations", operation="retrieve", content_type="t", success="false") == 1


async def test_retrieve_is_measured_as_its_own_operation() -> None:
    metrics = MetricsManager()
    manager = UnifiedStorageManager(metrics=metrics)
    manager.register_provider("t", MemoryStorageProvider())
    await manager.save("k", "hello", "t")
    assert await ranked(manager, StorageQuery(), "hello") == [("k", 1.0, ["hello"])]
    assert metrics.value("storage_operations", operation="retrieve", content_type="*", success="true") == 1
    assert metrics.value("storage_operations", operation="search", content_type="*", success="true") == 0


async def test_fan_out_ranks_over_every_provider() -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    first, second = MemoryStorageProvider(), MemoryStorageProvider()
    manager.register_provider("a", first)
    manager.register_provider("b", second)
    await manager.save("a1", "red apple", "a")
    await manager.save("b1", "red apple pie", "b")
    await manager.save("b2", "green pie", "b")
    results = await ranked(manager, StorageQuery(limit=2), "apple pie")
    assert [(key, score) for key, score, _ in results] == [("b1", 1.0), ("a1", 0.5)]


async def test_highlights_are_passages_around_the_words() -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("t", MemoryStorageProvider())
    filler = " ".join(["lorem"] * 40)
    text = f"{filler} needle one {filler} needle two and needle three {filler}"
    await manager.save("long", {"body": text, "extra": ["needle"] * 10}, "t")
    ((_, score, highlights),) = await ranked(manager, StorageQuery(), "needle")
    assert score == 1.0 and len(highlights) == MAX_HIGHLIGHTS
    first, second = highlights[:2]
    assert first.startswith("…lorem") and first.endswith("lorem…") and "needle one" in first
    assert "needle two and needle three" in second  # close matches share one passage
    assert len(first) <= 2 * HIGHLIGHT_CONTEXT + len("needle") + 2 * len("lorem ") + 2
    assert highlights[2:] == ["needle"] * 3  # whole short strings, no ellipsis
    for passage in (first, second):  # cut at word boundaries
        assert all(word in ("lorem", "needle", "one", "two", "and", "three") for word in passage.strip("…").split())


async def test_a_caller_that_stops_early_closes_the_search(manager: UnifiedStorageManager) -> None:
    results = manager.retrieve(StorageQuery(), "quick")
    first = await results.__anext__()
    assert (first.item.metadata.key, first.score) == ("n1", 1.0)  # n1, n2, n4 tie: key order
    await results.aclose()
    assert manager._metrics.value("storage_operations", operation="retrieve", content_type="*", success="true") == 1


# -- unistore.compat.memory: legacy call sites, unchanged ------------------------------


async def legacy_call_site(store: Any) -> list[tuple[str, float, list[str]]]:
    """How the framework used RedisMemoryStore: initialize, store entries, retrieve, delete."""
    await store.initialize()
    await store.store(MemoryEntry(key="m1", value={"text": "Paris is the capital of France"}, metadata={"user": "ana"}))
    await store.store(
        MemoryEntry(
            key="m2",
            value={"text": "The capital of Italy is Rome"},
            type=MemoryType.LONG_TERM,
            scope=MemoryScope.GLOBAL,
            metadata={"user": "bob", "rank": 2},
        )
    )
    await store.store(MemoryEntry(key="m3", value={"text": "Bread, milk, eggs"}, metadata={"user": "ana"}))
    results = []
    async for result in store.retrieve(MemoryQuery(query="capital of France", limit=5)):
        assert isinstance(result, MemorySearchResult) and isinstance(result.entry, MemoryEntry)
        results.append((result.entry.key, round(result.score, 4), result.highlights))
    await store.delete("m3")
    await store.cleanup()
    return results


async def test_a_legacy_call_site_works_unchanged(provider: StorageProvider[Any]) -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("memory", provider)
    store: UnifiedMemoryStore[Any] = UnifiedMemoryStore(manager)
    assert await legacy_call_site(store) == [
        ("m1", 1.0, ["Paris is the capital of France"]),
        ("m2", 0.6667, ["The capital of Italy is Rome"]),
    ]
    assert store.is_initialized is False
    with pytest.raises(ItemNotFoundError):
        await store.load("m3")
    entry = await store.load("m2")
    assert (entry.type, entry.scope, entry.metadata) == (
        MemoryType.LONG_TERM,
        MemoryScope.GLOBAL,
        {"rank": 2, "user": "bob"},
    )
    assert entry.value == {"text": "The capital of Italy is Rome"}
    assert entry.created_at.tzinfo is not None and entry.expires_at is None


async def test_legacy_filters_select_as_before(provider: StorageProvider[Any]) -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("memory", provider)
    store: UnifiedMemoryStore[Any] = UnifiedMemoryStore(manager)
    for n in range(6):
        await store.store(
            MemoryEntry(
                key=f"k{n}*",  # glob characters in keys are taken literally
                value={"text": f"note number {n}"},
                type=MemoryType.LONG_TERM if n % 2 else MemoryType.SHORT_TERM,
                metadata={"user": "ana" if n < 3 else "bob"},
            )
        )

    async def keys(query: MemoryQuery) -> list[tuple[str, float]]:
        return [(r.entry.key, r.score) async for r in store.retrieve(query)]

    everything = await keys(MemoryQuery(limit=10))
    assert sorted(everything) == [(f"k{n}*", 1.0) for n in range(6)]  # "*": no text, score 1.0
    assert sorted(await keys(MemoryQuery(filters={"type": "long_term"}))) == [("k1*", 1.0), ("k3*", 1.0), ("k5*", 1.0)]
    long_term = MemoryQuery(
        filters={"type": MemoryType.LONG_TERM, "scope": MemoryScope.SESSION}, metadata={"user": "bob"}
    )
    assert sorted(await keys(long_term)) == [("k3*", 1.0), ("k5*", 1.0)]
    assert await keys(MemoryQuery(key="k2*")) == [("k2*", 1.0)]
    assert await keys(MemoryQuery(key="k2")) == []
    assert sorted(await keys(MemoryQuery(keys=["k1*", "k4*", "absent"]))) == [("k1*", 1.0), ("k4*", 1.0)]
    assert await keys(MemoryQuery(query="number 4", index_type=MemoryIndex.TEMPORAL, order_by="created_at")) == [
        ("k4*", 1.0),
        ("k0*", 0.5),
        ("k1*", 0.5),
        ("k2*", 0.5),
        ("k3*", 0.5),
        ("k5*", 0.5),
    ]
    assert await keys(MemoryQuery(query="number 4", offset=1, limit=2)) == [("k0*", 0.5), ("k1*", 0.5)]
    assert await keys(MemoryQuery(query="number 4", keys=["k5*", "k4*"], offset=1)) == [("k5*", 0.5)]
    assert await keys(MemoryQuery(query="number 4", keys=["k5*", "k4*", "k3*"], limit=2)) == [
        ("k4*", 1.0),
        ("k3*", 0.5),
    ]
    assert await keys(MemoryQuery(query="number 4", min_score=0.75)) == [("k4*", 1.0)]
    assert await keys(MemoryQuery(metadata={"user": "carol"})) == []


async def test_expiry_and_ttl(tmp_path: Path) -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("memory", LmdbStorageProvider(tmp_path / "store"))
    store: UnifiedMemoryStore[Any] = UnifiedMemoryStore(manager, ttl=3600)
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    await store.store(MemoryEntry(key="gone", value="old", expires_at=past))
    await store.store(MemoryEntry(key="kept", value="new"))
    assert [r.entry.key async for r in store.retrieve(MemoryQuery())] == ["kept"]
    expires_at = (await store.load("kept")).expires_at
    assert expires_at is not None and timedelta(minutes=59) < expires_at - datetime.now(timezone.utc) <= timedelta(
        hours=1
    )
    await manager.cleanup()


async def test_from_url_owns_its_manager(tmp_path: Path) -> None:
    store: UnifiedMemoryStore[Any] = UnifiedMemoryStore.from_url(f"lmdb://{tmp_path / 'store'}", "mem")
    await store.initialize()
    await store.store(MemoryEntry(key="a", value="text"))
    await store.cleanup()  # closes the provider; a later use reopens it
    assert (await store.load("a")).value == "text"
    await store.cleanup()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("not a query", "query must be a MemoryQuery"),
        (MemoryQuery(query=" "), "MemoryQuery.query must be a non-empty str"),
        (MemoryQuery(query=None), "MemoryQuery.query must be a non-empty str"),  # type: ignore[arg-type]
        (MemoryQuery(limit=0), "MemoryQuery.limit must be an int >= 1"),
        (MemoryQuery(offset=-1), "MemoryQuery.offset must be an int >= 0"),
        (MemoryQuery(limit=True), "MemoryQuery.limit must be an int"),
        (MemoryQuery(keys="k1"), "MemoryQuery.keys must be a list"),  # type: ignore[arg-type]
        (MemoryQuery(min_score=2.0), "min_score must be a number from 0.0 to 1.0"),
        (MemoryQuery(metadata={"at": object()}), "memory metadata 'at' must be a JSON value"),
    ],
)
async def test_bad_queries_are_refused(query: Any, message: str) -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("memory", MemoryStorageProvider())
    store: UnifiedMemoryStore[Any] = UnifiedMemoryStore(manager)
    with pytest.raises(ValidationError, match=message):
        [r async for r in store.retrieve(query)]


async def test_bad_entries_are_refused_and_write_nothing() -> None:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("memory", MemoryStorageProvider())
    store: UnifiedMemoryStore[Any] = UnifiedMemoryStore(manager)
    with pytest.raises(ValidationError, match="entry must be a MemoryEntry"):
        await store.store({"key": "k", "value": 1})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="memory metadata 'when' must be a JSON value"):
        await store.store(MemoryEntry(key="k", value=1, metadata={"when": datetime.now()}))
    assert [r async for r in store.retrieve(MemoryQuery())] == []
