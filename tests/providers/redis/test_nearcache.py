"""The near cache's bookkeeping (providers/redis/nearcache.py), without a server: what it
serves, what a fill keeps, what an invalidation or a lost tracking connection drops."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta

from helpers import UTC
from unistore.codec import decode_item, prepare_save
from unistore.model import now_micros
from unistore.providers.redis.nearcache import ENTRY_OVERHEAD, NearCache

_ids = itertools.count(1)


def record(data: object, expires: datetime | None = None) -> bytes:
    _, made, _ = prepare_save("k", data, "t", expires, None).build(None, now_micros(), lambda: next(_ids))
    return bytes(made)


def fresh(items: int, max_bytes: int) -> NearCache:
    """A cache whose counters are its own (they are process-wide, by namespace)."""
    return NearCache(items, max_bytes, uuid.uuid4().hex)


def filled(cache: NearCache, key: bytes, value: bytes) -> None:
    cache.end(cache.begin(key), value)


def test_nothing_is_served_or_kept_until_tracking_is_up() -> None:
    cache = fresh(10, 1 << 20)
    filled(cache, b"a", record(1))
    assert (cache.get(b"a", now_micros()), len(cache)) == (None, 0)
    cache.reopen()
    one = record(1)
    filled(cache, b"a", one)
    assert cache.get(b"a", now_micros()) == one
    assert (cache.hits.value, cache.misses.value) == (1, 1)


def test_an_invalidation_during_a_fill_keeps_its_reply_out() -> None:
    cache = fresh(10, 1 << 20)
    cache.reopen()
    fill = cache.begin(b"a")
    cache.invalidate([b"a"])  # another client wrote "a" while our GET was in flight
    cache.end(fill, record("old"))
    assert cache.get(b"a", now_micros()) is None
    fill = cache.begin(b"a")
    cache.invalidate([b"b"])  # another key: no matter
    cache.end(fill, record("new"))
    assert cache.get(b"a", now_micros()) is not None


def test_of_two_fills_of_a_key_the_one_ending_last_keeps_nothing_if_the_other_began_after() -> None:
    cache = fresh(10, 1 << 20)
    cache.reopen()
    older, newer = cache.begin(b"a"), cache.begin(b"a")
    cache.end(newer, record("v2"))  # the later GET answered first
    cache.end(older, record("v1"))  # the earlier one's late reply must not replace it
    got = cache.get(b"a", now_micros())
    assert got is not None and decode_item(got, "k").data == "v2"


def test_losing_tracking_empties_the_cache_and_fills_begun_before_keep_nothing() -> None:
    cache = fresh(10, 1 << 20)
    cache.reopen()
    filled(cache, b"a", record(1))
    fill = cache.begin(b"b")
    cache.down()
    assert (len(cache), cache.get(b"a", now_micros())) == (0, None)
    cache.reopen()
    cache.end(fill, record(2))
    assert cache.get(b"b", now_micros()) is None
    cache.invalidate(None)  # a flush
    assert len(cache) == 0


def test_an_expired_entry_is_never_served() -> None:
    cache = fresh(10, 1 << 20)
    cache.reopen()
    soon = datetime.now(UTC) + timedelta(milliseconds=50)
    filled(cache, b"a", record(1, soon))
    assert cache.get(b"a", now_micros()) is not None
    assert cache.get(b"a", now_micros() + 60_000) is None
    assert len(cache) == 0


def test_the_bounds_hold_least_recently_used_first_out() -> None:
    one = record("x" * 100)
    cache = fresh(3, 10 * (len(one) + 1 + ENTRY_OVERHEAD))
    cache.reopen()
    for key in (b"a", b"b", b"c"):
        filled(cache, key, one)
    assert cache.get(b"a", now_micros()) is not None  # "a" is now the most recent
    filled(cache, b"d", one)
    assert [cache.get(key, now_micros()) is not None for key in (b"a", b"b", b"c", b"d")] == [True, False, True, True]
    assert cache.evictions.value == 1
    small = fresh(100, 2 * (len(one) + 1 + ENTRY_OVERHEAD))
    small.reopen()
    for key in (b"a", b"b", b"c"):
        filled(small, key, one)
    assert (len(small), small.size) == (2, 2 * (len(one) + 1 + ENTRY_OVERHEAD))
    filled(small, b"big", record("y" * 10_000))  # larger than the whole bound: not kept
    assert small.get(b"big", now_micros()) is None
    filled(small, b"short", b"\x01")  # too short for a header: left to the uncached path
    assert small.get(b"short", now_micros()) is None
    small.invalidate([b"b", b"c"])
    assert (len(small), small.size, small.invalidations.value) == (0, 0, 2)
