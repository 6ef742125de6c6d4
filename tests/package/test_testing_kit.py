"""The conformance kit itself: its Redis glob against a real server, its model, its
strategies, that it catches broken providers, and that the docs' example runs.

(tests/providers/test_conformance.py runs the kit on our own providers.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import itertools
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from helpers import ROOT, UTC
from unistore import (
    SerializationError,
    StorageItem,
    StorageMetadata,
    StorageProvider,
    StorageQuery,
    StorageResult,
    ordering,
)
from unistore.index import CompiledQuery
from unistore.model import Tags
from unistore.providers import MemoryStorageProvider
from unistore.testing import (
    ProviderConformance,
    ReferenceModel,
    glob_matches,
    machine_class,
    query_matches,
    run_machine,
    same_data,
    same_item,
    stored_form,
)
from unistore.testing import strategies as kit
from unistore.testing.glob import MAX_NESTED_STARS
from unistore.testing.machine import REFUSALS

pytest_plugins = ["pytester"]


def test_import_unistore_needs_no_test_tools() -> None:
    """``import unistore`` loads neither the kit nor pytest nor hypothesis (a plain install
    has neither); ``import unistore.testing`` loads them."""
    probe = (
        "import sys, unistore, unistore.providers; "
        "print(sorted({'pytest', 'hypothesis', 'unistore.testing'} & set(sys.modules))); "
        "import unistore.testing; "
        "print(sorted({'pytest', 'hypothesis'} & set(sys.modules)))"
    )
    lines = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert lines.stdout.splitlines() == ["[]", "['hypothesis', 'pytest']"]


# -- the reference glob, against Redis -----------------------------------------------

#: (pattern, key, whether Redis matches): every rule of Redis's matcher (docs: unistore.testing.glob).
GLOB_CASES = [
    ("*", "anything", True),
    ("a*", "a", True),
    ("*a", "ba", True),
    ("*a", "ab", False),
    ("a**b", "axyb", True),  # a run of stars is one star
    ("a*b*c", "axxbyyc", True),
    ("a*b*c", "axxcyyb", False),
    ("*ab*ab", "abab", True),
    ("*ab*ab", "aba", False),
    ("a*x*y*b", "ayxb", False),
    ("a?c", "abc", True),
    ("a?c", "ac", False),
    ("?", "é", False),  # '?' is one byte; é is two
    ("??", "é", True),
    ("[abc]", "b", True),
    ("[^abc]", "b", False),
    ("[^abc]", "d", True),
    ("[!a]", "b", False),  # '!' is no negation: a member
    ("[!a]", "!", True),
    ("[a-c]x", "bx", True),
    ("[c-a]x", "bx", True),  # a reversed range is swapped
    ("[a-]", "_", True),  # "a-]" is the range ']'..'a', not 'a' or '-'
    ("[a-]", "-", False),
    ("[a-]x]", "_x", False),  # ... and leaves the class open: 'x' and ']' join it
    ("[a-]x]", "x", True),
    ("[a-\\]", "_", True),  # a range may end in a backslash
    ("[\\]]", "]", True),
    ("[\\", "\\", True),  # a backslash that ends the pattern is a member
    ("[]]", "]", False),  # '[]' is an empty class, then a literal ']'
    ("[]", "a", False),
    ("\\*", "*", True),
    ("\\*", "a", False),
    ("a\\", "a\\", True),  # a trailing backslash is literal
    ("[", "a", False),  # unterminated and empty: matches nothing
    ("[^", "a", True),  # unterminated and negated-empty: any byte
    ("[ab", "b", True),  # unterminated: the rest of the pattern is the class
    ("[a-é]", "a", True),  # bounds compare as signed chars: 0xC3 (é's first byte) < 'a'
    ("[a-é]", "b", False),
    ("[a-é]", "\x00", True),
    ("[é-a]?", "é", True),  # 0xC3 a member, then the range 0xA9..'a'
    ("[é]", "é", False),  # a class is one byte of é's two
    ("[é][é]", "é", True),
    ("\x00*", "\x00a", True),
    ("", "", True),  # the empty key matches the empty pattern only
    ("*", "", False),
]


class RedisGlob:
    """Redis's own glob, asked through ``HSCAN MATCH`` (the matcher ``SCAN`` uses) on a
    hash of ours whose fields are the keys to match."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.name = f"unistore-testing-glob:{uuid.uuid4().hex}"
        self.fields: frozenset[str] = frozenset()

    def matches(self, pattern: str, keys: Iterable[str]) -> set[str]:
        """The keys among ``keys`` that Redis matches with ``pattern``."""
        wanted = frozenset(keys)
        if wanted != self.fields:  # the hash is rewritten only when the keys change
            self.client.delete(self.name)
            self.client.hset(self.name, mapping=dict.fromkeys((key.encode() for key in wanted), b"1"))
            self.fields = wanted
        found = self.client.hscan_iter(self.name, match=pattern.encode(), count=1000)
        return {field.decode() for field, _ in found}


@pytest.fixture(scope="module")
def server(redis_port: int) -> Iterator[RedisGlob]:
    """Redis's glob, on the session's redis-server."""
    client = redis.Redis(port=redis_port, protocol=2)
    glob = RedisGlob(client)
    yield glob
    client.delete(glob.name)
    client.close()


@pytest.mark.redis
def test_glob_cases_are_redis_rules(server: RedisGlob) -> None:
    """Each case holds for the reference glob and for the real server alike."""
    for pattern, key, expected in GLOB_CASES:
        assert glob_matches(pattern, key) is expected, (pattern, key)
        if key:  # a hash field may be empty, but no key of ours is
            assert (key in server.matches(pattern, [key])) is expected, (pattern, key)


@pytest.mark.redis
@pytest.mark.parametrize("stars", [MAX_NESTED_STARS - 1, MAX_NESTED_STARS, MAX_NESTED_STARS + 1])
def test_glob_nesting_limit_is_redis(server: RedisGlob, stars: int) -> None:
    """Past 1000 nested stars Redis gives up; a last star does not nest."""
    key = "a" * (MAX_NESTED_STARS + 100)
    for pattern in ("*a" * stars, "*a" * stars + "*"):
        assert glob_matches(pattern, key) is (key in server.matches(pattern, [key]))
    assert glob_matches("*a" * (MAX_NESTED_STARS + 1), key) is False
    assert glob_matches("*a" * MAX_NESTED_STARS, key) is True


def test_the_reference_glob_is_never_slow() -> None:
    """Stars that fail on a long key cost the pattern times the key, no backtracking blow-up
    (a regex reading took minutes on such a pair); a watchdog fails the test if it hangs."""
    key = "a" * 20_000
    assert glob_matches("*a*a*a*a*a*a*a*a*a*a*b", key) is False
    assert glob_matches("*a" * 50 + "*", key) is True
    assert glob_matches("*?*?*?*b*", key + "b" + key) is True


#: Every key of one or two characters from glob characters and a few others, and the odd keys.
PATTERN_KEYS = sorted(
    set(kit.ODD_KEYS)
    | {"".join(chars) for size in (1, 2) for chars in itertools.product("a*?[]\\-^!é\x00", repeat=size)}
)
_MORE_PARTS = ["[^", "[a-", "-", "^", "!", "[]", "[]a]", "[^]]", "[a-\\]", "[!a]", "\x00", "[\x00-b]", "[é-a]", "[a-é]"]


@pytest.mark.redis
@given(parts=st.lists(st.sampled_from(kit.PATTERN_PARTS + _MORE_PARTS) | st.sampled_from(PATTERN_KEYS), max_size=6))
@example(parts=["[a-]x]"])
@example(parts=["*\\"])
def test_glob_equals_redis_on_random_patterns(server: RedisGlob, parts: list[str]) -> None:
    """Random patterns over odd keys: the reference finds what Redis finds."""
    pattern = "".join(parts)
    ours = {key for key in PATTERN_KEYS if glob_matches(pattern, key)}
    assert ours == server.matches(pattern, PATTERN_KEYS), pattern


# -- the model ---------------------------------------------------------------------------

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
EARLIER = NOW - timedelta(hours=1)


def test_stored_form_and_same_data() -> None:
    """What ``load`` returns, and comparison to the type of every value."""
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=plus_two)
    data = {"t": (1, (2, "x")), b"k": [moment], 3: {"n": None}}
    assert stored_form(data) == {"t": [1, [2, "x"]], b"k": [moment], 3: {"n": None}}
    assert stored_form(data)[b"k"][0].tzinfo is UTC
    assert stored_form(datetime(2030, 1, 2)) == datetime(2030, 1, 2).astimezone()  # naive: local time
    assert same_data(stored_form(data), stored_form(data))
    assert same_data(stored_form(moment), moment.astimezone(UTC))
    unequal = [
        (1, 1.0),
        (True, 1),
        (0.0, -0.0),
        (1.5, 2.5),
        ("a", "b"),
        (moment, moment.astimezone(UTC)),  # equal instants, but not in UTC
        ([1, 2], [1]),
        ([1, 2], [1, 3]),
        ({1: "a"}, {1.0: "a"}),  # a key of another type
        ({1: "a"}, {2: "a"}),
        ({1: "a"}, {1: "a", 2: "b"}),
        ({1: "a"}, {1: "b"}),
        ((1,), [1]),
    ]
    for found, expected in unequal:
        assert not same_data(found, expected), (found, expected)


def _item(key: str, *, expires_at: datetime | None = None, **fields: Any) -> StorageItem[Any]:
    metadata = StorageMetadata(
        id=fields.get("id", uuid.uuid4()),
        key=key,
        content_type=fields.get("content_type", "t"),
        created_at=fields.get("created_at", NOW),
        updated_at=fields.get("updated_at", NOW),
        expires_at=expires_at,
        tags=fields.get("tags", {}),
    )
    return StorageItem(fields.get("data", 1), metadata)


def test_same_item() -> None:
    """Data to the type, metadata equal, every datetime in UTC, the id a UUID."""
    item = _item("k", expires_at=LATER)
    assert same_item(item, item)
    plus_two = timezone(timedelta(hours=2))
    assert not same_item(_item("k", expires_at=LATER, id=item.metadata.id, data=1.0), item)
    assert not same_item(_item("k", expires_at=LATER.astimezone(plus_two), id=item.metadata.id), item)
    assert not same_item(_item("k", expires_at=LATER), item)  # another id
    as_text = _item("k", id=str(item.metadata.id))
    assert not same_item(as_text, as_text)  # an id that is not a UUID


def test_query_matches_each_criterion() -> None:
    """Every criterion, bounds inclusive, no expiry meeting no expires_* bound, naive bounds local time."""
    item = _item("user:1", expires_at=LATER, content_type="doc", tags={"a": "1", "b": "2"})
    never = _item("user:2")
    hits = [
        StorageQuery(),
        StorageQuery(pattern="user:?", content_type="doc", tags={"a": "1"}),
        StorageQuery(tags={}),
        StorageQuery(created_after=NOW, created_before=NOW),
        StorageQuery(expires_after=LATER, expires_before=LATER),
        StorageQuery(created_before=NOW.astimezone().replace(tzinfo=None)),  # naive: local time
    ]
    misses = [
        StorageQuery(pattern="user:[^1]"),
        StorageQuery(content_type="other"),
        StorageQuery(tags={"a": "1", "b": "3"}),
        StorageQuery(tags={"c": ""}),
        StorageQuery(created_after=NOW + timedelta(microseconds=1)),
        StorageQuery(created_before=NOW - timedelta(microseconds=1)),
        StorageQuery(expires_before=LATER - timedelta(microseconds=1)),
    ]
    assert [query_matches(item, query) for query in hits] == [True] * len(hits)
    assert [query_matches(item, query) for query in misses] == [False] * len(misses)
    assert query_matches(never, StorageQuery(created_before=NOW))
    assert not query_matches(never, StorageQuery(expires_after=EARLIER))
    assert not query_matches(never, StorageQuery(expires_before=LATER))


def test_reference_model_answers_like_the_semantics() -> None:
    """Upserts keep id and created_at; expired items are invisible and replaced by new
    ones; content types condition load and delete; counts are of live items."""
    model = ReferenceModel()
    ids = [uuid.uuid4() for _ in range(6)]
    first = model.save("a", (1, 2), "x", tags={"t": "v"}, id=ids[0], at=NOW)
    assert (first.data, first.metadata.id, first.metadata.created_at) == ([1, 2], ids[0], NOW)
    upsert = model.save("a", 2, "y", expires_at=LATER, id=ids[1], at=LATER - timedelta(minutes=1))
    assert (upsert.metadata.id, upsert.metadata.created_at, upsert.metadata.updated_at) == (
        ids[0],
        NOW,
        LATER - timedelta(minutes=1),
    )
    assert upsert.metadata.tags == {}
    gone = model.save("old", 3, "x", expires_at=EARLIER, id=ids[2], at=NOW)
    renewed = model.save("old", 4, "x", id=ids[3], at=NOW)  # over an expired item: a new one
    assert (renewed.metadata.id, gone.metadata.id) == (ids[3], ids[2])
    model.save("late", 5, "x", expires_at=NOW, id=ids[4], at=EARLIER)  # expires at NOW: gone at NOW
    assert model.load("late", now=NOW) is None
    assert model.load("late", now=EARLIER) is not None
    assert model.load("a", now=NOW) == upsert
    assert model.load("a", "x", now=NOW) is None
    assert model.load("missing", now=NOW) is None
    assert model.load_many(["old", "a", "old", "missing", "late"], now=NOW) == {"old": renewed, "a": upsert}
    assert list(model.load_many(["old", "a"], now=NOW)) == ["old", "a"]
    assert model.search(StorageQuery(content_type="x"), now=NOW) == {"old": renewed}
    assert set(model.live(NOW)) == {"a", "old"}
    assert model.delete("a", "x", now=NOW) is False
    assert model.delete_many(["a", "old", "a"], "y", now=NOW) == 1
    assert model.delete("a", now=NOW) is False
    many = model.save_many({"m1": 1, "m2": 2}, "z", ids=[ids[5], uuid.uuid4()], at=[NOW, NOW])
    assert [item.metadata.key for item in many] == ["m1", "m2"]
    assert model.delete_matching(StorageQuery(pattern="m?"), now=NOW) == 2
    assert model.purge(NOW) == 1  # "late" is dropped; nothing a reader sees changes
    assert model.purge(NOW) == 0
    assert set(model.live(NOW)) == {"old"}
    model.remove(["old", "never-there"])
    assert model.live() == {}
    assert len(model.history) == 7
    assert ids[0] in model.ids and ids[1] not in model.ids


# -- strategies ---------------------------------------------------------------------------


def _saved(key: str, created_at: datetime, tags: Tags) -> StorageItem[Any]:
    return _item(key, created_at=created_at, updated_at=created_at, tags=tags)


def test_query_shapes_pick_from_what_was_saved() -> None:
    """A shape's pattern, tags and created bounds come from the saves; expiry bounds
    from the fixed instants, nudged within what a datetime holds."""
    saved = [_saved("a*b", NOW, {"t": "x"}), _saved("c", LATER, {"u": "y"})]
    shape = kit.QueryShape(
        pattern=kit.KeyPattern(0, "exact", 0),
        tags=1,
        created_after=(0, 1),
        created_before=(0, -1),
        expires_after=(0, -1),  # the earliest instant, nudged below year 1: the earliest
        expires_before=(0, 1),  # the latest, nudged past 9999: the latest
        limit=2,
    )
    assert shape.query(saved) == StorageQuery(
        pattern="a\\*b",
        tags={"u": "y"},
        created_after=NOW + timedelta(microseconds=1),
        created_before=LATER - timedelta(microseconds=1),
        expires_after=datetime(1, 1, 1, tzinfo=UTC),
        expires_before=kit.LAST,
        limit=2,
    )
    assert shape.query([]) == StorageQuery(
        expires_after=datetime(1, 1, 1, tzinfo=UTC), expires_before=kit.LAST, limit=2
    )
    forms = {form: kit.KeyPattern(1, form, 2).pattern(["x", "a[b]c"]) for form in ("raw", "exact", "prefix", "suffix")}
    assert forms == {"raw": "a[b]c", "exact": "a\\[b\\]c", "prefix": "a\\[*", "suffix": "*\\]c"}
    assert kit.QueryShape(tags={"t": "x"}).query(saved).tags == {"t": "x"}
    assert kit.EVERYTHING.query(saved) == StorageQuery()


@settings(max_examples=20)
@given(query=kit.queries(), new=kit.items())
def test_strategies_make_what_a_provider_accepts(query: StorageQuery, new: kit.NewItem) -> None:
    """Every drawn item saves and every drawn query runs (on the memory provider)."""

    async def run() -> None:
        provider = MemoryStorageProvider()
        await provider.save(new.key, new.data, new.content_type, new.expires_at, new.tags)
        assert re.fullmatch(f"[{re.escape(kit.KEY_ALPHABET)}]{{1,4}}", new.key) or new.key in kit.ODD_KEYS
        [r async for r in provider.search(query)]

    asyncio.run(run())


# -- the kit catches broken providers ---------------------------------------------------


class ThirdPartyProvider(StorageProvider[Any]):
    """A provider as a third party writes one, in the small: every call goes to a
    :class:`MemoryStorageProvider`. It has no ``purge_expired``."""

    def __init__(self) -> None:
        self.inner = MemoryStorageProvider()

    async def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        return await self.inner.save(key, data, content_type, expires_at, tags)

    async def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        return await self.inner.load(key, content_type=content_type)

    async def delete(self, key: str, *, content_type: str | None = None) -> bool:
        return await self.inner.delete(key, content_type=content_type)

    async def search(self, query: StorageQuery | CompiledQuery) -> AsyncIterator[StorageResult[Any]]:
        async for result in self.inner.search(query):
            yield result

    async def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        return await self.inner.save_many(items, content_type, expires_at, tags)

    async def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        return await self.inner.load_many(keys, content_type=content_type)

    async def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        return await self.inner.delete_many(keys, content_type=content_type)

    async def delete_matching(self, query: StorageQuery | CompiledQuery) -> int:
        return await self.inner.delete_matching(query)

    async def cleanup(self) -> None:
        await self.inner.cleanup()


class NewIdOnUpsert(ThirdPartyProvider):
    """Treats every save as a new item: the id and created_at of an upsert change."""

    async def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        await self.inner.delete(key)
        return await self.inner.save(key, data, content_type, expires_at, tags)


class IgnoresLimit(ThirdPartyProvider):
    """Yields every match, whatever the limit."""

    async def search(self, query: StorageQuery | CompiledQuery) -> AsyncIterator[StorageResult[Any]]:
        unlimited = (
            dataclasses.replace(query, spec=dataclasses.replace(query.spec, limit=None))
            if isinstance(query, CompiledQuery)  # (a count, a page)
            else dataclasses.replace(query, limit=None)
        )
        async for result in self.inner.search(unlimited):
            yield result


class ShellGlob(ThirdPartyProvider):
    """Matches patterns as :mod:`fnmatch` does (``[!a]`` negates, ``\\`` escapes nothing,
    ``?`` is a character): not Redis's glob."""

    async def search(self, query: StorageQuery | CompiledQuery) -> AsyncIterator[StorageResult[Any]]:
        if not isinstance(query, StorageQuery):  # (a count, a page: the defect is in searches)
            async for result in self.inner.search(query):
                yield result
            return
        pattern, count = query.pattern, 0
        async for result in self.inner.search(dataclasses.replace(query, pattern=None, limit=None)):
            if (pattern is None or fnmatch.fnmatchcase(result.item.metadata.key, pattern)) and (
                query.limit is None or count < query.limit
            ):
                count += 1
                yield result


class SavesHalfABatch(ThirdPartyProvider):
    """Saves a batch item by item, so a bad item leaves the ones before it written."""

    async def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        if not isinstance(items, Mapping):  # refused as it should be
            return await self.inner.save_many(items, content_type, expires_at, tags)
        return [await self.inner.save(key, data, content_type, expires_at, tags) for key, data in items.items()]


class CountsEveryKey(ThirdPartyProvider):
    """``delete_many`` counts the keys it was given, live or not."""

    async def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        names = list(dict.fromkeys(keys))
        await self.inner.delete_many(names, content_type=content_type)
        return len(names)


class IgnoresOrder(ThirdPartyProvider):
    """Yields the matches in no order, and pages from the start again (it drops the
    order and the position of the query)."""

    async def search(self, query: StorageQuery | CompiledQuery) -> AsyncIterator[StorageResult[Any]]:
        async for result in self.inner.search(ordering.unordered(query)):
            yield result


class CountIgnoresLimit(ThirdPartyProvider):
    """Counts every match, whatever the limit."""

    async def count(self, query: StorageQuery | CompiledQuery) -> int:
        compiled = ordering.unordered(query)
        return await self.inner.count(
            dataclasses.replace(compiled, spec=dataclasses.replace(compiled.spec, limit=None))
        )


class LocalTimes(ThirdPartyProvider):
    """Returns created_at in another offset than UTC (the same instant)."""

    async def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        item = await self.inner.load(key, content_type=content_type)
        item.metadata.created_at = item.metadata.created_at.astimezone(timezone(timedelta(hours=1)))
        return item


#: The searches for a planted defect: a found defect ends one at once, so the budget is
#: what a miss would cost. ``derandomize`` does not make a search repeatable across
#: installs (the seed follows the installed source: a clone in CI missed with 200), so the
#: budgets are set from measured rates: the shell glob was caught in 4 runs of 10 of 200
#: examples (p ≈ 0.0026 an example: 3000 miss once in 2000 runs); the machine's defects in
#: 9 or 10 of 10 runs of 50 (it runs a quarter of max_examples). The machine is not hunted
#: for the shell glob: it caught it in 2 runs of 10 of 50 (its searches vary the store more
#: than the pattern); the property test below and the plain test of every query field do.
HUNT = settings(max_examples=2000, deadline=None, derandomize=True, database=None)
GLOB_HUNT = settings(HUNT, max_examples=3000)


@pytest.mark.parametrize(
    "broken",
    [NewIdOnUpsert, IgnoresLimit, SavesHalfABatch, CountsEveryKey, LocalTimes, IgnoresOrder, CountIgnoresLimit],
)
def test_the_machine_catches_a_broken_provider(broken: type[ThirdPartyProvider]) -> None:
    with pytest.raises(AssertionError):
        run_machine(broken, ProviderConformance(), settings(HUNT, phases=[Phase.generate]))


def test_the_property_test_catches_a_shell_glob() -> None:
    with pytest.raises(AssertionError):
        ProviderConformance().test_search_matches_model(ShellGlob, settings(GLOB_HUNT, phases=[Phase.generate]))


@pytest.mark.parametrize(
    ("test", "broken", "arguments"),
    [
        ("test_upsert_keeps_id_and_created_at", NewIdOnUpsert, {}),
        ("test_limit", IgnoresLimit, {}),
        ("test_every_query_field", ShellGlob, {}),
        ("test_delete_many_counts_live_items", CountsEveryKey, {}),
        ("test_save_returns_what_load_returns", LocalTimes, {}),
        ("test_order_by", IgnoresOrder, {}),
        ("test_pages", IgnoresOrder, {}),
        ("test_count", CountIgnoresLimit, {}),
        (
            "test_a_refused_batch_writes_nothing",
            SavesHalfABatch,
            {"items": {"new1": 1, "bad": object()}, "options": {}, "error": SerializationError, "named": "'bad'"},
        ),
    ],
)
def test_plain_tests_catch_a_broken_provider(
    test: str, broken: type[ThirdPartyProvider], arguments: dict[str, Any]
) -> None:
    """A plain test of the suite, called as pytest would, fails on the defect it is about."""
    with pytest.raises(AssertionError):
        getattr(ProviderConformance(), test)(make_provider=broken, **arguments)


def test_a_sound_third_party_provider_passes_the_machine() -> None:
    """The machine on a provider without ``purge_expired``: its purge step does nothing."""
    run_machine(ThirdPartyProvider, ProviderConformance(), settings(max_examples=20, deadline=None))
    provider = ThirdPartyProvider()
    asyncio.run(ProviderConformance().purge(provider))


def test_a_scripted_run_of_the_machine() -> None:
    """Every rule once, in order, on the memory provider (what random runs do, made certain)."""
    machine = machine_class(MemoryStorageProvider, ProviderConformance())()
    far = kit.FUTURE[0]
    machine.seed(kit.Batch({"a": 1, "b": (2,), "c": None}, "ta", None, {"t": "x"}))
    machine.store_equals_model()
    machine.save(kit.NewItem("d", {"n": datetime(2030, 1, 1)}, "tb", far, {}))
    machine.upsert(kit.NewItem("zzz", 5, "ta", kit.PAST[0], {"u": "y"}), which=0)  # "a", now expired
    machine.save(kit.NewItem("a", 6, "ta", None, {}))  # over the expired item: a new one
    machine.save_many(kit.Batch({"e": 7, "b": 8}, "tb", far, {"t": "x"}))
    for refusal in REFUSALS:
        machine.refused_save_many(kit.Batch({"b": 9}, "ta", None, {}), refusal)
    machine.store_equals_model()
    machine.load([0, 1, 5], ["missing"], None)
    machine.load([0, 3], [], "tb")
    machine.store_equals_model()  # nothing written since the last comparison
    machine.search(kit.QueryShape(pattern=kit.KeyPattern(4, "exact", 0), limit=1))
    machine.search(kit.QueryShape(tags=0, created_after=(0, 0)))
    machine.search(kit.QueryShape(order_by="-updated_at", limit=2))
    machine.pages(kit.QueryShape(order_by="created_at", limit=3), size=2)
    machine.pages(kit.QueryShape(), size=1)
    machine.walk(kit.QueryShape(order_by="-key"), size=1)  # a walk begins: one page
    assert machine.walking is not None
    machine.save(kit.NewItem("zz", 1, "ta", None, {}))  # behind the walk's position ("e"): never met
    machine.save(kit.NewItem("b", 10, "ta", None, {}))  # ahead of it, changed: met as it is now
    for _ in range(4):  # d, c, b, a: the last page has no next
        machine.walk(kit.QueryShape(), size=1)
    assert machine.walking is None  # the walk has ended, every unchanged item met once
    machine.delete_matching(kit.QueryShape(content_type="tb", limit=1))
    machine.delete([], [], "tb")
    machine.delete([1], ["missing"], None)
    machine.purge()
    machine.store_equals_model()
    machine.teardown()
    assert machine.loop.is_closed()


# -- the docs' example ----------------------------------------------------------------------

DOCS = ROOT / "docs" / "testing-kit.md"


def test_the_docs_example_runs_as_written(pytester: pytest.Pytester) -> None:
    """The docs' third-party test module, run by pytest with no other plugin than
    hypothesis's (not pytest-asyncio): every test passes."""
    [module] = re.findall(r'```python title="test_my_provider.py"\n(.*?)```', DOCS.read_text(), re.DOTALL)
    pytester.makepyfile(test_my_provider=module)
    previous = settings.get_current_profile_name()
    settings.register_profile("testing-kit-docs", max_examples=10)  # the default profile's, with fewer examples
    try:
        result = pytester.runpytest_inprocess(
            "-p", "no:cacheprovider", "-p", "no:asyncio", "--hypothesis-profile=testing-kit-docs"
        )
    finally:
        settings.load_profile(previous)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 60, result.stdout.str()
    assert set(outcomes) == {"passed"}, result.stdout.str()
