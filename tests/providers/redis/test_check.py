"""Damage on a Redis server and what the provider and check() make of it: a shard count
or marker damaged or of another kind, index and record keys of the wrong type."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from helpers import fresh_namespace
from unistore import (
    StorageCorruptionError,
    StorageError,
    StorageQuery,
    ValidationError,
)
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import layout


@pytest.mark.redis
async def test_a_damaged_shard_count_is_a_storage_error(redis_port: int, made: list[RedisStorageProvider]) -> None:
    """DEFECT: a shard-count key that does not hold a number (damage, or another program's
    key under the same name) makes every operation raise a raw ``ValueError`` from
    ``int(before)`` in ``_check_shards``, not a StorageError naming the namespace."""
    namespace = fresh_namespace()
    with redis.Redis(port=redis_port) as admin:
        admin.set(layout.shards_key(namespace.encode()), b"abc")
    provider = RedisStorageProvider(port=redis_port, namespace=namespace)
    made.append(provider)
    with pytest.raises(StorageError, match=namespace):
        await asyncio.wait_for(provider.load("k"), 10)


@pytest.mark.redis
async def test_a_shard_whose_marker_names_another_count_refuses_writes(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    # The namespace's own marker lost (or never written by an older writer), a shard's marker
    # still says how the namespace was split: a write there is refused, not misplaced.
    namespace = fresh_namespace()
    prefix = layout.shard_prefix(namespace.encode(), 0, 1)
    with redis.Redis(port=redis_port) as admin:
        admin.set(prefix + layout.MARKER, b"3")
        provider = RedisStorageProvider(port=redis_port, namespace=namespace)
        made.append(provider)
        with pytest.raises(ValidationError, match="split over 3 shards; open it with shards=3"):
            await provider.save("k", 1, "doc")
        assert admin.get(layout.record_key(prefix, b"k")) is None
        admin.set(prefix + layout.MARKER, b"one")  # damage
        with pytest.raises(StorageCorruptionError, match=r"shard count \(b'us\{.*:0\}:shards'\) is damaged"):
            await provider.save("k", 1, "doc")
        assert admin.get(layout.record_key(prefix, b"k")) is None


@pytest.mark.redis
async def test_an_index_key_of_the_wrong_type_is_a_storage_error_not_a_crash(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    namespace = fresh_namespace()
    provider = RedisStorageProvider(port=redis_port, namespace=namespace)
    made.append(provider)
    await provider.save("k", 1, "doc", tags={"colour": "red"})
    prefix = layout.shard_prefix(namespace.encode(), 0, 1)
    from unistore import index

    red = layout.posting_key(prefix, index.TAG, index.tag_term(b"colour", b"red"))
    with redis.Redis(port=redis_port) as admin:
        admin.delete(red)
        admin.set(red, b"not a set")  # another program's key, or damage
    with pytest.raises(StorageError, match="WRONGTYPE"):
        [r async for r in provider.search(StorageQuery(tags={"colour": "red"}))]
    assert (await provider.load("k")).data == 1


@pytest.mark.redis
async def test_a_save_that_meets_a_damaged_index_key_writes_nothing_and_check_repairs_it(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    # An index key of the wrong type (someone's string under our name) failed a save halfway:
    # the record was written, its index entries not; and check() then crashed on it.
    namespace = fresh_namespace()
    provider = RedisStorageProvider(port=redis_port, namespace=namespace)
    made.append(provider)
    await provider.save("a", 1, "doc", tags={"colour": "red"}, expires_at=_soon())
    prefix = layout.shard_prefix(namespace.encode(), 0, 1)
    from unistore import index

    damaged = [
        prefix + layout.CREATED,
        prefix + layout.EXPIRES,
        layout.posting_key(prefix, index.CONTENT_TYPE, b"doc"),
        layout.posting_key(prefix, index.TAG, index.tag_term(b"colour", b"red")),
    ]
    with redis.Redis(port=redis_port) as admin:
        for key in damaged:
            kept = admin.dump(key)
            admin.delete(key)
            admin.set(key, b"not ours")
            with pytest.raises(StorageError, match=r"WRONGTYPE|holds a string"):
                await provider.save("b", 2, "doc", tags={"colour": "red"}, expires_at=_soon())
            assert admin.get(layout.record_key(prefix, b"b")) is None, key  # nothing written
            report = await provider.check()
            assert not report.ok and any("string" in problem for problem in report.problems), report.problems
            await provider.check(repair=True)
            assert (await provider.check()).ok
            assert admin.type(key) != b"string"
            admin.delete(key)
            admin.restore(key, 0, kept)
    assert (await provider.save("b", 2, "doc", tags={"colour": "red"})).data == 2


@pytest.mark.redis
async def test_a_record_key_of_another_type_is_reported_and_repaired_by_check(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    # check read record keys with MGET, which answers nil for a key of another type: a hash
    # under a record's name was passed over in silence, and no repair ever removed it.
    namespace = fresh_namespace()
    provider = RedisStorageProvider(port=redis_port, namespace=namespace)
    made.append(provider)
    await provider.save("a", 1, "doc")
    prefix = layout.shard_prefix(namespace.encode(), 0, 1)
    with redis.Redis(port=redis_port) as admin:
        admin.hset(layout.record_key(prefix, b"b"), "field", "value")
        report = await provider.check()
        assert report.records == 1 and any("a hash, not a string" in problem for problem in report.problems), (
            report.problems
        )
        assert (await provider.usage())["doc"].items == 1  # counted without it
        await provider.check(repair=True)
        assert admin.exists(layout.record_key(prefix, b"b")) == 0
    assert (await provider.check()).ok
    assert (await provider.save("b", 2, "doc")).data == 2


def _soon() -> Any:
    from datetime import datetime, timedelta, timezone

    return datetime.now(timezone.utc) + timedelta(hours=1)


@pytest.mark.redis
async def test_damaged_markers_are_reported_and_repaired_by_check(
    redis_port: int, made: list[RedisStorageProvider]
) -> None:
    namespace = fresh_namespace()
    provider = RedisStorageProvider(port=redis_port, namespace=namespace, shards=2)
    made.append(provider)
    await provider.save_many({f"k{n}": n for n in range(20)}, "doc")
    marker = layout.shards_key(namespace.encode())
    shard_marker = layout.shard_prefix(namespace.encode(), 1, 2) + layout.MARKER
    with redis.Redis(port=redis_port) as admin:
        for damage in (lambda: admin.set(marker, b"garbage"), lambda: admin.rpush(marker, b"2")):
            admin.delete(marker)
            damage()
            fresh = RedisStorageProvider(port=redis_port, namespace=namespace, shards=2)
            made.append(fresh)
            with pytest.raises(StorageCorruptionError, match="shard count"):
                await fresh.load("k1")  # data operations refuse a namespace they cannot verify
            report = await fresh.check()
            assert any("shard count" in problem for problem in report.problems), report.problems
            await fresh.check(repair=True)
            assert admin.get(marker) == b"2"
            assert (await fresh.load("k1")).data == 1
        for damage in (lambda: admin.set(shard_marker, b"garbage"), lambda: admin.rpush(shard_marker, b"2")):
            admin.delete(shard_marker)
            damage()
            report = await provider.check()
            assert any(repr(shard_marker) in problem for problem in report.problems), report.problems
            await provider.check(repair=True)
            assert admin.get(shard_marker) == b"2" and (await provider.check()).ok
        admin.set(shard_marker, b"5")  # another count: reported, not ours to overwrite
        report = await provider.check()
        assert any("says b'5', not 2" in problem for problem in report.problems), report.problems
        await provider.check(repair=True)
        assert admin.get(shard_marker) == b"5"
        admin.set(shard_marker, b"2")


@pytest.mark.redis
async def test_a_marker_damaged_while_a_provider_writes_stops_its_writes(
    redis_port: int, made: list[RedisStorageProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    from unistore.providers.redis import provider as redis_provider

    monkeypatch.setattr(redis_provider, "MARKER_EVERY", 0)  # every write records the count again
    namespace = fresh_namespace()
    provider = RedisStorageProvider(port=redis_port, namespace=namespace)
    made.append(provider)
    await provider.save("k", 1, "doc")
    with redis.Redis(port=redis_port) as admin:
        admin.set(layout.shards_key(namespace.encode()), b"garbage")
    with pytest.raises(StorageCorruptionError, match="shard count"):
        await provider.save("k", 2, "doc")
    assert (await provider.load("k")).data == 1
