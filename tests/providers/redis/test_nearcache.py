"""The near cache's bookkeeping (providers/redis/nearcache.py), without a server: what it
serves, what a fill keeps, what an invalidation or a lost tracking connection drops."""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import datetime, timedelta

import pytest

from helpers import UTC
from unistore.codec import decode_item, prepare_save
from unistore.model import now_micros
from unistore.providers.redis.nearcache import ENTRY_OVERHEAD, LEASE, NearCache

_ids = itertools.count(1)


def record(data: object, expires: datetime | None = None) -> bytes:
    _, made, _ = prepare_save("k", data, "t", expires, None).build(None, now_micros(), lambda: next(_ids))
    return bytes(made)


def fresh(items: int, max_bytes: int, parts: int = 1) -> NearCache:
    """A cache of ``parts`` shards whose counters are its own (they are process-wide, by namespace)."""
    return NearCache(items, max_bytes, parts, uuid.uuid4().hex)


def filled(cache: NearCache, key: bytes, value: bytes, part: int = 0) -> None:
    cache.end(cache.begin(key, part), value)


def get(cache: NearCache, key: bytes, part: int = 0, now: int | None = None) -> bytes | None:
    return cache.get(key, part, now_micros() if now is None else now)


def test_nothing_is_served_or_kept_until_tracking_is_up() -> None:
    cache = fresh(10, 1 << 20)
    filled(cache, b"a", record(1))
    assert (get(cache, b"a"), len(cache)) == (None, 0)
    cache.trust([0])
    one = record(1)
    filled(cache, b"a", one)
    assert get(cache, b"a") == one
    assert (cache.hits.value, cache.misses.value) == (1, 1)


def test_an_invalidation_during_a_fill_keeps_its_reply_out() -> None:
    cache = fresh(10, 1 << 20)
    cache.trust([0])
    fill = cache.begin(b"a", 0)
    cache.invalidate([b"a"])  # another client wrote "a" while our GET was in flight
    cache.end(fill, record("old"))
    assert get(cache, b"a") is None
    fill = cache.begin(b"a", 0)
    cache.invalidate([b"b"])  # another key: no matter
    cache.end(fill, record("new"))
    assert get(cache, b"a") is not None


def test_of_two_fills_of_a_key_the_one_ending_last_keeps_nothing_if_the_other_began_after() -> None:
    cache = fresh(10, 1 << 20)
    cache.trust([0])
    older, newer = cache.begin(b"a", 0), cache.begin(b"a", 0)
    cache.end(newer, record("v2"))  # the later GET answered first
    cache.end(older, record("v1"))  # the earlier one's late reply must not replace it
    got = get(cache, b"a")
    assert got is not None and decode_item(got, "k").data == "v2"


def test_losing_tracking_empties_the_cache_and_fills_begun_before_keep_nothing() -> None:
    cache = fresh(10, 1 << 20)
    cache.trust([0])
    filled(cache, b"a", record(1))
    fill = cache.begin(b"b", 0)
    cache.down()
    assert (len(cache), get(cache, b"a")) == (0, None)
    cache.trust([0])
    cache.end(fill, record(2))
    assert get(cache, b"b") is None
    filled(cache, b"b", record(2))
    cache.clear([0])  # a flush
    assert (len(cache), get(cache, b"b")) == (0, None)


def test_an_expired_entry_is_never_served() -> None:
    cache = fresh(10, 1 << 20)
    cache.trust([0])
    soon = datetime.now(UTC) + timedelta(milliseconds=50)
    filled(cache, b"a", record(1, soon))
    assert get(cache, b"a") is not None
    assert get(cache, b"a", now=now_micros() + 60_000) is None
    assert len(cache) == 0


def test_the_bounds_hold_least_recently_used_first_out() -> None:
    one = record("x" * 100)
    cache = fresh(3, 10 * (len(one) + 1 + ENTRY_OVERHEAD))
    cache.trust([0])
    for key in (b"a", b"b", b"c"):
        filled(cache, key, one)
    assert get(cache, b"a") is not None  # "a" is now the most recent
    filled(cache, b"d", one)
    assert [get(cache, key) is not None for key in (b"a", b"b", b"c", b"d")] == [True, False, True, True]
    assert cache.evictions.value == 1
    small = fresh(100, 2 * (len(one) + 1 + ENTRY_OVERHEAD))
    small.trust([0])
    for key in (b"a", b"b", b"c"):
        filled(small, key, one)
    assert (len(small), small.size) == (2, 2 * (len(one) + 1 + ENTRY_OVERHEAD))
    filled(small, b"big", record("y" * 10_000))  # larger than the whole bound: not kept
    assert get(small, b"big") is None
    filled(small, b"short", b"\x01")  # too short for a header: left to the uncached path
    assert get(small, b"short") is None
    small.invalidate([b"b", b"c"])
    assert (len(small), small.size, small.invalidations.value) == (0, 0, 2)


def test_a_shard_whose_tracking_is_lost_leaves_the_others_served() -> None:
    cache = fresh(10, 1 << 20, parts=3)
    cache.trust([0, 1, 2])
    for part in range(3):
        filled(cache, b"k%d" % part, record(part), part)
    behind = cache.begin(b"late", 1)
    cache.down([1])  # its node stopped answering, or serves the shard no more
    assert [get(cache, b"k%d" % part, part) is not None for part in range(3)] == [True, False, True]
    filled(cache, b"k1", record(1), 1)  # nothing of a shard that is down is kept
    cache.trust([1])  # tracked again: fills begun before keep nothing
    cache.end(behind, record("old"))
    assert (get(cache, b"late", 1), get(cache, b"k1", 1)) == (None, None)
    filled(cache, b"k1", record(1), 1)
    assert get(cache, b"k1", 1) is not None
    cache.clear([0, 2])  # a flush on the node of shards 0 and 2
    assert [get(cache, b"k%d" % part, part) is not None for part in range(3)] == [False, True, False]


def test_a_shard_not_heard_from_within_the_lease_is_not_served(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = fresh(10, 1 << 20)
    cache.trust([0])
    filled(cache, b"a", record(1))
    assert get(cache, b"a") is not None and cache.trusted(0)
    later = time.monotonic() + LEASE + 0.1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert (get(cache, b"a"), cache.trusted(0)) == (None, False)
    filled(cache, b"b", record(2))  # nor is a fill kept then
    cache.trust([0])  # heard from again (the same connection: what it kept still holds)
    assert (get(cache, b"a") is not None, get(cache, b"b")) == (True, None)
